"""Who runs a trial, whether that worker is still alive, and what happens to the trial and its MLflow run when
it is not: failed, queued again (a bounded number of times), its run ended KILLED with the reason.

A worker holds its trial through a lease: it writes its identity (bench.core.processes.ME: host, PID, PID
namespace, start time, boot) on the trial, and a beat (the time, in a system attribute) every ``--heartbeat``
seconds from a thread. Another worker judges it lost by ``processes.alive``: False (the process is gone) means
lost at once; True (it is there, maybe paused or slow) means not lost, however old its beat; None (another
machine, another PID namespace) means lost once its last beat is older than twice its beat interval. The same
rule serves journal and RDB storages (Optuna's own heartbeat is not used: it would fail a live, paused worker).

Every change of a trial's state goes through the storage's compare-and-set (``set_trial_state_values``): of a
worker finishing its trial and another failing it as lost, exactly one wins. A worker that lost its trial (it
was paused, or cut off from the storage) learns it at its next beat or epoch, stops, and leaves its run as the
winner left it (KILLED, with the reason): it never marks that run FINISHED.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import datetime

import optuna
from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from bench.core.processes import ME, ProcessId, alive
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import FAILURE_TAG

WORKER = str(ME)  # who runs a trial, in a form another worker can check (bench.core.processes)
RUN_ATTR = "mlflow_run_id"  # trial user attribute: the trial's MLflow run
WORKER_ATTR = "bench.worker"  # trial user attribute: the process running it (ProcessId)
BEAT_ATTR = "bench.beat"  # trial system attribute: [time of the last beat, seconds between beats]
MAX_RETRY = 2  # a trial whose worker died is run again at most this often

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


class LostTrial(Exception):
    """This worker's trial was failed by another worker (which took this one for dead): stop, write nothing."""


def short(worker: str) -> str:
    pid = ProcessId.parse(worker)
    return pid.short() if pid else worker


class Lease:
    """This worker's hold on a RUNNING trial: its identity on the trial, a beat every ``every`` seconds from a
    thread, and ``check()``, which says whether the trial is still this worker's (RUNNING in the storage)."""

    def __init__(self, storage: BaseStorage, trial_id: int, every: float) -> None:
        self.storage, self.trial_id, self.every = storage, trial_id, every
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-lease", daemon=True)

    def __enter__(self) -> Lease:
        self.storage.set_trial_user_attr(self.trial_id, WORKER_ATTR, WORKER)
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        try:
            self.storage.set_trial_system_attr(self.trial_id, BEAT_ATTR, [time.time(), self.every])
        except optuna.exceptions.UpdateFinishedTrialError:
            self.lost = True

    def _run(self) -> None:
        while not self._stop.wait(self.every) and not self.lost:
            with contextlib.suppress(Exception):  # a storage hiccup: the next beat tries again
                self._beat()

    def check(self) -> bool:
        """True while the trial is RUNNING in the storage (read now, not from the last beat)."""
        if not self.lost and self.storage.get_trial(self.trial_id).state != TrialState.RUNNING:
            self.lost = True
        return not self.lost

    def finish(self, state: TrialState, value: float | None = None) -> bool:
        """Set the trial's final state, if it is still this worker's (compare-and-set in the storage)."""
        try:
            return self.storage.set_trial_state_values(self.trial_id, state, None if value is None else [value])
        except optuna.exceptions.UpdateFinishedTrialError:
            self.lost = True
            return False


def is_lost(trial: FrozenTrial, now: float | None = None) -> bool:
    """Whether a RUNNING trial's worker is gone (see the module's docstring for the rule)."""
    worker = trial.user_attrs.get(WORKER_ATTR)
    if worker == WORKER:
        return False
    verdict = alive(worker) if worker else None
    if verdict is not None:
        return not verdict
    beat, every = trial.system_attrs.get(BEAT_ATTR) or [None, 10.0]
    if beat is None:  # popped, but its worker never beat: judge by the start time
        start = trial.datetime_start or datetime.now()
        beat = start.timestamp()
    return (now or time.time()) - beat > 2 * every + 1.0


def end_lost_run(client: MlflowClient, run_id: str | None, why: str) -> None:
    if not run_id:
        return
    with contextlib.suppress(MlflowException):
        if client.get_run(run_id).info.status == "RUNNING":
            client.log_batch(run_id, tags=[RunTag(FAILURE_TAG, why)])
            client.set_terminated(run_id, "KILLED")


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue ``trial`` again with the same params and labels (at most MAX_RETRY times), as Optuna's
    RetryHeartbeatStaleTrialCallback does and with the same system attributes (failed_trial, retry_history),
    but without the dead worker's run, identity and beat."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY:
        return False
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k != BEAT_ATTR}
    system_attrs.update(failed_trial=trial.system_attrs.get("failed_trial", trial.number), retry_history=history)
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (RUN_ATTR, WORKER_ATTR)}
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, user_attrs=user_attrs,
                                        system_attrs=system_attrs))
    return True


def stale_trial_callback(client: MlflowClient, say: Callable[[str], None] = print) -> StaleCallback:
    """For a trial whose worker was found lost: end its MLflow run KILLED naming the worker, then run the trial
    again (a new trial with the same params). The run is ended first, so that a worker which wakes up later
    finds it ended."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        worker = short(trial.user_attrs.get(WORKER_ATTR, "unknown worker"))
        will = len(trial.system_attrs.get("retry_history", [])) < MAX_RETRY
        what = "queued again" if will else f"not retried (already retried {MAX_RETRY} times)"
        why = (f"worker {worker} died mid-trial (or fell silent for too long); Optuna trial {trial.number} marked "
               f"FAIL, {what}")
        end_lost_run(client, trial.user_attrs.get(RUN_ATTR), why)
        retry_trial(study, trial)
        say(f"trial {trial.number}: its worker {worker} was lost; marked FAIL, {what}")

    return callback


def fail_lost_trials(study: optuna.Study, storage: BaseStorage, on_stale: StaleCallback) -> int:
    """Mark FAIL the RUNNING trials whose worker is lost (is_lost), and call ``on_stale`` for each. Only one
    caller wins each trial (the storage's compare-and-set decides)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    n = 0
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_lost(t, now):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            won = storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if won:
            on_stale(study, storage.get_trial(trial_id))
            n += 1
    return n


def reconcile_runs(client: MlflowClient, study: optuna.Study) -> int:
    """End the MLflow runs left RUNNING by FAIL trials (their worker died after Optuna learnt of it but before
    the run was ended)."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = t.user_attrs.get(RUN_ATTR)
        with contextlib.suppress(MlflowException):
            if run_id and client.get_run(run_id).info.status == "RUNNING":
                end_lost_run(client, run_id, f"worker died mid-trial; Optuna trial {t.number} is FAIL")
                n += 1
    return n


def clean_up(client: MlflowClient, study: optuna.Study, storage: BaseStorage, on_stale: StaleCallback) -> None:
    """Fail the trials of lost workers (and queue them again), and end the runs they leave RUNNING."""
    fail_lost_trials(study, storage, on_stale)
    reconcile_runs(client, study)


class LeasedTracker(MlflowTracker):
    """The run of a trial held by ``lease``: it stops (LostTrial) at the first epoch after the trial was taken
    from this worker, then writes nothing more; and it marks the run FINISHED only after the trial is COMPLETE
    (the storage's compare-and-set), so a run whose trial was failed and queued again never turns FINISHED."""

    def __init__(self, tracker: MlflowTracker, lease: Lease, value: Callable[[], float] | None = None) -> None:
        super().__init__(tracker.client, tracker.run_id)
        self.lease = lease
        self.value = value  # the trial's value once the run is done (default: the run's wall seconds)
        self.t0 = time.perf_counter()

    def _lost(self) -> LostTrial:
        return LostTrial(f"run {self.run_id}: its trial was taken from this worker (it was paused or cut off "
                         "for longer than its lease); the run is left as the other worker ended it")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.lease.check():
            raise self._lost()
        super().log_metrics(metrics, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        if not self.lease.lost:
            super().set_tags(tags)

    def finish(self, status: str = "FINISHED") -> None:
        if self.lease.lost:
            return
        if status == "FINISHED":
            if self.client.get_run(self.run_id).info.status != "RUNNING":  # ended by another worker meanwhile
                self.lease.finish(TrialState.FAIL)
                self.lease.lost = True
                raise self._lost()
            value = self.value() if self.value else time.perf_counter() - self.t0
            if not self.lease.finish(TrialState.COMPLETE, value):
                raise self._lost()
        super().finish(status)
