"""Ctrl-C (SIGINT) and SIGTERM: what they do depends on how far a command has got.

- ``STARTING`` (from the first line of a command module, before torch and MLflow are imported, until a run is
  made or claimed): there is nothing to record, so the signal prints one line and the process exits 130 at
  once, in the middle of an import if need be: no run is left behind and no traceback is printed.
- ``OWNING`` (a run exists, or a resume or an evaluation holds one): the signal raises KeyboardInterrupt, which
  the command turns into the run's end (KILLED, with the signal as the reason). Inside ``critical()`` the
  signal is held until the block ends, so that a run is never created without its params and a checkpoint is
  never written without its epoch's metrics.
- ``ENDING`` (a first signal is being handled, or the command has returned and the interpreter is exiting):
  further signals are held and dropped, so the run's end is recorded and atexit callbacks run undisturbed
  (no "Exception ignored in atexit callback"). Only when the ending takes longer than PATIENCE seconds (a store
  that hangs) does a further signal exit at once.

A KeyboardInterrupt can be swallowed on its way up: the interpreter ignores (prints) an exception raised in a
``__del__`` or weakref callback that ran when the signal landed, and a library's bare ``except:`` drops it. The
signal would then be lost, since the phase is already ENDING, and the run would train on. So the signal acted on
is remembered, and ``check()``, where the work carries on (each training batch, each stage), raises it again.
Every command ends once it has caught one, so nothing calls ``check()`` after a signal was handled.

This module imports nothing heavy: commands install it before importing torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

STARTING, OWNING, ENDING = "starting", "owning", "ending"
SIGNALS = (signal.SIGINT, signal.SIGTERM)

PATIENCE = 5.0  # seconds of ending after which a repeated signal exits at once
_state: dict = {"depth": 0, "pending": None, "phase": OWNING, "message": "interrupted", "since": 0.0,
                "raised": None}


def _exit_now(signum: int, line: str) -> None:
    with contextlib.suppress(Exception):  # a closed or broken stdout must not stop the exit
        sys.stdout.flush()
    os.write(2, f"\n{line} ({signal.Signals(signum).name})\n".encode())
    os._exit(128 + signum)


def _act(signum: int) -> None:
    """What a signal does now that it may act (outside any critical block)."""
    phase = _state["phase"]
    if phase == STARTING:
        _exit_now(signum, _state["message"])
    if phase == ENDING:
        if time.monotonic() - _state["since"] > PATIENCE:
            _exit_now(signum, "interrupted again while stopping: exiting at once")
        return
    set_phase(ENDING)  # the command is now recording the run's end: more Ctrl-C must not cut it short
    _state["raised"] = signum
    raise KeyboardInterrupt(signal.Signals(signum).name)


def check() -> None:
    """Raise again the KeyboardInterrupt of a signal that was acted on and then swallowed (see the module's
    docstring): a no-op unless that happened. Main thread only."""
    if _state["raised"] is not None and _main_thread():
        raise KeyboardInterrupt(signal.Signals(_state["raised"]).name)


def _handler(signum: int, frame: object) -> None:
    if _state["depth"] > 0 and _state["phase"] != ENDING:
        _state["pending"] = signum
        return
    _act(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install(message: str) -> None:
    """Handle SIGINT and SIGTERM from now on, in the STARTING phase: a signal prints ``message`` and exits."""
    if not _main_thread():
        return
    _state.update(phase=STARTING, message=message, pending=None, raised=None)
    for s in SIGNALS:
        signal.signal(s, _handler)


def set_phase(phase: str) -> None:
    """Move to ``phase`` (OWNING once a run exists or is held; ENDING once the command is done)."""
    if phase == ENDING and _state["phase"] != ENDING:
        _state["since"] = time.monotonic()
    _state["phase"] = phase


def phase() -> str:
    return _state["phase"]


def ending_for_exit() -> None:
    """The command has returned: hold signals while the interpreter exits (atexit callbacks, thread joins)."""
    if not _main_thread():
        return
    set_phase(ENDING)
    for s in SIGNALS:
        signal.signal(s, _handler)


@contextmanager
def graceful_interrupts() -> Iterator[None]:
    """Install the handlers for SIGINT and SIGTERM (main thread only) for the block's duration, in the OWNING
    phase: a signal raises KeyboardInterrupt (held inside critical())."""
    if not _main_thread():
        yield
        return
    old = {s: signal.signal(s, _handler) for s in SIGNALS}
    before = _state["phase"]
    _state["phase"] = OWNING
    try:
        check()  # a signal swallowed before the block: the block's work must not start
        yield
    finally:
        if _state["phase"] != ENDING:  # once a signal has stopped the block, the command is ending
            _state["phase"] = before
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def critical() -> Iterator[None]:
    """Hold signals until the block ends; then act on the last one held."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0:
            pending, _state["pending"] = _state["pending"], None
            if pending is not None:
                _act(pending)
