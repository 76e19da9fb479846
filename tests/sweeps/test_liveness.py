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
from bench.tracking.names import FAILURE_TAG
from tests.conftest import REPO

SLOW_CELL = ["--variants", "sgvb_b", "--latents", "2", "--epochs", "4", "--limit-train", "20000", "--batch-size", "32",
             "--heartbeat", "1", "--no-progress"]


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
        os.killpg(paused.pid, signal.SIGSTOP)
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
    runs = client.search_runs([client.get_experiment_by_name("vae-bench").experiment_id])
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
        paused.send_signal(signal.SIGSTOP)
        time.sleep(3.5)
        assert grid.main(args) == 0
    finally:
        paused.send_signal(signal.SIGCONT)
    out = paused.communicate(timeout=300)[0]
    assert paused.returncode == 0, out
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("vae-bench").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert [t.state for t in _only_study(journal).get_trials()] == [TrialState.COMPLETE]
