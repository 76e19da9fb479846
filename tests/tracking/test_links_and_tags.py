"""What the MLflow UI shows of a run, in-process against real SQLite stores: the links (the classic "Model training"
view, the right command or server), provenance tags on runs and on a study's parent run, settings as params and
per-step tags rather than charts, and experiment descriptions."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from bench.sweeps.studies import parent_run
from bench.tracking import provenance
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import (
    EXPERIMENT_NOTES,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    NOTE_TAG,
    SOURCE_NAME_TAG,
    TUNE_EXPERIMENT,
    USER_TAG,
)
from bench.tracking.store import browse_hint, get_or_create_experiment, open_store, ui_address
from tests.conftest import REPO

RUN_ID = "0123456789abcdef0123456789abcdef"
CLASSIC = "?workflowType=machine_learning"


def test_links_open_the_classic_model_training_views() -> None:
    """MLflow 3.17.2 opens `#/experiments/1/runs/<id>` in its GenAI view (Traces, Token Usage); the query selects
    the Model training view (checked in headless Chromium, see the README)."""
    assert ui_address("sqlite:///x.db", "1", RUN_ID) == f"http://127.0.0.1:5000/#/experiments/1/runs/{RUN_ID}{CLASSIC}"
    assert ui_address("sqlite:///x.db", "1") == f"http://127.0.0.1:5000/#/experiments/1/runs{CLASSIC}"
    assert ui_address("http://host:8080/", "2", RUN_ID) == f"http://host:8080/#/experiments/2/runs/{RUN_ID}{CLASSIC}"


def test_the_browse_hint_names_the_command_or_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "store" / "runs.db"
    hint = browse_hint(f"sqlite:///{db}", "1", RUN_ID)
    assert hint == (f"browse it with `mlflow ui --backend-store-uri sqlite:///{db} --artifacts-destination "
                    f"{db.parent / 'mlartifacts'}` at http://127.0.0.1:5000/#/experiments/1/runs/{RUN_ID}{CLASSIC}")
    monkeypatch.chdir(tmp_path)  # the default store of the working directory: bare `mlflow ui` serves it all
    assert browse_hint("sqlite:///mlflow.db", "1").startswith("browse it with `mlflow ui` at http://127.0.0.1:5000/")
    server = browse_hint("http://tracking.example:5000", "3", RUN_ID)
    assert server == f"browse it at http://tracking.example:5000/#/experiments/3/runs/{RUN_ID}{CLASSIC}"
    database = browse_hint("postgresql://me:secret@db/mlflow", "1")
    assert "mlflow ui --backend-store-uri postgresql://me:***@db/mlflow" in database and "secret" not in database


def test_settings_are_params_and_per_step_tags_not_metrics(tracking_uri: str) -> None:
    client = open_store(tracking_uri)
    tracker = MlflowTracker.start(client, "unit", "r", {})
    for k in (1000, 5000):
        tracker.log_metrics({"test_nll": 90.0 - k / 1000}, step=3)
        tracker.log_settings({"nll_samples": k}, step=3)
    tracker.log_settings({"nll_samples": 10}, step=4)
    run = client.get_run(tracker.run_id)
    assert run.data.params["nll_samples"] == "1000"  # the first K (params are immutable)
    assert run.data.tags["bench.nll_samples.step3"] == "1000,5000"  # i-th test_nll value at step 3 <- i-th K
    assert run.data.tags["bench.nll_samples.step4"] == "10"
    assert "nll_samples" not in run.data.metrics


def test_every_run_and_a_study_parent_run_carry_provenance(tracking_uri: str, tmp_path: Path) -> None:
    client = open_store(tracking_uri)
    tracker = MlflowTracker.start(client, TUNE_EXPERIMENT, "r", {}, tags={"x": "y"})
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    parent = parent_run(client, tracker.experiment_id, study, True, {}, "a study")
    for run_id in (tracker.run_id, parent):
        tags = client.get_run(run_id).data.tags
        assert tags[SOURCE_NAME_TAG] and tags[USER_TAG]
        if (REPO / ".git").exists():
            assert len(tags[GIT_COMMIT_TAG]) == 40 and tags[GIT_DIRTY_TAG] in ("true", "false")
    assert client.get_experiment(tracker.experiment_id).tags[NOTE_TAG] == EXPERIMENT_NOTES[TUNE_EXPERIMENT]


def test_provenance_asks_git_about_the_package_folder_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    provenance.git_state.cache_clear()
    monkeypatch.chdir(tmp_path)  # not a checkout: the working directory must not matter
    first = provenance.git_state()
    assert provenance.git_state() is first and provenance.git_state.cache_info().hits >= 1
    if (REPO / ".git").exists():
        assert first is not None and len(first[0]) == 40
    provenance.git_state.cache_clear()
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path)  # an installed package outside any checkout
    assert provenance.git_state() is None
    tags = provenance.provenance_tags()
    assert GIT_COMMIT_TAG not in tags and GIT_DIRTY_TAG not in tags and tags[USER_TAG]
    provenance.git_state.cache_clear()


def test_an_existing_experiment_is_found_not_redescribed(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("mine", tags={NOTE_TAG: "my words"})
    assert get_or_create_experiment(client, "mine") == exp
    assert client.get_experiment(exp).tags[NOTE_TAG] == "my words"
