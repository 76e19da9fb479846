"""The grid's queue on real storages and real processes: the race for the last waiting trial has one winner,
and the losers leave nothing behind (Study.ask would have made each of them a new, empty trial)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.sweeps import queue
from bench.sweeps import storage as stg
from tests.conftest import REPO

POP = """
import sys, time
import optuna
from bench.sweeps import queue, storage as stg
storage = stg.open_storage(sys.argv[1])
study = optuna.load_study(study_name="q", storage=storage)
while time.time() < float(sys.argv[2]):  # start together
    time.sleep(0.005)
got = queue.pop(study, storage)
print("won" if got else "none")
"""


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_four_workers_race_for_the_last_waiting_trial(tmp_path: Path, kind: str) -> None:
    import time

    spec = str(tmp_path / "q.journal") if kind == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="q", storage=stg.open_storage(spec))
    assert queue.enqueue_missing(study, spec, {0: "cell-0"}, retry_failed=False) == (1, [])
    assert queue.enqueue_missing(study, spec, {0: "cell-0"}, retry_failed=False) == (0, [])  # already waiting
    start = time.time() + 4
    procs = [subprocess.Popen([sys.executable, "-c", POP, spec, str(start)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(4)]
    outs = sorted(p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs)
    assert outs == ["none", "none", "none", "won"]
    (trial,) = study.get_trials()  # no trial made by the losers
    assert trial.state == TrialState.RUNNING and trial.user_attrs == {"cell": 0, "name": "cell-0"}
