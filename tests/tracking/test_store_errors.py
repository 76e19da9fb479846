"""Every bad store is one line and exit 2, fast, in every command (issue 13, items 6 and 7): a damaged mlflow.db
(truncated, header garbage, page garbage), `sqlite://relative.db`, a `sqlite:///` URI naming a folder, a store in a
read-only folder, an experiment name that cannot work. Real stores, real subprocesses (started together: they
spend their time importing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bench.errors import UserError
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.store import open_store
from tests.conftest import REPO

RUN = ["bench.run", "--variant", "sgvb_b", "--latent", "2", "--epochs", "1", "--limit-train", "200", "--no-progress"]
COMMANDS = {"run": RUN, "report": ["bench.report"], "evaluate": ["bench.evaluate", "--run-id", "0" * 32]}


def damaged(store: Path, folder: Path, kind: str) -> Path:
    """A copy of a real store with some tables, damaged as a crash, a bad disk or a stray write would."""
    data = bytearray(store.read_bytes())
    if kind == "truncated":
        data = data[:len(data) // 2]
    elif kind == "header":
        data[:96] = b"garbage!" * 12
    else:  # page garbage: a few pages overwritten in the middle of the file
        data[4096 * 3:4096 * 6] = bytes((i * 7) % 256 for i in range(4096 * 3))
    path = folder / f"{kind}.db"
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def full_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with an experiment, runs, params and metrics: enough pages to damage."""
    db = tmp_path_factory.mktemp("full") / "mlflow.db"
    client = open_store(f"sqlite:///{db}")
    for i in range(20):
        tracker = MlflowTracker.start(client, "vae-bench", f"r{i}", {f"p{j}": j for j in range(20)})
        tracker.log_metrics({f"m{j}": float(j) for j in range(20)}, step=1)
    assert db.stat().st_size > 4096 * 8
    return db


def launch(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def one_line_errors(cases: dict[str, list[str]], cwd: Path) -> dict[str, str]:
    """Run every case at once; each must exit 2 with one line on stderr, in under a minute."""
    start = time.monotonic()
    procs = {name: launch(args, cwd) for name, args in cases.items()}
    lines = {}
    for name, p in procs.items():
        _, err = p.communicate(timeout=300)
        got = err.strip().splitlines()
        assert p.returncode == 2 and len(got) == 1 and "Traceback" not in err, (name, p.returncode, err)
        lines[name] = got[0]
    assert time.monotonic() - start < 120  # not MLflow's minutes of retries (load on a shared machine included)
    return lines


def test_a_damaged_database_is_one_line_in_run_report_and_evaluate(full_store: Path, tmp_path: Path) -> None:
    cases = {}
    for kind in ("truncated", "header", "pages"):
        db = damaged(full_store, tmp_path, kind)
        for command, args in COMMANDS.items():
            cases[f"{kind} {command}"] = [*args, "--tracking-uri", f"sqlite:///{db}"]
    lines = one_line_errors(cases, tmp_path)
    for name, line in lines.items():
        kind = name.split()[0]
        assert f"{kind}.db" in line and ("damaged" in line or "cannot be read" in line), (name, line)
        assert "restore it from a copy" in line


def test_malformed_sqlite_uris_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "folder.db").mkdir()
    cases = {
        "two slashes": [*RUN, "--tracking-uri", "sqlite://relative.db"],
        "folder": [*RUN, "--tracking-uri", f"sqlite:///{tmp_path / 'folder.db'}"],
        "no path": [*COMMANDS["report"], "--tracking-uri", "sqlite:///"],
    }
    lines = one_line_errors(cases, tmp_path)
    assert "three slashes" in lines["two slashes"] and not (tmp_path / "relative.db").exists()
    assert f"{tmp_path / 'folder.db'} is a folder" in lines["folder"]
    assert f"{tmp_path} is a folder" in lines["no path"]


@pytest.fixture
def read_only_folder(tmp_path: Path, migrated_store: Path) -> Iterator[Path]:
    """A real read-only file system (root ignores permission bits, so chmod would prove nothing), holding a store."""
    staged, mount = tmp_path / "staged", tmp_path / "ro"
    staged.mkdir()
    mount.mkdir()
    shutil.copy(migrated_store, staged / "mlflow.db")
    if subprocess.run(["mount", "--bind", str(staged), str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only folder here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)  # MLflow keeps its engine open


def test_a_store_in_a_read_only_folder_is_one_line_for_writers_and_readable_by_reports(read_only_folder: Path,
                                                                                      tmp_path: Path) -> None:
    uri_new = f"sqlite:///{read_only_folder / 'new.db'}"
    uri_old = f"sqlite:///{read_only_folder / 'mlflow.db'}"
    lines = one_line_errors({"new": [*RUN, "--tracking-uri", uri_new],
                             "existing": [*RUN, "--tracking-uri", uri_old],
                             "evaluate": [*COMMANDS["evaluate"], "--tracking-uri", uri_old]}, tmp_path)
    for line in lines.values():
        assert f"folder {read_only_folder} of the tracking database is not writable" in line
    assert open_store(uri_old, existing=True, read_only=True).search_experiments()  # a report only reads


def test_an_experiment_name_mlflow_refuses_is_one_line_before_any_run(tracking_uri: str) -> None:
    client = open_store(tracking_uri)
    with pytest.raises(UserError, match="cannot be used .*exceeds the maximum length of 500"):
        MlflowTracker.start(client, "x" * 501, "r", {})
    with pytest.raises(UserError, match="must not be empty"):
        MlflowTracker.start(client, "  ", "r", {})
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_a_long_experiment_name_works_to_its_artifacts(tracking_uri: str, tmp_path: Path) -> None:
    """256-500 characters used to fail mid-run with "File name too long" (its artifact folder): now the folder name
    is cut, and two long names differing only at the end keep apart."""
    client = open_store(tracking_uri)
    names = ["e" * 300 + "1", "e" * 300 + "2"]
    for name in names:
        tracker = MlflowTracker.start(client, name, "r", {})
        tracker.log_artifact(Path(__file__), "code")
        tracker.save_checkpoint({"epoch": 1})
        assert tracker.load_checkpoint() == {"epoch": 1}
    locations = {client.get_experiment_by_name(n).artifact_location for n in names}
    assert len(locations) == 2 and all(len(loc) < 100 for loc in locations)
    assert len(MlflowClient(tracking_uri).search_runs([client.get_experiment_by_name(names[0]).experiment_id])) == 1


KILLED_WRITER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA cache_size=5")  # a small page cache: the write spills into the database file before commit
con.execute("BEGIN IMMEDIATE")
con.execute("UPDATE filler SET x = x + 1")
print("IN", flush=True)
time.sleep(600)
"""


def test_a_writer_killed_mid_write_leaves_a_store_that_opens_as_it_was(tmp_path: Path, migrated_store: Path) -> None:
    """SIGKILL inside a write leaves a hot rollback journal: SQLite refuses a read-only open then (what the precheck
    used, so a tune worker joining after a killed one was refused: "attempt to write a readonly database"). The
    check rolls the journal back with a writable open, the store opens with its last committed state."""
    import signal
    import sqlite3

    from bench.tracking.precheck import check_store

    db = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, db)
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE filler (x INTEGER)")
        con.executemany("INSERT INTO filler VALUES (?)", [(i,) for i in range(100_000)])
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "IN"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert (tmp_path / "mlflow.db-journal").stat().st_size > 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # the situation, as SQLite states it
        sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True).execute("PRAGMA quick_check").fetchone()
    assert check_store(f"sqlite:///{db}") == db
    assert not (tmp_path / "mlflow.db-journal").exists()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT SUM(x) FROM filler").fetchone()[0] == sum(range(100_000))  # the committed state
    assert open_store(f"sqlite:///{db}").search_experiments()  # MLflow reads it
