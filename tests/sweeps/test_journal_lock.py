"""bench.sweeps.journal_lock on real files: a holder whose lock was broken while it was paused neither raises nor
removes the new holder's lock, every write reaches the journal, and Optuna's own lock still waits for ours."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from bench.errors import UserError
from bench.sweeps.journal_lock import OwnedSymlinkLock
from bench.sweeps.storage import open_storage

GRACE = 0.3  # seconds; the product's is 30


def test_a_broken_holder_releases_quietly_and_keeps_the_new_holders_lock(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "grid.journal"
    journal.touch()
    paused, other = OwnedSymlinkLock(str(journal), GRACE), OwnedSymlinkLock(str(journal), GRACE)
    assert paused.acquire()
    t0 = time.monotonic()
    assert other.acquire()  # waits out the grace period, then breaks the "paused" holder's lock
    assert time.monotonic() - t0 >= GRACE
    link = Path(other.link)
    made_by_other = link.lstat()
    paused.release()  # wakes up: no "did not possess lock", and the other's link stays
    assert paused.broken == 1
    assert "was taken from this process" in capsys.readouterr().err
    assert link.is_symlink() and link.lstat().st_ino == made_by_other.st_ino
    other.release()
    assert not link.is_symlink() and other.broken == 0
    assert not list(tmp_path.glob("*.rename"))  # nothing left aside


def test_every_write_reaches_the_journal_when_a_paused_writer_lost_its_lock(tmp_path: Path) -> None:
    journal = str(tmp_path / "grid.journal")
    paused = JournalFileBackend(journal, lock_obj=OwnedSymlinkLock(journal, GRACE))
    other = JournalFileBackend(journal, lock_obj=OwnedSymlinkLock(journal, GRACE))
    lock = paused._lock
    lock.acquire()  # stopped inside its write, holding the lock
    other.append_logs([{"op_code": 0, "worker_id": "other"}])  # breaks the stale lock after GRACE
    with open(journal, "ab") as f:  # the paused writer wakes and finishes its write as append_logs would
        f.write(b'{"op_code":0,"worker_id":"paused"}\n')
    lock.release()
    paused.append_logs([{"op_code": 0, "worker_id": "paused again"}])  # and goes on writing
    reader = JournalFileBackend(journal)
    assert [log["worker_id"] for log in reader.read_logs(0)] == ["other", "paused", "paused again"]


def test_optunas_own_lock_waits_for_ours(tmp_path: Path) -> None:
    """optuna-dashboard or a user's script on the same journal: the same link, so one lock for both."""
    journal = tmp_path / "grid.journal"
    journal.touch()
    ours, theirs = OwnedSymlinkLock(str(journal)), JournalFileSymlinkLock(str(journal))
    ours.acquire()
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (theirs.acquire(), got.set()))
    waiter.start()
    assert not got.wait(0.3)  # blocked while ours is held
    ours.release()
    assert got.wait(5)
    waiter.join()
    theirs.release()
    assert ours.broken == 0 and not Path(ours.link).is_symlink()


def test_journal_storages_are_opened_with_the_owned_lock(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "q.journal"))
    assert isinstance(storage._backend._lock, OwnedSymlinkLock)  # type: ignore[attr-defined]


def test_a_journal_removed_while_its_lock_is_held_is_one_clear_error(tmp_path: Path) -> None:
    """Not a spin: the link dangles, and a waiter says the journal is gone."""
    journal = tmp_path / "grid.journal"
    journal.touch()
    holder, waiter = OwnedSymlinkLock(str(journal)), OwnedSymlinkLock(str(journal))
    holder.acquire()
    journal.unlink()
    with pytest.raises(UserError, match="is gone"):
        waiter.acquire()
