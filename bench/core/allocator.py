"""Keep freed memory in the process, so that a training step's big tensors do not page-fault on every step.

A step allocates tensors of 0.2-1.3 MB (the activations, the weight gradients) and frees them. glibc's malloc
serves blocks over its mmap threshold with fresh mmap()s and gives the top of its heap back to the kernel once
more than its trim threshold lies free there; either way the next step's tensors land on new pages, and the kernel
zeroes each 4 KB page on its first touch. Raising both thresholds keeps the freed blocks in the heap for reuse, at
the price of holding up to TRIM_BYTES of freed memory that the kernel could otherwise reclaim. Measured on a
2-core Intel Xeon (benchmarks/README.md, "Page faults"): the seed's training step went from 130-360 minor faults
a step to 0.1, but its time moved less than the machine's noise (about 5%); AIS on 256 images in a fresh process
went from 2.4-2.8 M faults to 34-66 k and took 21-24% less time. How much glibc's defaults cost depends on what
the process freed before (glibc raises its thresholds itself after freeing a big mmap'd block), so the figure is
that large only where AIS meets the big sizes first.

Process-wide and glibc-only: ``keep_freed_memory`` does nothing elsewhere (musl, macOS, Windows), where the
allocators behave differently; nor when the user has set glibc's own variables (MALLOC_MMAP_THRESHOLD_, ...);
nor with VAE_BENCH_MALLOC=system (benchmarks/speed.py --system-malloc sets it, to time the harness without this).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_BYTES = 32 << 20  # glibc's own ceiling for its dynamic mmap threshold on 64-bit
TRIM_BYTES = 128 << 20
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
OPT_OUT = "VAE_BENCH_MALLOC"  # =system: leave malloc as it is


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True when both were set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(v in os.environ for v in USER_VARIABLES) or os.environ.get(OPT_OUT) == "system":  # the user's choice
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
