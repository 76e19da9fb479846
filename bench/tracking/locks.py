"""The store's file locks, which a stopped process cannot hold forever (issue 17).

Every lock of a store (schema creation, experiment creation, dataset rows, an Optuna storage's creation, a grid's
queue) is a short critical section between processes on one machine. A holder that is stopped inside one (SIGSTOP,
a suspended laptop, a debugger) used to block every other process of the store for as long as it stayed stopped.
Now a lock is waited for at most ``timeout()`` seconds; whoever takes it writes a holder record beside the lock file
(``<lock>.holder``: host, pid, since when), so a process that times out says in one line who holds it, and exits 2
(bench.errors.UserError). Commands with ``--wait`` call ``set_waiting(True)``: they wait however long it takes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from bench.errors import UserError

TIMEOUT_ENV = "VAE_BENCH_LOCK_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds: far above any critical section here (a schema migration on a loaded machine)
_state = {"forever": False}


def timeout() -> float:
    """Seconds to wait for a lock: $VAE_BENCH_LOCK_TIMEOUT, else DEFAULT_TIMEOUT; -1 (forever) with --wait."""
    if _state["forever"]:
        return -1
    text = os.environ.get(TIMEOUT_ENV)
    try:
        return float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise UserError(f"${TIMEOUT_ENV}={text!r} is not a number of seconds") from None


def set_waiting(forever: bool) -> None:
    """``--wait`` (True): this command waits for the store's locks however long they are held. bench.cli's
    main_guard resets it (False) at every command's start, for commands run in-process one after another."""
    _state["forever"] = forever


def describe_holder(record: Path) -> str:
    """"pid 123 on host h since 2026-12-03 05:40:01 UTC (95 s ago)", from the holder record, or why it is unknown."""
    try:
        holder = json.loads(record.read_text())
        since = float(holder["since"])
        return (f"pid {holder['pid']} on host {holder['host']} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(since))} ({time.time() - since:.0f} s ago)")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that left no holder record (an older vae-bench, or one that is just taking it)"


class StoreLock:
    """A re-entrant inter-process lock on ``path`` (a FileLock), taken with a timeout and a holder record."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.record = Path(f"{self.path}.holder")
        self._lock = FileLock(str(self.path))

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    def acquire(self) -> StoreLock:
        first = not self._lock.is_locked
        try:
            self._lock.acquire(timeout=timeout())
        except Timeout:
            raise UserError(f"the store's lock {self.path} is held by {describe_holder(self.record)}; if that "
                            "process is stopped (Ctrl-Z, a debugger), resume or end it, then retry; or add --wait "
                            f"where the command has it, or raise ${TIMEOUT_ENV} (now {timeout():g} s)") from None
        if first:  # only who holds the file lock writes here: no two writers
            with contextlib.suppress(OSError):
                self.record.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                   "since": time.time()}))
        return self

    def release(self) -> None:
        if self._lock.lock_counter == 1:  # the outermost release: the record goes before the lock does
            with contextlib.suppress(OSError):
                self.record.unlink()
        self._lock.release()

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
