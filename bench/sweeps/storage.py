"""Optuna storages: a journal file (workers on one machine) or an RDB (SQLite, PostgreSQL), opened safely by
many processes at once, and the studies in them."""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

from bench.errors import UserError
from bench.sweeps.journal_lock import OwnedSymlinkLock
from bench.tracking.locks import StoreLock
from bench.tracking.store import lock_for, redact, sqlite_path

_TRANSIENT = ("locked", "already exists", "duplicate key", "deadlock", "could not serialize")


TUNE_STORAGE = "optuna.db"  # bench.tune's studies: what optuna-dashboard is for
GRID_STORAGE = "grid-queue.db"  # bench.grid's bookkeeping studies, apart: see grid_storage


def default_storage(tracking_uri: str, file: str = TUNE_STORAGE) -> str:
    """``file`` (optuna.db) beside a SQLite MLflow store (one folder holds both), else in the working directory."""
    db = sqlite_path(tracking_uri)
    folder = db.parent if db is not None else Path.cwd()
    return f"sqlite:///{folder / file}"


def _holds_study(url: str, name: str) -> bool:
    """Whether the SQLite storage at ``url`` exists and has a study of that name (read-only: no schema made)."""
    import sqlite3

    path = sqlite_path(url)
    if path is None or not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            return db.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
    except sqlite3.Error:
        return False


def grid_storage(tracking_uri: str, study: str) -> str:
    """The grid's default storage: grid-queue.db beside the MLflow store, not optuna.db with the tuning studies.

    optuna-dashboard 0.21 lists every study of the storage it is given and draws a "Best Trial" card for any study
    with a COMPLETE trial (for the queue, the fastest run: a best that means nothing). Optuna has no attribute that
    hides a study or that card, and a finished cell is COMPLETE, so the queue lives apart from what one browses.
    A sweep whose study was made in optuna.db (before) stays there, so that its calls keep one queue and parent."""
    new, old = default_storage(tracking_uri, GRID_STORAGE), default_storage(tracking_uri, TUNE_STORAGE)
    return old if not _holds_study(new, study) and _holds_study(old, study) else new


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


def open_storage(spec: str) -> BaseStorage:
    """An Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or a path ending in .journal.

    Without Optuna's heartbeat: workers hold their trials by leases of their own (bench.sweeps.workers), the
    same on every kind of storage.
    """
    import sqlalchemy.exc

    check_storage_spec(spec)
    if "://" not in spec:
        path = Path(spec).expanduser().resolve()
        if not path.parent.is_dir():
            raise UserError(f"folder {path.parent} for the journal storage does not exist")
        try:
            return JournalStorage(JournalFileBackend(str(path), lock_obj=OwnedSymlinkLock(str(path))))
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
            with lock:
                storage = RDBStorage(spec, engine_kwargs={"connect_args": connect} if connect else None)
                if db is not None:
                    _commit_without_fsync(storage)
                return storage
        except (ImportError, sqlalchemy.exc.ArgumentError) as e:
            raise UserError(f"storage {redact(spec)} is not a usable RDB URL: {str(e).splitlines()[0]}") from None
        except (sqlalchemy.exc.SQLAlchemyError, RuntimeError) as e:
            if not (isinstance(e, sqlalchemy.exc.SQLAlchemyError) and _is_transient(e)) or attempt == 5:
                first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
                raise UserError(f"storage {redact(spec)} cannot be opened: {first}") from None
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


def storage_lock(spec: str) -> StoreLock:
    """A lock for short critical sections of the processes on this machine that share ``spec``."""
    db = sqlite_path(spec)
    if db is not None:
        return StoreLock(str(db) + ".lock")
    if "://" not in spec:
        return StoreLock(str(Path(spec).expanduser().resolve()) + ".bench.lock")
    return lock_for(spec)


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
