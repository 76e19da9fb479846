"""bench.tune against real storages (SQLite, journal file) and a real MLflow SQLite store: studies, nested runs,
pruning, failures, concurrent workers, and workers killed mid-trial."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from bench import tune
from bench.cli import main_guard
from bench.core.config import TrainConfig
from bench.core.splits import split_validation
from bench.errors import UserError
from bench.sweeps import storage as stg
from bench.sweeps.workers import RUN_ATTR, WORKER_ATTR
from bench.tracking import names
from bench.tracking.names import FAILURE_TAG
from tests.conftest import REPO
from variants import search_space
from variants.registry import REGISTRY

SMALL = ["--variant", "sgvb_b", "--latent", "5", "--epochs", "2", "--limit-train", "200", "--validation", "500"]


def runs_of(tracking_uri: str, experiment: str = tune.DEFAULT_EXPERIMENT) -> tuple[object, list]:
    """(the parent run, the child runs) of the only study in the experiment."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(names.ROLE_TAG) == "study"]
    children = [r for r in runs if r.data.tags.get(names.ROLE_TAG) == "trial"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return parents[0], children


def test_validation_split_is_held_out_from_training_never_test(mnist) -> None:
    cfg = TrainConfig(limit_train=300, validation=1000)
    train_x, val_x = split_validation(mnist, cfg)
    assert len(train_x) == 300 and len(val_x) == 1000
    assert val_x.data_ptr() == mnist.train_x[-1000:].data_ptr()  # the last training images, not test images
    assert split_validation(mnist, TrainConfig(limit_train=300))[1] is None
    with pytest.raises(UserError, match="validation"):
        split_validation(mnist, TrainConfig(validation=len(mnist.train_x)))


def test_search_space_is_declared_per_variant() -> None:
    names = [d.name for d in search_space.dimensions(REGISTRY["sgvb_b"])]
    assert names == ["lr", "batch_size", "hidden"]
    assert "gaussian_variance" in [d.name for d in search_space.dimensions(REGISTRY["sgvb_b_gauss"])]
    assert "gaussian_variance" not in [d.name for d in search_space.dimensions(REGISTRY["sgvb_b_gauss_learned"])]
    assert "log scale" in search_space.describe()


def test_five_trial_study_nests_its_runs_under_one_parent(tmp_path: Path, tracking_uri: str, capsys) -> None:
    assert tune.main([*SMALL, "--trials", "5", "--prune-after", "2", "--tracking-uri", tracking_uri,
                      "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "trial 4 (5/5): " in out and "; best val_loss " in out
    # best values printed to 0.001 nats, never as a bare float
    best = re.findall(r"best val_loss (\S+) \(trial", out)
    assert len(best) >= 5 and all(re.fullmatch(r"\d+\.\d{3}", b) for b in best), best
    # k/N with an ETA before each trial: none before the first (no duration yet), seconds after
    assert "trial 1/5 of this worker (ETA after the first trial)" in out
    assert re.search(r"trial 5/5 of this worker \(ETA \d+ s\)", out), out
    assert "in the training loop" not in out  # the overhead line is for --verbose
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"  # the default: beside the MLflow store
    study = optuna.load_study(study_name="tune-sgvb_b-z5-e2-n200", storage=storage)
    assert len(study.trials) == 5
    assert study.metric_names == ["val_loss in nats"]  # what optuna-dashboard calls the objective
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}

    parent, children = runs_of(tracking_uri)
    assert len(children) == 5
    assert parent.info.status == "FINISHED"
    # short enough for the runs table's Run Name column (the study's name was cut at "tune-sgvb_b-z2-e2-...")
    assert parent.info.run_name == "sgvb_b-z5 · tune" and len(parent.info.run_name) <= 20
    assert parent.data.tags[names.STUDY_TAG] == "tune-sgvb_b-z5-e2-n200"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.trial"] == str(study.best_trial.number)
    assert float(parent.data.tags["best.lr"]) == pytest.approx(study.best_params["lr"])
    client = MlflowClient(tracking_uri)
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png"} <= plots

    by_trial = {int(r.data.tags[names.TRIAL_TAG]): r for r in children}
    assert sorted(by_trial) == [0, 1, 2, 3, 4]
    for t in study.trials:
        run = by_trial[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert t.user_attrs[RUN_ATTR] == run.info.run_id
        assert run.info.run_name == f"t{t.number} sgvb_b-z5-L1-s1"  # the number first: never cut off
        assert float(run.data.params["lr"]) == pytest.approx(t.params["lr"])
        assert run.data.params["batch_size"] == str(t.params["batch_size"])
        assert run.data.params["validation"] == "500"
        assert "val_loss" in run.data.metrics and "test_loss" not in run.data.metrics  # never the test set
        if t.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED"
            # Optuna keeps the run's val_loss to 0.001 nats (what the dashboard's Best Trial card prints)
            assert t.value == round(run.data.metrics["val_loss"], 3)
        else:
            assert run.info.status == "KILLED"
            assert run.data.tags[names.PRUNED_TAG] == "1"


@pytest.mark.filterwarnings("ignore:Fixed parameter lr")
def test_pruned_and_failed_trials_end_their_runs_and_the_study_goes_on(tmp_path: Path, tracking_uri: str) -> None:
    args = [*SMALL, "--study-name", "pf", "--tracking-uri", tracking_uri]
    assert tune.main([*args, "--trials", "0"]) == 0  # creates the study and its parent, runs nothing
    study = optuna.load_study(study_name="pf", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study.enqueue_trial({"lr": 3e-3, "batch_size": 32, "hidden": 200})  # learns in epoch 1
    study.enqueue_trial({"lr": 1e-4, "batch_size": 256, "hidden": 100})  # barely moves: pruned after epoch 1
    study.enqueue_trial({"lr": 1e3, "batch_size": 32, "hidden": 100})  # diverges: NaN
    assert tune.main([*args, "--trials", "4", "--prune-after", "1"]) == 0

    states = [t.state for t in study.get_trials()]
    assert states[:3] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert states[3] in (TrialState.COMPLETE, TrialState.PRUNED)  # the study went on after the failure
    parent, children = runs_of(tracking_uri)
    runs = {int(r.data.tags[names.TRIAL_TAG]): r for r in children}
    assert [runs[i].info.status for i in range(3)] == ["FINISHED", "KILLED", "FAILED"]
    assert runs[1].data.tags[names.PRUNED_TAG] == "1"
    assert "pruned at epoch 1" in runs[1].data.tags[FAILURE_TAG]
    assert "nan" in runs[2].data.tags[FAILURE_TAG]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_fail"] == 1


def test_two_journal_workers_started_together_share_one_study(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # does not exist yet: both workers meet it new
    journal = tmp_path / "study.journal"
    cmd = [sys.executable, "-m", "bench.tune", "--variant", "sgvb_b", "--latent", "5", "--epochs", "1",
           "--limit-train", "100", "--validation", "200", "--trials", "3", "--study-name", "shared",
           "--storage", str(journal), "--tracking-uri", uri]
    workers = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    assert sum("(created)" in o for o in outs) == 1 and sum("(joined)" in o for o in outs) == 1

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) == 2
    parent, children = runs_of(uri)
    assert len(children) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED"}
    assert sorted(int(r.data.tags[names.TRIAL_TAG]) for r in children) == list(range(6))


def _wait_for_running_run(study_name: str, storage: object, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
        if any(t.state == TrialState.RUNNING and RUN_ATTR in t.user_attrs for t in trials):
            return
        time.sleep(0.05)
    raise AssertionError("the worker never started a trial")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_worker_killed_mid_trial_is_marked_and_its_trial_queued_again(tmp_path: Path, tracking_uri: str,
                                                                   kind: str) -> None:
    """journal: the next worker on this machine sees the dead pid; sqlite: as if the worker ran on another
    machine, only the worker's silence (its lease's beats) tells."""
    storage_arg = str(tmp_path / "s.journal") if kind == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["--variant", "sgvb_b", "--latent", "5", "--epochs", "2", "--limit-train", "5000", "--validation", "500",
            "--study-name", "k", "--storage", storage_arg, "--heartbeat", "1", "--tracking-uri", tracking_uri]
    assert tune.main([*args, "--trials", "0"]) == 0
    storage = stg.open_storage(storage_arg)
    study = optuna.load_study(study_name="k", storage=storage)
    study.enqueue_trial({"lr": 1e-3, "batch_size": 32, "hidden": 800})  # seconds long: time to kill it
    proc = subprocess.Popen([sys.executable, "-m", "bench.tune", *args, "--trials", "1"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_running_run("k", storage, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    lost = study.get_trials()[0]
    assert lost.state == TrialState.RUNNING
    if kind == "sqlite":  # hide the dead pid from the next worker: only its silence can tell now
        storage.set_trial_user_attr(lost._trial_id, WORKER_ATTR, "another-machine:1")
        time.sleep(3.5)  # the grace period: 2 x --heartbeat + 1 s
    assert tune.main([*args, "--trials", "0"]) == 0  # a worker joining the study cleans up on arrival

    first, again = study.get_trials()
    assert first.state == TrialState.FAIL
    assert again.state == TrialState.WAITING and again.params == first.params  # the next worker runs it
    assert again.system_attrs["failed_trial"] == 0
    assert RUN_ATTR not in again.user_attrs and WORKER_ATTR not in again.user_attrs
    parent, children = runs_of(tracking_uri)
    assert len(children) == 1 and children[0].info.status == "KILLED"
    assert "died mid-trial" in children[0].data.tags[FAILURE_TAG]
    assert parent.info.status == "RUNNING"  # a trial is still waiting: the study is not over


def test_settings_of_a_study_must_agree(tmp_path: Path, tracking_uri: str) -> None:
    args = ["--variant", "sgvb_b", "--latent", "5", "--study-name", "same", "--trials", "0",
            "--tracking-uri", tracking_uri]
    assert tune.main([*args, "--epochs", "2"]) == 0
    with pytest.raises(UserError, match="epochs=2"):
        tune.main([*args, "--epochs", "3"])


@pytest.mark.parametrize("flag, value, message", [
    ("--variant", "nope", "invalid choice: 'nope'"),
    ("--storage", "study.txt", "neither an RDB URL"),
    ("--storage", "postgresql://u:secret@127.0.0.1:1/x", "cannot be opened"),
    ("--storage", "/no/such/folder/s.journal", "does not exist"),
    ("--validation", "60000", "validation must leave training images"),
    ("--seed", str(2**64), "is out of range; give a seed from 0 to 2**63-1"),
    ("--study-name", "it's", "may use letters"),
    ("--storage", "<the tracking database>", "a file of its own"),
])
def test_bad_input_is_one_line_and_exit_2(tracking_uri: str, capsys, flag: str, value: str, message: str) -> None:
    value = tracking_uri if value == "<the tracking database>" else value
    args = {"--variant": "sgvb_b", "--trials": "1", "--tracking-uri": tracking_uri, flag: value}
    try:
        status = main_guard(tune.main, tune.PROG)([x for kv in args.items() for x in kv])
    except SystemExit as e:  # argparse's own errors
        status = e.code
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err and "secret" not in err
    assert message in err.strip().splitlines()[-1]  # one line (argparse prints its usage above it)
