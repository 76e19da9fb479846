"""Who runs a trial, whether that worker is still alive, and what happens to the trial and its MLflow run when
it is not: failed, queued again (a bounded number of times), its run ended KILLED with the reason."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import warnings
from collections.abc import Callable

import optuna
from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial, TrialState

from bench.tracking.names import FAILURE_TAG, ROLE_TAG, STUDY_TAG, TRIAL_TAG

HOST = socket.gethostname()
WORKER = f"{HOST}:{os.getpid()}"  # who runs a trial; a later worker on this host can tell if it is still alive
RUN_ATTR = "mlflow_run_id"  # trial user attribute: the trial's MLflow run
WORKER_ATTR = "bench.worker"  # trial user attribute: host:pid of the worker running it
MAX_RETRY = 2  # a trial whose worker died is run again at most this often


def _end_lost_run(client: MlflowClient, run_id: str | None, why: str) -> None:
    if not run_id:
        return
    with contextlib.suppress(MlflowException):
        if client.get_run(run_id).info.status == "RUNNING":
            client.log_batch(run_id, tags=[RunTag(FAILURE_TAG, why)])
            client.set_terminated(run_id, "KILLED")


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue ``trial`` again with the same params (at most MAX_RETRY times), as Optuna's
    RetryHeartbeatStaleTrialCallback does and with the same system attributes (failed_trial, retry_history),
    but without the dead worker's run and identity among the user attributes."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY:
        return False
    system_attrs = {**trial.system_attrs, "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                    "retry_history": history}
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (RUN_ATTR, WORKER_ATTR)}
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, user_attrs=user_attrs,
                                        system_attrs=system_attrs))
    return True


def stale_trial_callback(client: MlflowClient) -> Callable[[optuna.Study, FrozenTrial], None]:
    """For a trial whose worker died (failed by heartbeat or by fail_dead_trials): run it again (a new trial
    with the same params) and end its MLflow run KILLED, naming the lost worker."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        again = retry_trial(study, trial)
        worker = trial.user_attrs.get(WORKER_ATTR, "unknown worker")
        what = "queued again" if again else f"not retried (already retried {MAX_RETRY} times)"
        why = f"worker {worker} died mid-trial; Optuna trial {trial.number} marked FAIL, {what}"
        _end_lost_run(client, trial.user_attrs.get(RUN_ATTR), why)
        print(f"trial {trial.number}: its worker {worker} died; marked FAIL, {what}")

    return callback


def _alive(worker: str) -> bool | None:
    """Whether the worker process host:pid is alive; None when it ran on another machine."""
    host, _, pid = worker.rpartition(":")
    if host != HOST or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: optuna.Study, on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> int:
    """Mark FAIL the RUNNING trials whose worker process on this machine is gone, and call ``on_stale`` for
    each. Journal storages have no heartbeats, so this is how their lost trials are found; on RDB storages it
    is quicker than the heartbeat's grace period. Only one caller wins each trial (the storage decides)."""
    storage = study._storage  # Optuna's own fail_stale_trials works on the storage in the same way
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        if worker is None or worker == WORKER or _alive(worker) is not False:
            continue
        try:
            won = storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if won:
            on_stale(study, copy.deepcopy(storage.get_trial(t._trial_id)))
            n += 1
    return n


def reconcile_runs(client: MlflowClient, experiment_id: str, study: optuna.Study) -> int:
    """End the RUNNING MLflow runs of this study's trials that are no longer running (their worker died
    after Optuna learnt of it but before the run was ended)."""
    name = study.study_name
    runs = client.search_runs([experiment_id], f"tags.`{STUDY_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'trial' "
                                               "and attributes.status = 'RUNNING'", max_results=1000)
    if not runs:
        return 0
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    n = 0
    for run in runs:
        trial = trials.get(int(run.data.tags.get(TRIAL_TAG, -1)))
        if trial is not None and trial.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        state = trial.state.name if trial is not None else "gone"
        _end_lost_run(client, run.info.run_id,
                      f"worker died mid-trial; Optuna trial {run.data.tags.get(TRIAL_TAG)} is {state}")
        n += 1
    return n


def clean_up(client: MlflowClient, experiment_id: str, study: optuna.Study,
             on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> None:
    """Fail the trials of dead workers (pid check here, heartbeats on RDB) and end their runs."""
    fail_dead_trials(study, on_stale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no-op without heartbeats
    reconcile_runs(client, experiment_id, study)
