"""bench.grid on a real MLflow SQLite store and real Optuna storages: the product of the lists as tracked runs,
resumption, work split between processes, and bad lists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from bench import grid
from bench.cli import main_guard
from bench.reporting import data as report_data
from bench.sweeps.queue import CELL_ATTR
from bench.tracking.names import ROLE_TAG, SWEEP_TAG, TRIAL_TAG
from tests.conftest import REPO

TINY = ["--epochs", "1", "--limit-train", "100"]


def finished_runs(tracking_uri: str) -> list:
    """The FINISHED training runs (not the sweeps' parent runs)."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("vae-bench")
    runs = [] if exp is None else client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    return [r for r in runs if ROLE_TAG not in r.data.tags]


def test_a_failed_combination_is_queued_again_by_the_next_call(tmp_path: Path, tracking_uri: str, capsys) -> None:
    args = ["--variants", "sgvb_b", "--latents", "2", "--lr", "1e-3,1e3", "--batch-size", "32", *TINY,
            "--tracking-uri", tracking_uri]
    assert grid.main(args) == 1  # lr 1e3 diverges: that run FAILED, the other FINISHED
    out = capsys.readouterr().out
    assert "run 1/2 sgvb_b-z2-L1-s1 (ETA after the first run)" in out and "run 2/2 sgvb_b-z2-L1-s1 (ETA " in out
    assert out.count("browse it with") == 1  # one hint for the sweep, not one per run
    assert len(finished_runs(tracking_uri)) == 1
    assert grid.main(args) == 1  # queued again (and fails again); the finished one is not rerun
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("vae-bench").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]  # one parent run for both calls
    runs = [r for r in runs if r is not parent]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert sorted((r.data.params["lr"], r.info.status) for r in runs) == [
        ("0.001", "FINISHED"), ("1000.0", "FAILED"), ("1000.0", "FAILED")]
    study = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'grid-queue.db'}")  # the default: its own file
    assert len(study) == 1  # both calls shared one study
    trials = optuna.load_study(study_name=study[0].study_name,
                               storage=f"sqlite:///{tmp_path / 'grid-queue.db'}").get_trials()
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "FAIL", "FAIL"]
    assert grid.main(args) == 1  # failed twice with NaN: not run a third time, and said so
    assert len(client.search_runs([client.get_experiment_by_name("vae-bench").experiment_id])) == 3 + 1
    assert "failed 2 times with a non-finite loss" in capsys.readouterr().out
    assert not any(k in r.data.tags for r in runs for k in (ROLE_TAG, TRIAL_TAG))  # grid runs are not trials


def test_two_processes_split_a_2x2x1_grid_and_a_second_call_adds_none(tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # does not exist yet: both processes meet it new
    args = ["--variants", "sgvb_a,sgvb_b", "--latents", "2,5", "--seeds", "1", *TINY,
            "--storage", str(tmp_path / "grid.journal"), "--tracking-uri", uri]
    procs = [subprocess.Popen([sys.executable, "-m", "bench.grid", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = finished_runs(uri)
    assert sorted(r.info.run_name for r in runs) == ["sgvb_a-z2-L1-s1", "sgvb_a-z5-L1-s1",
                                                     "sgvb_b-z2-L1-s1", "sgvb_b-z5-L1-s1"]  # each once
    sweeps = {r.data.tags[SWEEP_TAG] for r in runs}
    assert len(sweeps) == 1 and sweeps.pop().startswith("grid-")
    assert {r.data.params["limit_train"] for r in runs} == {"100"}
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "grid.journal")))
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert sorted(t.user_attrs[CELL_ATTR] for t in trials) == [0, 1, 2, 3]  # one trial per cell
    assert {t.state for t in trials} == {TrialState.COMPLETE}

    assert grid.main(args) == 0  # resumed: everything is done
    assert "4 already finished, 0 to run" in capsys.readouterr().out
    assert grid.main([*args, "--sweep", "another"]) == 0  # FINISHED with the same settings, whatever the sweep
    assert len(finished_runs(uri)) == 4
    reused, _ = report_data.search(MlflowClient(uri), sweep="another")  # and they are that sweep's runs too
    assert sorted(reused["run_id"]) == sorted(r.info.run_id for r in runs)
    capsys.readouterr()
    # A setting that changes the result (here --limit-train) makes new combinations.
    assert grid.main([*args, "--limit-train", "100,200", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 combinations, 4 already finished, 4 to run" in out and out.count("to run") == 5


@pytest.mark.parametrize("flag, value, message", [
    ("--latents", "2,,5", "empty item"),
    ("--latents", "2,x", "'x' in '2,x'"),
    ("--variants", "sgvb_a,nope", "'nope' in 'sgvb_a,nope': unknown variant; choose from"),
    ("--lr", "1e-3,-1", "'-1' in '1e-3,-1'"),
    ("--seeds", "1,-1", "'-1' in '1,-1': -1 is out of range; give a seed from 0 to 2**63-1"),
    ("--storage", "grid.txt", "neither an RDB URL"),
])
def test_bad_lists_are_one_line_and_exit_2(tracking_uri: str, capsys, flag: str, value: str, message: str) -> None:
    args = {"--variants": "sgvb_b", "--epochs": "1", "--limit-train": "100", "--tracking-uri": tracking_uri,
            flag: value}
    try:
        status = main_guard(grid.main, grid.PROG)([x for kv in args.items() for x in kv])
    except SystemExit as e:  # argparse's own errors
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]


def test_a_run_resumed_to_more_epochs_is_a_cell_of_its_new_target(tracking_uri: str, capsys) -> None:
    """A 1-epoch run resumed to 2 epochs keeps params.epochs=1 (params are immutable) and the tag
    bench.epochs_target=2: it is the 2-epoch cell, not the 1-epoch one."""
    from bench import run

    common = ["--variant", "sgvb_b", "--latent", "2", "--limit-train", "100", "--no-progress",
              "--tracking-uri", tracking_uri]
    assert run.main([*common, "--epochs", "1"]) == 0
    (made,) = finished_runs(tracking_uri)
    assert run.main(["--resume", made.info.run_id, "--epochs", "2", "--tracking-uri", tracking_uri]) == 0
    capsys.readouterr()
    cell = ["--variants", "sgvb_b", "--latents", "2", "--limit-train", "100", "--tracking-uri", tracking_uri,
            "--dry-run"]
    assert grid.main([*cell, "--epochs", "1"]) == 0
    assert "1 combinations, 0 already finished, 1 to run" in capsys.readouterr().out
    assert grid.main([*cell, "--epochs", "2"]) == 0
    assert "1 combinations, 1 already finished, 0 to run" in capsys.readouterr().out


def test_grid_runs_sit_under_their_sweep_and_one_printed_filter_finds_reused_runs(tracking_uri: str,
                                                                                  capsys) -> None:
    import mlflow

    common = ["--variants", "sgvb_b", "--latents", "2", *TINY, "--tracking-uri", tracking_uri]
    filters = {}
    for sweep, seeds in (("one", "1,2"), ("two", "2,3")):  # "two" reuses one's seed-2 run and makes seed 3
        assert grid.main([*common, "--seeds", seeds, "--sweep", sweep]) == 0
        out = capsys.readouterr().out
        (line,) = [x for x in out.splitlines() if "select its runs with " in x]
        filters[sweep] = line.split("select its runs with ", 1)[1]
    client = MlflowClient(tracking_uri)
    everything = client.search_runs([client.get_experiment_by_name("vae-bench").experiment_id])
    by_name = {r.info.run_name: r for r in everything}
    assert sorted(by_name) == ["one · grid", "sgvb_b-z2-L1-s1", "sgvb_b-z2-L1-s2", "sgvb_b-z2-L1-s3", "two · grid"]
    one, two = by_name["one · grid"], by_name["two · grid"]
    assert {one.info.status, two.info.status} == {"FINISHED"} and one.data.tags[ROLE_TAG] == "sweep"
    parent_of = {n: by_name[n].data.tags.get("mlflow.parentRunId") for n in by_name}
    assert parent_of["sgvb_b-z2-L1-s1"] == parent_of["sgvb_b-z2-L1-s2"] == one.info.run_id
    assert parent_of["sgvb_b-z2-L1-s3"] == two.info.run_id  # the reused s2 keeps the parent that made it
    mlflow.set_tracking_uri(tracking_uri)
    for sweep, seeds in (("one", {"1", "2"}), ("two", {"2", "3"})):
        found = mlflow.search_runs(search_all_experiments=True, filter_string=filters[sweep])
        assert set(found["params.seed"]) == seeds and len(found) == 2  # exactly the sweep's runs, reused included
        raw, _ = report_data.search(client, sweep=sweep)
        assert set(raw["params.seed"]) == seeds and len(raw) == 2
    data = report_data.load(client)  # the whole experiment: grid runs are compared, the parents are not
    roles = dict(zip(data.runs["run_name"], data.runs["role"], strict=True))
    assert roles == {"one · grid": "sweep", "two · grid": "sweep", "sgvb_b-z2-L1-s1": "main",
                     "sgvb_b-z2-L1-s2": "main", "sgvb_b-z2-L1-s3": "main"}
    assert len(data.finished) == 3
