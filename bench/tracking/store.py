"""The MLflow store: which one (URI resolution), opening it safely (reachability, one-time schema creation under
a lock), its experiments, and the UI address of a run."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from bench.errors import UserError, first_line
from bench.tracking.names import DEFAULT_TRACKING_URI

UI_ADDRESS = "http://127.0.0.1:5000"


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (MLflow's default)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser().resolve()


def lock_for(uri: str) -> FileLock:
    db = sqlite_path(uri)
    if db is not None:
        return FileLock(str(db) + ".lock")
    key = hashlib.md5(uri.encode()).hexdigest()[:12]
    return FileLock(str(Path(tempfile.gettempdir()) / f"vae-bench-{key}.lock"))


def check_server(uri: str, timeout: float = 5.0) -> None:
    """An http(s) tracking URI must answer 2xx on /health (a proxy may answer 404 for anything)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if 200 <= response.status < 300:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = str(getattr(e, "reason", e))
    raise UserError(f"tracking server {uri} is not reachable ({reason}); start it, or use a sqlite:/// URI")


def check_database(uri: str, timeout: int = 10) -> None:
    """One quick connection to a database URI's server: MLflow retries a failing one for ~100 s and then
    raises a traceback. A missing driver module raises ModuleNotFoundError, as MLflow would."""
    scheme = uri.split(":", 1)[0].split("+")[0]
    if scheme not in ("postgresql", "mysql", "mssql"):
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    connect_args = {"connect_timeout": timeout} if scheme in ("postgresql", "mysql") else {"timeout": timeout}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=NullPool)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise UserError(f"tracking URI {redact(uri)} is malformed ({e})") from None
    try:
        engine.connect().close()
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UserError(f"tracking database {redact(uri)} cannot be reached ({reason}); start it, or use a "
                        "sqlite:/// URI") from None
    finally:
        engine.dispose()


def redact(uri: str) -> str:
    """The URI without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", uri)


def open_store(uri: str | None, existing: bool = False) -> MlflowClient:
    """A client for the store, created once under a file lock (MLflow 3.17 crashes when two processes
    migrate a new SQLite store at once). Unreachable stores are user errors; so is a SQLite store that is not
    there when ``existing`` (commands that only read or add to runs must not leave an empty store behind)."""
    uri = resolve_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        return MlflowClient(uri)
    if uri.startswith("file:") or "://" not in uri:
        raise UserError(f"tracking URI {uri!r} is a file store, which MLflow 3 no longer accepts by default; "
                        "use sqlite:///PATH.db, postgresql://... or http://HOST:PORT")
    db = sqlite_path(uri)
    if db is not None and not db.parent.is_dir():
        raise UserError(f"folder {db.parent} for the tracking database does not exist")
    if existing and db is not None and not db.exists():
        raise UserError(f"there is no tracking store at {db}; give --tracking-uri the store of your runs")
    try:
        check_database(uri)
        with lock_for(uri):
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # creates and migrates the schema
    except MlflowException as e:
        raise UserError(f"tracking store {redact(uri)} cannot be opened: {first_line(e)}") from None
    except ModuleNotFoundError as e:  # e.g. postgresql:// wants psycopg 3; postgresql+psycopg2:// wants psycopg2
        raise UserError(f"tracking store {redact(uri)} needs the Python module {e.name!r}; install it, or name the "
                        "driver in the URI (postgresql+psycopg2://...)") from None
    return client


def artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store live beside the database, not in the working directory."""
    db = sqlite_path(uri)
    if db is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("_") or "experiment"
    return (db.parent / "mlruns" / slug).as_uri()


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    uri = client.tracking_uri
    with lock_for(uri):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(
                name, artifact_location=artifact_root(uri, name),
                tags={"mlflow.experimentKind": "custom_model_development"})
        except MlflowException:  # created meanwhile by a process on another machine
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
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


def ui_address(client: MlflowClient, experiment_id: str, run_id: str) -> str:
    uri = client.tracking_uri
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
