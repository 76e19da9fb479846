"""Which device a run uses, and what each device can do.

torch is imported only where it must answer: bench.run creates its run before torch loads (issue 17), so a device
that can be known without torch (cpu, or auto on a machine with no GPU driver) is known without it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import UserError

if TYPE_CHECKING:
    import torch

# What a CUDA (or ROCm, which torch also calls cuda) device needs on Linux: its driver, loaded (/proc/driver/nvidia:
# the device nodes may be made on first use) or its device nodes.
GPU_NODES = ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd")


def device_without_torch(name: str) -> str | None:
    """The device ``name`` resolves to, where that is certain without importing torch, else None: cpu; auto on
    Linux with no GPU driver loaded and none of its device nodes (torch.cuda.is_available() needs them)."""
    if name == "cpu":
        return "cpu"
    if name == "auto" and sys.platform.startswith("linux") and not any(Path(n).exists() for n in GPU_NODES):
        return "cpu"
    return None


def resolve_device(name: str) -> str:
    """auto -> cuda, else mps, else cpu; an explicit device that is not there is a user error."""
    known = device_without_torch(name)
    if known is not None:
        return known
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if (name.startswith("cuda") and cuda) or (name == "mps" and mps):
        return name
    if name.startswith("cuda") or name == "mps":
        raise UserError(f"device {name} is not available here; use auto or cpu")
    raise UserError(f"unknown device {name!r}; choose from auto, cpu, cuda, mps")


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """The dtype for sums that must not lose digits (metrics over 10,000 images, log-mean-exps, gradient
    moments): float64, except on mps, which has none; float32 there."""
    import torch

    return torch.float32 if device.type == "mps" else torch.float64
