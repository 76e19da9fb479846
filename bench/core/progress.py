"""A long step a command is in: one line when it starts, its time when it ends, and on a terminal the seconds
ticking in between, so that no step leaves the user looking at a silent terminal."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

TICK = 1.0  # seconds between redraws of the elapsed time


@contextmanager
def stage(label: str, progress: bool, log: Callable[[str], None] = print) -> Iterator[None]:
    """``label ...`` now; ``label: N s`` redrawn on stderr every TICK while ``progress``; ``label: done in N s``."""
    log(f"{label} ...")
    t0 = time.monotonic()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(TICK):
            sys.stderr.write(f"\r{label}: {time.monotonic() - t0:.0f} s")
            sys.stderr.flush()

    ticker = threading.Thread(target=tick, name="stage", daemon=True) if progress else None
    if ticker is not None:
        ticker.start()
    try:
        yield
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
    log(f"{label}: done in {time.monotonic() - t0:.1f} s")


def note(text: str) -> None:
    """What is happening during start-up, on a terminal only: one line, overwritten by the next (``""`` clears
    it), so that the seconds of importing torch and MLflow are not silent and leave nothing behind."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{text}")
        sys.stderr.flush()
