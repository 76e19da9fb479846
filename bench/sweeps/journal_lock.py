"""The journal storage's lock, with an owner.

Optuna's JournalFileSymlinkLock makes ``<journal>.lock``, a symlink to the journal, for each write, and a waiter
breaks it when the journal has not changed for its grace period (30 s): the holder is taken for dead. A holder that
was only paused there (SIGSTOP, a suspended laptop) wakes up and releases a lock that is no longer its own. Optuna
then raises "did not possess lock" (a traceback in the middle of a run), or it removes the lock that another
worker holds now. Here the lock remembers which link it made, by the link's inode and ctime. On release it removes
only that link. If its lock was broken, it says so in one line and goes on: its write is one append of whole lines,
and the journal reads those whatever their order.

The link itself is Optuna's (same name, same target), so Optuna's own processes on the same journal
(optuna-dashboard, a user's script) still wait for it and break it the same way.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid

from optuna.storages.journal import JournalFileSymlinkLock

from bench.errors import UserError

GRACE_SECONDS = 30.0  # Optuna's default: how long an unchanged journal with a lock means a dead holder
SUFFIX = ".lock"  # Optuna's name for the link, so that both kinds of process see one lock


class OwnedSymlinkLock(JournalFileSymlinkLock):  # a subclass only to be the type JournalFileBackend asks for
    """A lock on ``journal``; acquire / release as Optuna's JournalFileBackend calls them, one write at a time."""

    def __init__(self, journal: str, grace_seconds: float = GRACE_SECONDS) -> None:
        # Not super().__init__: the state is this class's own (and Optuna's warns at a grace under 3 s, as tests use).
        self.journal, self.link = journal, journal + SUFFIX
        self.grace_seconds = grace_seconds
        self.owned: tuple[int, int] | None = None  # (inode, ctime ns) of the link this process made
        self.broken = 0  # how many times this process's lock was broken under it

    def acquire(self) -> bool:
        pause, seen, since = 0.001, None, time.monotonic()
        while True:
            try:
                os.symlink(self.journal, self.link)
            except FileExistsError:
                try:
                    stamp = (*self._identity(), os.stat(self.link).st_mtime_ns)  # whose link; the journal's last write
                except FileNotFoundError:
                    if not os.path.exists(self.journal):  # else the link was released meanwhile: try again at once
                        raise UserError(f"journal storage {self.journal} is gone (deleted or moved in use)") from None
                    continue
                if stamp != seen:
                    seen, since = stamp, time.monotonic()
                elif time.monotonic() - since > self.grace_seconds:
                    with contextlib.suppress(FileNotFoundError):
                        if self._identity() == stamp[:2]:  # still that holder's: not one a faster waiter just made
                            self._remove()  # stale: its holder is paused or dead
                    seen, pause = None, 0.001
                    continue
                time.sleep(pause)
                pause = min(2 * pause, 0.1)
                continue
            self.owned = self._identity()
            return True

    def _identity(self) -> tuple[int, int]:
        """Which link ``<journal>.lock`` is: its inode and ctime (an inode number alone is reused)."""
        st = os.lstat(self.link)
        return st.st_ino, st.st_ctime_ns

    def release(self) -> None:
        owned, self.owned = self.owned, None
        try:
            current = self._identity()
        except FileNotFoundError:
            current = None
        if owned is None or current != owned:
            self.broken += 1
            print(f"vae-bench: the lock on {self.journal} was taken from this process while it held it (paused for "
                  f"over {self.grace_seconds:g} s?); its write went through, and the other holder's lock is kept",
                  file=sys.stderr)
            return
        self._remove()

    def _remove(self) -> None:
        aside = f"{self.link}.{uuid.uuid4().hex}.rename"  # rename first: of two removers, one wins
        try:
            os.rename(self.link, aside)
        except FileNotFoundError:
            return
        os.unlink(aside)
