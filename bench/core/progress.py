"""A long step a command is in: one line when it starts, its time when it ends, and on a terminal the seconds
ticking in between, so that no step leaves the user looking at a silent terminal."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

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


class Count:
    """``label k/N, ETA S s`` on one redrawn stderr line (a terminal only, or ``progress``): the ETA is the mean
    time per finished item so far times the items left, the simplest estimate that needs no model of the items."""

    def __init__(self, label: str, total: int, progress: bool, stream: TextIO | None = None) -> None:
        self.label, self.total, self.progress = label, total, progress
        self.stream = stream or sys.stderr
        self.done = 0
        self.t0 = time.monotonic()

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        if self.done == 0:
            return f"{self.label} 0/{self.total}"
        eta = elapsed / self.done * (self.total - self.done)
        return f"{self.label} {self.done}/{self.total}, {elapsed:.0f} s, ETA {eta:.0f} s"

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.progress:
            self.stream.write(f"\r\033[K{self.line()}")
            self.stream.flush()

    def close(self) -> None:
        if self.progress:
            self.stream.write("\r\033[K")
            self.stream.flush()
