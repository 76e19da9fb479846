"""Ctrl-C and SIGTERM as KeyboardInterrupt, deferred while a checkpoint is being written.

A signal that arrives inside ``critical()`` is held until the block ends, so an interrupted run never
leaves a half-written checkpoint or an epoch whose metrics and checkpoint disagree.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_state = {"depth": 0, "pending": None}


def _handler(signum: int, frame: object) -> None:
    if _state["depth"] > 0:
        _state["pending"] = signum
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def graceful_interrupts() -> Iterator[None]:
    """Install the handlers for SIGINT and SIGTERM (main thread only) for the block's duration."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def critical() -> Iterator[None]:
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending, _state["pending"] = _state["pending"], None
        if pending is not None and _state["depth"] == 0:
            raise KeyboardInterrupt(signal.Signals(pending).name)
