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

SETTINGS_ATTR = "bench.settings"  # study user attribute: what every worker of the study must agree on
PARENT_ATTR = "mlflow_parent_run_id"  # study user attribute: the study's MLflow parent run
SETTLE_SECONDS = 120.0  # how long a joining worker waits for the creator to write the settings and parent run


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
        time.sleep(0.2)


def _creator_missing(study: optuna.Study, what: str) -> UserError:
    return UserError(f"study {study.study_name!r} has no {what}: the process that created it stopped before "
                     f"writing it; delete the study (optuna delete-study --study-name '{study.study_name}' "
                     "--storage ...) or use another name")


def agree_settings(study: optuna.Study, settings: dict[str, Any], created: bool, hint: str,
                   wait: float = SETTLE_SECONDS) -> None:
    """Record the study's settings (its creator), or check that this worker's settings are the study's.

    Only the creator writes them: the storage gives exactly one caller ``created`` (a study's name is unique in
    it), so the first settings written are the only ones, and every other worker waits for them and compares.
    A worker never writes its own when the creator is slow (Optuna's user attributes are last-writer-wins).
    """
    settings = json.loads(json.dumps(settings))  # the form they take in the storage
    if created:
        study.set_user_attr(SETTINGS_ATTR, settings)
        return
    have = _wait_for_attr(study, SETTINGS_ATTR, wait)
    if have is None:
        raise _creator_missing(study, "settings")
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
               params: dict[str, Any], note: str, wait: float = SETTLE_SECONDS, run_name: str | None = None,
               role: str = "study") -> str:
    """The study's MLflow parent run (named ``run_name``, else the study's name; tagged bench.role=``role``): its
    creator makes it and records it on the study; every other worker waits for that record (never makes one of
    its own, so a study has one parent run)."""
    name = study.study_name
    if created:
        run = client.create_run(experiment_id, run_name=run_name or name,
                                tags={**provenance_tags(), STUDY_TAG: name, ROLE_TAG: role, NOTE_TAG: note})
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        study.set_user_attr(PARENT_ATTR, run.info.run_id)
        return run.info.run_id
    run_id = _wait_for_attr(study, PARENT_ATTR, wait)
    if run_id is None:
        raise _creator_missing(study, "MLflow parent run")
    if not _usable_run(client, run_id, experiment_id):
        raise UserError(f"the parent run {run_id} of study {name!r} is deleted or in another experiment; restore "
                        "it (mlflow runs restore) or use another study name")
    _mark_running(client, run_id)
    return run_id


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
