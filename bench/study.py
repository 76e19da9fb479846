"""Optuna studies shared by bench.tune and bench.grid: the storage, race-safe creation, the study's MLflow
parent run, and the clean-up after workers that died mid-trial.

Many workers (processes, machines) meet in one study through its storage. Whatever two of them must agree on
is decided by the storage, not by timing: the worker whose ``create_study`` succeeds is the study's creator and
records the study's settings and its MLflow parent run in the study's user attributes; the others read them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from bench.data import MNIST, load_mnist
from bench.errors import UserError
from bench.tracking import FAILURE_TAG, _lock_for, get_or_create_experiment, open_store, sqlite_path

HOST = socket.gethostname()
WORKER = f"{HOST}:{os.getpid()}"  # who runs a trial; a later worker on this host can tell if it is still alive

STUDY_TAG = "bench.study"  # on the parent run and on every trial's run: the study's name
ROLE_TAG = "bench.role"  # "study" (the parent run) or "trial"
TRIAL_TAG = "bench.trial"  # the Optuna trial number of a trial's run
RUN_ATTR = "mlflow_run_id"  # trial user attribute: the trial's MLflow run
WORKER_ATTR = "bench.worker"  # trial user attribute: host:pid of the worker running it
SETTINGS_ATTR = "bench.settings"  # study user attribute: what every worker of the study must agree on
PARENT_ATTR = "mlflow_parent_run_id"  # study user attribute: the study's MLflow parent run

MAX_RETRY = 2  # a trial whose worker died is run again at most this often
_TRANSIENT = ("locked", "already exists", "duplicate key", "deadlock", "could not serialize")



def quiet_optuna() -> None:
    """Optuna's INFO lines and experimental-feature warnings off: our own line per trial says what happened."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def masked(url: str) -> str:
    """A storage or tracking URL without its password, for logs, params and messages."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def default_storage(tracking_uri: str) -> str:
    """optuna.db beside a SQLite MLflow store (one folder holds both), else in the working directory."""
    db = sqlite_path(tracking_uri)
    folder = db.parent if db is not None else Path.cwd()
    return f"sqlite:///{folder / 'optuna.db'}"


def check_name(name: str, what: str = "study name") -> str:
    # The name goes into MLflow search filters, which have no escaping for quotes.
    if not name or not re.fullmatch(r"[A-Za-z0-9_.:+=@/ -]+", name):
        raise UserError(f"{what} {name!r} may use letters, digits, spaces and _ . : + = @ / - only")
    return name


def _is_transient(e: Exception) -> bool:
    text = str(e).lower()
    return any(t in text for t in _TRANSIENT)


def postgres_driver(url: str) -> str:
    """postgresql://... with a driver that is installed: SQLAlchemy 2.1 defaults to psycopg (3), while the
    project's extra installs psycopg2-binary."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def check_storage_spec(spec: str, tracking_uri: str | None = None) -> None:
    """Reject a storage argument that cannot be one, before anything slow happens."""
    if "://" not in spec and not spec.endswith(".journal"):
        raise UserError(f"storage {spec!r} is neither an RDB URL (sqlite:///PATH.db, postgresql://...) "
                        "nor a path ending in .journal")
    db = sqlite_path(spec)
    if db is not None and tracking_uri and db == sqlite_path(tracking_uri):
        # Both keep their schema version in an alembic_version table: one file cannot hold both.
        raise UserError(f"storage {spec} is the MLflow tracking database; give the Optuna storage a file of its own")


def open_storage(spec: str, heartbeat: int,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> BaseStorage:
    """An Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or a path ending in .journal.

    RDB storages get heartbeats: a trial whose worker stops beating for 2 x ``heartbeat`` seconds is marked
    FAIL by the next worker that asks for a trial, and ``on_stale`` runs for it. Journal storages have no
    heartbeats; see fail_dead_trials.
    """
    import sqlalchemy.exc

    check_storage_spec(spec)
    if "://" not in spec:
        path = Path(spec).expanduser().resolve()
        if not path.parent.is_dir():
            raise UserError(f"folder {path.parent} for the journal storage does not exist")
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise UserError(f"journal storage {path} cannot be opened: {e}") from None
    spec = postgres_driver(spec)
    db = sqlite_path(spec)
    if db is not None and not db.parent.is_dir():
        raise UserError(f"folder {db.parent} for the Optuna storage does not exist")
    connect = {"timeout": 60} if db is not None else {"connect_timeout": 10} if spec.startswith("postgres") else {}
    # Two processes creating the same new database at once race in its schema creation: a file lock covers
    # processes on one machine (beside a SQLite file), retries cover other machines.
    lock = storage_lock(spec)
    for attempt in range(6):
        try:
            with lock, warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
                storage = RDBStorage(spec, engine_kwargs={"connect_args": connect} if connect else None,
                                     heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                     heartbeat_stale_trial_callback=on_stale)
                if db is not None:
                    _commit_without_fsync(storage)
                return storage
        except (ImportError, sqlalchemy.exc.ArgumentError) as e:
            raise UserError(f"storage {masked(spec)} is not a usable RDB URL: {str(e).splitlines()[0]}") from None
        except (sqlalchemy.exc.SQLAlchemyError, RuntimeError) as e:
            if not (isinstance(e, sqlalchemy.exc.SQLAlchemyError) and _is_transient(e)) or attempt == 5:
                first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
                raise UserError(f"storage {masked(spec)} cannot be opened: {first}") from None
            time.sleep(0.2 + random.random() * 0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


def _commit_without_fsync(storage: RDBStorage) -> None:
    """SQLite in WAL mode with synchronous=NORMAL: a commit no longer waits for the disk (about 11 ms -> 0.02 ms
    here, and a trial makes a dozen), and readers no longer block writers. Safe for processes on one machine,
    which is what SQLite is for; a power cut may lose the last commits, never the database's consistency."""
    import sqlalchemy

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # stored in the file: every later connection uses it too
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # the connections opened while creating the storage reconnect with the pragmas


def close_storage(storage: BaseStorage) -> None:
    """Close an RDB storage's connections: the last one to close folds SQLite's write-ahead log into the file."""
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()


def storage_lock(spec: str) -> FileLock:
    """A lock for short critical sections of the processes on this machine that share ``spec``."""
    db = sqlite_path(spec)
    if db is not None:
        return FileLock(str(db) + ".lock")
    if "://" not in spec:
        return FileLock(str(Path(spec).expanduser().resolve()) + ".bench.lock")
    return _lock_for(spec)


def create_or_load(name: str, storage: BaseStorage, sampler: optuna.samplers.BaseSampler,
                   pruner: optuna.pruners.BasePruner | None = None) -> tuple[optuna.Study, bool]:
    """The study ``name``, and whether this call created it (exactly one of many concurrent callers does)."""
    import sqlalchemy.exc

    for attempt in range(20):
        try:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                        direction="minimize")
            return study, True
        except optuna.exceptions.DuplicatedStudyError:
            with contextlib.suppress(KeyError):  # KeyError: deleted in between; try again
                return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner), False
        except sqlalchemy.exc.OperationalError as e:  # SQLite: database is locked
            if not _is_transient(e):
                raise UserError(f"study {name!r} cannot be created: {str(e.orig).splitlines()[0]}") from None
        time.sleep(0.05 + random.random() * 0.2 * min(attempt + 1, 5))
    raise UserError(f"study {name!r} could neither be created nor loaded; is the storage healthy?")


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
    with _lock_for(client.tracking_uri):
        run_id = None if created else _find_parent(client, experiment_id, name)
        if run_id is None:
            run = client.create_run(experiment_id, run_name=name,
                                    tags={STUDY_TAG: name, ROLE_TAG: "study", "mlflow.note.content": note})
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
        tags["mlflow.parentRunId"] = parent_id
    return tags


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


@contextlib.contextmanager
def stopwatch(totals: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        totals[key] = totals.get(key, 0.0) + time.perf_counter() - t0


def exit_now(status: int) -> None:
    """End the process without the interpreter's module-by-module teardown, which takes 1-2 s once torch,
    MLflow and Optuna are loaded and does nothing for us: every write is committed by then. atexit handlers
    still run."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def open_store_and_data(tracking_uri: str | None, experiment: str,
                        data_dir: str | None) -> tuple[MlflowClient, str, MNIST]:
    """The MLflow client, the experiment's id and MNIST, for a tune or grid worker."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Decompressing and checksumming MNIST releases the GIL: it overlaps with opening the MLflow store.
        loading = pool.submit(load_mnist, data_dir)
        client = open_store(tracking_uri)
        experiment_id = get_or_create_experiment(client, experiment)
        return client, experiment_id, loading.result()
