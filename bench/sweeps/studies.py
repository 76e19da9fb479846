"""A study shared by many workers: its name, the settings they must agree on, and its MLflow parent run."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from bench.errors import UserError
from bench.tracking.names import NOTE_TAG, PARENT_TAG, ROLE_TAG, STUDY_TAG, TRIAL_TAG
from bench.tracking.provenance import provenance_tags
from bench.tracking.store import lock_for

SETTINGS_ATTR = "bench.settings"  # study user attribute: what every worker of the study must agree on
PARENT_ATTR = "mlflow_parent_run_id"  # study user attribute: the study's MLflow parent run


def check_name(name: str, what: str = "study name") -> str:
    # The name goes into MLflow search filters, which have no escaping for quotes.
    if not name or not re.fullmatch(r"[A-Za-z0-9_.:+=@/ -]+", name):
        raise UserError(f"{what} {name!r} may use letters, digits, spaces and _ . : + = @ / - only")
    return name


def _wait_for_attr(study: optuna.Study, key: str, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = study.user_attrs.get(key)
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def agree_settings(study: optuna.Study, settings: dict[str, Any], created: bool, hint: str) -> None:
    """Record the study's settings (creator), or check that this worker's settings are the study's."""
    settings = json.loads(json.dumps(settings))  # the form they take in the storage
    if created:
        study.set_user_attr(SETTINGS_ATTR, settings)
        return
    # Just after creation the creator may not have written them yet.
    have = _wait_for_attr(study, SETTINGS_ATTR, 10.0)
    if have is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
        return
    diff = [f"{k}={have.get(k)!r} (here {v!r})" for k, v in settings.items() if have.get(k) != v]
    if diff:
        raise UserError(f"study {study.study_name!r} was made with other settings: {', '.join(diff)}; {hint}")


def _usable_run(client: MlflowClient, run_id: str, experiment_id: str) -> bool:
    try:
        info = client.get_run(run_id).info
    except MlflowException:
        return False
    return info.experiment_id == experiment_id and info.lifecycle_stage == "active"


def parent_run(client: MlflowClient, experiment_id: str, study: optuna.Study, created: bool,
               params: dict[str, Any], note: str) -> str:
    """The study's MLflow parent run: the creator makes it; every other worker finds the same one, by the
    study's user attribute, else by its tag (bench.study = the study's name)."""
    name = study.study_name
    if not created:
        run_id = _wait_for_attr(study, PARENT_ATTR, 30.0)
        if run_id is not None and _usable_run(client, run_id, experiment_id):
            _mark_running(client, run_id)
            return run_id
    with lock_for(client.tracking_uri):
        run_id = None if created else _find_parent(client, experiment_id, name)
        if run_id is None:
            run = client.create_run(experiment_id, run_name=name,
                                    tags={**provenance_tags(), STUDY_TAG: name, ROLE_TAG: "study", NOTE_TAG: note})
            run_id = run.info.run_id
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        study.set_user_attr(PARENT_ATTR, run_id)
    _mark_running(client, run_id)
    return run_id


def _find_parent(client: MlflowClient, experiment_id: str, name: str) -> str | None:
    runs = client.search_runs([experiment_id], f"tags.`{STUDY_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'study'",
                              order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _mark_running(client: MlflowClient, run_id: str) -> None:
    if client.get_run(run_id).info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")


def study_done(study: optuna.Study) -> bool:
    """No trial of the study is running or waiting: the worker that sees this last ends the parent run."""
    return not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))


def trial_run_tags(study: optuna.Study, number: int, parent_id: str | None = None) -> dict[str, str]:
    tags = {STUDY_TAG: study.study_name, ROLE_TAG: "trial", TRIAL_TAG: str(number)}
    if parent_id:
        tags[PARENT_TAG] = parent_id
    return tags
