"""Workers that are paused, or that cannot be checked (another PID namespace), on real storages and a real MLflow
store: a live worker is not taken for dead when it can be checked; one that is taken for dead (it could not be
checked and fell silent) ends its run cleanly when it wakes up, and its cell is not FINISHED twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from bench import grid
from bench.core.processes import ME
from bench.sweeps import storage as stg
from bench.sweeps import workers
from bench.tracking.names import FAILURE_TAG, ROLE_TAG
from tests.conftest import REPO

SLOW_CELL = ["--variants", "sgvb_b", "--latents", "2", "--epochs", "2", "--limit-train", "20000", "--batch-size", "32",
             "--heartbeat", "1", "--no-progress"]


def training_runs(client: MlflowClient) -> list:
    """The grid's training runs (not the sweep's parent run, which bench.grid makes too)."""
    runs = client.search_runs([client.get_experiment_by_name("vae-bench").experiment_id])
    return [r for r in runs if ROLE_TAG not in r.data.tags]


def _only_study(journal: Path) -> optuna.Study:
    storage = stg.open_storage(str(journal))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def _wait_for_a_running_run(journal: Path, proc: subprocess.Popen, timeout: float = 120) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        if journal.exists() and journal.stat().st_size:
            with_runs = [t for t in _only_study(journal).get_trials() if t.state == TrialState.RUNNING
                         and workers.RUN_ATTR in t.user_attrs]
            if with_runs:
                return with_runs[0]
        time.sleep(0.1)
    raise AssertionError("the worker never started its run")


def _group(pgid: int) -> list[int]:
    """The processes of a process group (the worker, and unshare around it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return pids


def _holds_a_store_lock(pids: list[int], journal: Path) -> bool:
    """Whether any of the processes holds a file lock (/proc/locks: SQLite's locks on mlflow.db, our lock file), is
    inside an SQLite write (its rollback journal open), or holds the journal storage's lock (Optuna's symlink beside
    the journal, which /proc/locks does not show; while the worker is stopped nobody else writes, so if it exists,
    the worker made it): a process stopped there would block every other process of the store, and after Optuna's
    30 s grace period the other worker breaks the journal's lock, and the stopped one's release then raises."""
    if os.path.lexists(f"{journal}.lock"):
        return True
    locks = Path("/proc/locks").read_text().split("\n")
    rows = [line.split() for line in locks]
    holders = {int(f[4]) for f in rows if len(f) > 4 and f[1] != "->" and f[4].isdigit()}  # "->": a waiter
    if holders & set(pids):
        return True
    for pid in pids:
        try:
            if any(os.readlink(fd).endswith("-journal") for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return True
        except OSError:
            continue  # gone meanwhile
    return False


def _pause_between_writes(proc: subprocess.Popen, group: bool, journal: Path) -> None:
    """SIGSTOP the worker at a moment it holds no store lock. A worker stopped inside a write blocks the store for
    everyone (SQLite allows one writer), which is not what these tests are about; they are about its cell."""
    send = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    for _ in range(200):
        send(signal.SIGSTOP)
        time.sleep(0.05)  # let the stop land on every process of the group
        if not _holds_a_store_lock(_group(proc.pid) if group else [proc.pid], journal):
            return
        send(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker held a store lock at every one of 200 tries")


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare and root")
def test_a_paused_worker_in_another_pid_namespace_loses_its_cell_and_ends_cleanly(tmp_path: Path,
                                                                                 tracking_uri: str) -> None:
    """As in a container that shares the host name but not the PID namespace: the other worker cannot check the
    paused one's process, so after its silence (2 x --heartbeat) it fails the trial, ends the run KILLED and runs
    the cell itself. Woken up, the paused worker stops at its next epoch: no traceback, no second FINISHED run."""
    journal = tmp_path / "grid.journal"
    args = [*SLOW_CELL, "--storage", str(journal), "--tracking-uri", tracking_uri]
    paused = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "bench.grid",
                               *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        first = _wait_for_a_running_run(journal, paused)
        _pause_between_writes(paused, group=True, journal=journal)
        assert first.user_attrs[workers.WORKER_ATTR] != str(ME)
        time.sleep(3.5)  # silent for longer than 2 x --heartbeat + 1 s
        assert grid.main(args) == 0  # takes the cell over and runs it
    finally:
        os.killpg(paused.pid, signal.SIGCONT)
    out = paused.communicate(timeout=300)[0]
    assert paused.returncode == 0, out
    assert "Traceback" not in out and "Cannot tell" not in out
    assert "its trial was taken from this worker" in out

    client = MlflowClient(tracking_uri)
    runs = training_runs(client)
    by_id = {r.info.run_id: r for r in runs}
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]  # the cell FINISHED once
    lost = by_id[first.user_attrs[workers.RUN_ATTR]]
    assert lost.info.status == "KILLED" and "died mid-trial" in lost.data.tags[FAILURE_TAG]
    trials = _only_study(journal).get_trials()
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "FAIL"]


def test_a_paused_worker_that_can_be_checked_keeps_its_cell(tmp_path: Path, tracking_uri: str) -> None:
    """Same machine, same PID namespace: the paused worker's process is there, so it is not taken for dead
    however long its silence; the other call finds the cell busy and leaves it."""
    journal = tmp_path / "grid.journal"
    args = [*SLOW_CELL, "--storage", str(journal), "--tracking-uri", tracking_uri]
    paused = subprocess.Popen([sys.executable, "-m", "bench.grid", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait_for_a_running_run(journal, paused)
        _pause_between_writes(paused, group=False, journal=journal)
        time.sleep(3.5)
        assert grid.main(args) == 0
    finally:
        paused.send_signal(signal.SIGCONT)
    out = paused.communicate(timeout=300)[0]
    assert paused.returncode == 0, out
    client = MlflowClient(tracking_uri)
    runs = training_runs(client)
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert [t.state for t in _only_study(journal).get_trials()] == [TrialState.COMPLETE]
