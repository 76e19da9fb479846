"""MLflow: where the store is, run lifecycle, batched metrics, artifacts, checkpoints, the model.

Uses ``MlflowClient`` calls (not the fluent API's active run) so that logging into a run never changes
its status behind our back.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from torch import nn

from bench.errors import UserError, first_line

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "vae-bench"
SWEEP_TAG = "bench.sweep"  # runs of one grid sweep share this tag's value; reports select by it
FAILURE_TAG = "bench.failure"  # why a run ended FAILED or KILLED (cleared when it is resumed)
MEMBER_TAG = "bench.in_sweep.{}"  # "true" on a run a sweep reused (finished earlier, in another sweep or none)
EPOCHS_TAG = "bench.epochs_target"  # a resumed run's new --epochs (params cannot change); reports prefer it
CHECKPOINT = "checkpoint/checkpoint.pt"
MODEL_NAME = "model"
UI_ADDRESS = "http://127.0.0.1:5000"


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (MLflow's default)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser().resolve()


def _lock_for(uri: str) -> FileLock:
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
        with _lock_for(uri):
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
    with _lock_for(uri):
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


def _param_value(v: Any) -> str:
    return "None" if v is None else str(v)


class MlflowTracker:
    """The harness's Tracker, backed by one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(cls, client: MlflowClient, experiment: str, run_name: str, params: dict[str, Any],
              tags: dict[str, str] | None = None) -> MlflowTracker:
        exp_id = get_or_create_experiment(client, experiment)
        run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
        tracker = cls(client, run.info.run_id)
        client.log_batch(tracker.run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])
        return tracker

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_new_params(self, params: dict[str, Any]) -> None:
        """Log the params the run does not have yet (MLflow params cannot change once logged)."""
        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, _param_value(v)) for k, v in params.items() if k not in have]
        if new:
            self.client.log_batch(self.run_id, params=new)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_dir: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def log_dataset(self, name: str, digest: str, source: str, context: str, sample: Any) -> None:
        """Name the data set in the runs table (its Dataset column) with its digest."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        ds = mlflow.data.from_numpy(sample, source=source, name=name, digest=digest)
        inputs = [DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])]
        # MLflow looks for the experiment's dataset row, then inserts it: two workers meeting a new experiment
        # at once collide on its unique key. The lock orders writers on this machine; a writer on another
        # machine that won the race leaves the row behind, so the second attempt finds it.
        with _lock_for(self.client.tracking_uri):
            try:
                self.client.log_inputs(self.run_id, inputs)
            except MlflowException:
                self.client.log_inputs(self.run_id, inputs)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """The latest checkpoint only: each epoch overwrites the previous one."""
        with tempfile.TemporaryDirectory(prefix="vae-bench-ckpt-") as tmp:
            path = Path(tmp) / Path(CHECKPOINT).name
            torch.save(state, path)
            self.client.log_artifact(self.run_id, str(path), str(Path(CHECKPOINT).parent))

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The run's checkpoint, or None when it has none (a run stopped in its first epoch, a tuning trial).
        One that is there but cannot be fetched or read is a UserError: resuming must not start afresh."""
        try:
            listed = {f.path for f in self.client.list_artifacts(self.run_id, str(Path(CHECKPOINT).parent))}
            if CHECKPOINT not in listed:
                return None
            with tempfile.TemporaryDirectory(prefix="vae-bench-ckpt-") as tmp:
                local = self.client.download_artifacts(self.run_id, CHECKPOINT, tmp)
                return torch.load(local, map_location="cpu", weights_only=True)
        except Exception as e:  # MLflow, the file system, or torch.load on a truncated or foreign file
            raise UserError(f"the checkpoint of run {self.run_id} cannot be read ({first_line(e)})") from None

    def log_model(self, model: nn.Module) -> None:
        """mlflow.pytorch.log_model, pickled so that encode/decode survive (the pt2 format keeps forward
        only), with the variants package as code so the model loads without vae-bench installed."""
        import mlflow
        import mlflow.pytorch

        import variants

        status = self.client.get_run(self.run_id).info.status
        with fluent_tracking_uri(self.client.tracking_uri), mlflow.start_run(run_id=self.run_id):
            mlflow.pytorch.log_model(
                copy.deepcopy(model).cpu(), name=MODEL_NAME, serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                code_paths=[str(Path(variants.__file__).parent)])
        self.client.update_run(self.run_id, status=status)  # start_run's exit marked it FINISHED

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def mark_running(self) -> None:
        """Running again (a resumed run): the reason it stopped last time no longer describes it."""
        if FAILURE_TAG in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, FAILURE_TAG)
        self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
