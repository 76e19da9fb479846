"""The MLflow store: which one (URI resolution), opening it safely (reachability, a sound SQLite file, one-time
schema creation under a lock), its experiments (with artifacts the store's folder carries along when moved or
copied, see bench.tracking.artifacts), and how to browse a run in the MLflow UI."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from bench.errors import UserError, first_line
from bench.tracking import artifacts
from bench.tracking.artifacts import ARTIFACTS_DIR, slug, sqlite_path  # noqa: F401  (slug: re-exported)
from bench.tracking.locks import StoreLock
from bench.tracking.names import EXPERIMENT_NOTES, NOTE_TAG, OTHER_EXPERIMENT_NOTE
from bench.tracking.precheck import (  # noqa: F401  (check_server, redact: re-exported)
    check_database,
    check_form,
    check_server,
    redact,
    resolve_tracking_uri,
)
from bench.tracking.sqlite_checks import check_sqlite, locked_store

UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
CLASSIC_VIEW = "workflowType=machine_learning"  # MLflow 3.17 opens runs in its GenAI view without it

__all__ = ["sqlite_path", "ARTIFACTS_DIR"]

artifacts.register()  # store-relative artifact URIs, resolved in the store's folder (bench.tracking.artifacts)


def lock_for(uri: str) -> StoreLock:
    """The store's lock between processes on this machine, taken with a timeout (bench.tracking.locks)."""
    db = sqlite_path(uri)
    if db is not None:
        return StoreLock(str(db) + ".lock")
    key = hashlib.md5(uri.encode()).hexdigest()[:12]
    return StoreLock(str(Path(tempfile.gettempdir()) / f"vae-bench-{key}.lock"))


def open_store(uri: str | None, existing: bool = False, read_only: bool = False) -> MlflowClient:
    """A client for the store, created once under a file lock (MLflow 3.17 crashes when two processes
    migrate a new SQLite store at once). Unreachable, malformed, damaged or unwritable stores are user errors; so
    is a SQLite store that is not there when ``existing`` (commands that only read or add to runs must not leave an
    empty store behind). ``read_only``: the command only reads (a report), so a read-only store is fine."""
    uri = resolve_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        return MlflowClient(uri)
    check_form(uri)
    db = check_sqlite(uri, existing=existing, read_only=read_only)
    try:
        check_database(uri)
        with nullcontext() if read_only else lock_for(uri):  # no lock file can be made in a read-only folder
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # creates and migrates the schema
    except MlflowException as e:
        raise UserError(locked_store(e) or f"tracking store {redact(uri)} cannot be opened: {first_line(e)}") from None
    except ModuleNotFoundError as e:  # e.g. postgresql:// wants psycopg 3; postgresql+psycopg2:// wants psycopg2
        raise UserError(f"tracking store {redact(uri)} needs the Python module {e.name!r}; install it, or name the "
                        "driver in the URI (postgresql+psycopg2://...)") from None
    except Exception as e:  # SQLAlchemy or sqlite3 on a file that passed the quick check but still fails
        if db is None:
            raise
        raise UserError(locked_store(e) or f"tracking store {db} cannot be opened ({first_line(e)})") from None
    return client


def artifact_root(uri: str, experiment: str) -> str | None:
    """A SQLite store's experiments keep their artifacts in the store's folder, addressed relative to it
    (``mlflow-artifacts:/SLUG``, resolved at open by bench.tracking.artifacts), not in the working directory.
    Other stores: the server's or MLflow's choice."""
    return None if sqlite_path(uri) is None else f"{artifacts.SCHEME}:/{slug(experiment)}"


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, created (with its artifact root, UI kind and description) if new. A name MLflow would
    refuse is a UserError, raised before any run is made."""
    uri = client.tracking_uri
    if not name.strip():
        raise UserError("--experiment must not be empty")
    with lock_for(uri):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(
                name, artifact_location=artifact_root(uri, name),
                tags={"mlflow.experimentKind": "custom_model_development",
                      NOTE_TAG: EXPERIMENT_NOTES.get(name, OTHER_EXPERIMENT_NOTE)})
        except MlflowException as e:  # a bad name, or created meanwhile by a process on another machine
            if locked := locked_store(e):
                raise UserError(locked) from None
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise UserError(f"experiment name {name[:40]!r}{'...' if len(name) > 40 else ''} cannot be used "
                                f"({first_line(e)})") from None
            return exp.experiment_id


@contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (start_run, log_model, runs:/ URIs) at ``uri`` for this block only.

    mlflow.set_tracking_uri would stay set and also export MLFLOW_TRACKING_URI, so later runs of this
    process and its children without --tracking-uri would silently go to this store.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    env = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def ui_address(client: MlflowClient | str, experiment_id: str, run_id: str | None = None) -> str:
    """The run's page (or the experiment's runs table) in MLflow's classic "Model training" view."""
    uri = client if isinstance(client, str) else client.tracking_uri
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base}/#/experiments/{experiment_id}/{page}?{CLASSIC_VIEW}"


def browse_hint(client: MlflowClient | str, experiment_id: str, run_id: str | None = None) -> str:
    """How to see a run (or an experiment's runs) in the MLflow UI: "browse it ... at ADDRESS". A tracking server
    is its own UI; a SQLite store is served by `mlflow ui` with the store's artifacts folder (bare `mlflow ui` when
    started in the store's folder); another database by `mlflow ui --backend-store-uri`."""
    uri = client if isinstance(client, str) else client.tracking_uri
    address = ui_address(uri, experiment_id, run_id)
    if uri.startswith(("http://", "https://")):
        return f"browse it at {address}"
    db = sqlite_path(uri)
    if db is None:
        command = f"mlflow ui --backend-store-uri {redact(uri)}"
    elif db == Path.cwd().resolve() / "mlflow.db":
        command = "mlflow ui"
    else:
        command = f"mlflow ui --backend-store-uri sqlite:///{db} --artifacts-destination {db.parent / ARTIFACTS_DIR}"
    return f"browse it with `{command}` at {address}"
