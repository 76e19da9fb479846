"""A stopped holder of a store's lock blocks nobody forever (issue 17): a real subprocess takes the store's lock,
writes inside it and is stopped there (SIGSTOP); another process gets the one-line error naming the holder (host,
pid, since when) within the timeout; after SIGCONT the holder finishes and the lock is free again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.errors import UserError
from bench.tracking import locks
from bench.tracking.store import lock_for, open_store
from tests.conftest import CODE

HOLDER = """
    import sys, time
    from bench.tracking.store import lock_for, open_store
    uri = sys.argv[1]
    client = open_store(uri)
    with lock_for(uri):
        client.create_experiment("written under the lock")
        print("holding", flush=True)
        time.sleep(1.5)  # stopped here by the test
    print("released", flush=True)
"""


def test_a_stopped_holder_is_named_in_one_line_within_the_timeout_and_frees_the_lock_when_resumed(
        tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), tracking_uri], text=True,
                              stdout=subprocess.PIPE, env={**os.environ, **CODE})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        os.kill(holder.pid, signal.SIGSTOP)
        monkeypatch.setenv(locks.TIMEOUT_ENV, "1")
        start = time.monotonic()
        with pytest.raises(UserError) as error, lock_for(tracking_uri):
            pass
        waited = time.monotonic() - start
        assert 1 <= waited < 10, waited  # the timeout, not forever
        line = str(error.value)
        assert "\n" not in line and f"pid {holder.pid} on host {socket.gethostname()} since " in line, line
        assert "s ago)" in line and "resume or end it" in line
        time.sleep(2)  # stopped: it stays held, however long
        with pytest.raises(UserError):
            lock_for(tracking_uri).acquire()
        os.kill(holder.pid, signal.SIGCONT)
        assert holder.stdout.readline() == "released\n" and holder.wait(timeout=60) == 0
        monkeypatch.setenv(locks.TIMEOUT_ENV, "30")
        with lock_for(tracking_uri) as lock:  # free again, and the record is this process's now
            assert lock.record.read_text().count(f'"pid": {os.getpid()}') == 1
        assert not lock.record.exists()
        assert open_store(tracking_uri).get_experiment_by_name("written under the lock") is not None
    finally:
        os.kill(holder.pid, signal.SIGCONT) if holder.poll() is None else None
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_and_wait_means_no_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = locks.StoreLock(tmp_path / "x.lock")
    with lock, lock:  # nested: one holder record, removed by the outer release only
        assert lock.record.exists()
    assert not lock.record.exists() and not lock.is_locked
    monkeypatch.setenv(locks.TIMEOUT_ENV, "7")
    assert locks.timeout() == 7
    locks.set_waiting(True)
    try:
        assert locks.timeout() == -1
    finally:
        locks.set_waiting(False)
    monkeypatch.setenv(locks.TIMEOUT_ENV, "soon")
    with pytest.raises(UserError, match="not a number of seconds"):
        locks.timeout()


SQLITE_WRITER = """
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("BEGIN IMMEDIATE")  # SQLite's write lock, as MLflow holds it inside a write
    con.execute("UPDATE experiments SET name = name")
    print("writing", flush=True)
    time.sleep(600)  # stopped here by the test
"""


def test_a_writer_stopped_inside_a_sqlite_write_is_named_in_one_line(tracking_uri: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Not our lock but SQLite's: a process stopped (SIGSTOP) inside a write transaction. A writer that comes
    after it gives up after SQLite's busy timeout with one line naming the stopped process (Linux /proc/locks),
    not MLflow's message about an autoflush; a reader (the report) is not blocked at all."""
    from bench import report, run
    from bench.cli import main_guard

    db = tracking_uri.removeprefix("sqlite:///")
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SQLITE_WRITER), db], text=True,
                              stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline() == "writing\n"
        os.kill(writer.pid, signal.SIGSTOP)
        started = time.monotonic()
        status = main_guard(run.main, run.PROG)(["--latent", "2", "--epochs", "1", "--limit-train", "200",
                                                 "--device", "cpu", "--no-progress", "--tracking-uri", tracking_uri])
        waited = time.monotonic() - started
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and f"is locked by process {writer.pid} on this machine" in line, line
        assert waited < 300  # SQLite's busy timeout and MLflow's retries, not forever
        out = Path(db).parent / "report"
        assert main_guard(report.main, report.PROG)(["--tracking-uri", tracking_uri, "--out", str(out)]) in (0, 2)
        assert "is locked" not in capsys.readouterr().err  # readers do not wait for the writer
    finally:
        os.kill(writer.pid, signal.SIGCONT)
        writer.kill()
        writer.wait()
