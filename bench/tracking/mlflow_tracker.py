"""The harness's Tracker backed by one MLflow run: params, batched metrics, artifacts, the checkpoint, the model.

Uses ``MlflowClient`` calls (not the fluent API's active run) so that logging into a run never changes
its status behind our back.
"""

from __future__ import annotations

import copy
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from bench.errors import UserError, first_line
from bench.tracking.names import CHECKPOINT, FAILURE_TAG, MODEL_EPOCH_TAG, MODEL_NAME, SETTING_TAG
from bench.tracking.provenance import provenance_tags
from bench.tracking.store import fluent_tracking_uri, get_or_create_experiment, lock_for

if TYPE_CHECKING:  # torch loads where a checkpoint or a model is written: bench.run makes its run before it loads
    from mlflow.store.artifact.artifact_repo import ArtifactRepository
    from torch import nn


def param_value(v: Any) -> str:
    """A value as MLflow stores a param (None as 'None'): what runs are logged and matched with."""
    return "None" if v is None else str(v)


_REQUIREMENTS_LOCK = threading.Lock()


@contextmanager
def requirements_as_given() -> Iterator[None]:
    """Skip MLflow's check of a model's pip requirements against the installed packages for this block.

    The check first maps every installed distribution's files (importlib_metadata.packages_distributions):
    1.5 s of a 2-core machine's CPU in each process that logs a model, a quarter of a small run's wall time. Our
    one requirement is torch's own installed version, so the check cannot find a mismatch. An MLflow without that
    function is left alone."""
    from mlflow.utils import environment

    with _REQUIREMENTS_LOCK:  # the swap is process-wide: one model logged at a time
        check = getattr(environment, "warn_dependency_requirement_mismatches", None)
        if check is None:
            yield
            return
        environment.warn_dependency_requirement_mismatches = lambda requirements: None
        try:
            yield
        finally:
            environment.warn_dependency_requirement_mismatches = check


class MlflowTracker:
    """The harness's Tracker, backed by one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.analyses: dict[str, MlflowTracker] = {}  # analysis runs this process has logged into, by analysis
        self._artifact_repo: ArtifactRepository | None = None

    @classmethod
    def start(cls, client: MlflowClient, experiment: str, run_name: str, params: dict[str, Any],
              tags: dict[str, str] | None = None) -> MlflowTracker:
        """A new run with its params, the given tags, and where its code came from (provenance_tags)."""
        exp_id = get_or_create_experiment(client, experiment)
        run = client.create_run(exp_id, run_name=run_name, tags={**provenance_tags(), **(tags or {})})
        tracker = cls(client, run.info.run_id)
        client.log_batch(tracker.run_id, params=[Param(k, param_value(v)) for k, v in params.items()])
        return tracker

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_analysis_metrics(self, analysis: str, metrics: dict[str, float], step: int) -> None:
        """Metrics of ``analysis`` (an SNR measured during training) into its run nested under this one
        (bench.tracking.analyses): made on first use, found again by a resumed run, ended with this run."""
        if analysis not in self.analyses:
            from bench.tracking.analyses import analysis_run  # it builds on this class

            self.analyses[analysis] = analysis_run(self.client, self.run_id, analysis)
        self.analyses[analysis].log_metrics(metrics, step)

    def log_new_params(self, params: dict[str, Any]) -> None:
        """Log the params the run does not have yet (MLflow params cannot change once logged)."""
        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, param_value(v)) for k, v in params.items() if k not in have]
        if new:
            self.client.log_batch(self.run_id, params=new)

    def log_settings(self, settings: dict[str, Any], step: int) -> None:
        """Settings of an evaluation logged at ``step`` (an NLL's K, a variance's repeats): params for the first
        time (immutable, so the first value stays), and a tag per setting and step that lists each value used at
        that step, in the order its metrics were logged, so any metric value can be traced to its setting."""
        self.log_new_params(settings)
        have = self.client.get_run(self.run_id).data.tags
        tags = {}
        for name, value in settings.items():
            key = SETTING_TAG.format(name, step)
            tags[key] = f"{have[key]},{param_value(value)}" if key in have else param_value(value)
        self.set_tags(tags)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def artifact_repo(self) -> ArtifactRepository:
        """This run's artifact repository, resolved once per tracker. MlflowClient.log_artifact resolves it on
        every call with a get_run (bench.tracking.artifacts turns MLflow's process-wide cache off, as it is keyed
        by run id alone and would confuse a copied store): three lookups an epoch, about 11 of the 35 ms an
        epoch's tracking took (benchmarks/tracking_cost.py). A tracker belongs to one store, so keeping the
        repository here is safe where the global cache was not."""
        if self._artifact_repo is None:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            uri = self.client.get_run(self.run_id).info.artifact_uri
            self._artifact_repo = get_artifact_repository(uri, tracking_uri=self.client.tracking_uri)
        return self._artifact_repo

    def log_artifact(self, path: Path, artifact_dir: str) -> None:
        self.artifact_repo().log_artifact(str(path), artifact_dir)

    def log_dataset(self, name: str, digest: str, source: str, context: str, sample: Any) -> None:
        """Name the data set in the runs table (its Dataset column) with its digest."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        ds = mlflow.data.from_numpy(sample, source=source, name=name, digest=digest)
        inputs = [DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])]
        # MLflow looks for the experiment's dataset row, then inserts it: two workers meeting a new experiment
        # at once collide on its unique key. The lock orders writers on this machine; a writer on another
        # machine that won the race leaves the row behind, so the second attempt finds it.
        with lock_for(self.client.tracking_uri):
            try:
                self.client.log_inputs(self.run_id, inputs)
            except MlflowException:
                self.client.log_inputs(self.run_id, inputs)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """The latest checkpoint only: each epoch overwrites the previous one."""
        with tempfile.TemporaryDirectory(prefix="vae-bench-ckpt-") as tmp:
            import torch

            path = Path(tmp) / Path(CHECKPOINT).name
            torch.save(state, path)
            self.artifact_repo().log_artifact(str(path), str(Path(CHECKPOINT).parent))

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The run's checkpoint, or None when it has none (a run stopped in its first epoch, a tuning trial).
        One that is there but cannot be fetched or read is a UserError: resuming must not start afresh."""
        import torch

        try:
            listed = {f.path for f in self.client.list_artifacts(self.run_id, str(Path(CHECKPOINT).parent))}
            if CHECKPOINT not in listed:
                return None
            with tempfile.TemporaryDirectory(prefix="vae-bench-ckpt-") as tmp:
                local = self.client.download_artifacts(self.run_id, CHECKPOINT, tmp)
                return torch.load(local, map_location="cpu", weights_only=True)
        except Exception as e:  # MLflow, the file system, or torch.load on a truncated or foreign file
            raise UserError(f"the checkpoint of run {self.run_id} cannot be read ({first_line(e)})") from None

    def log_model(self, model: nn.Module, epoch: int | None = None) -> None:
        """mlflow.pytorch.log_model, pickled so that encode/decode survive (the pt2 format keeps forward
        only), with the variants package as code so the model loads without vae-bench installed. The model is
        tagged with its ``epoch``, and replaces any model the run had (a resumed run holds one model)."""
        import mlflow
        import mlflow.pytorch
        import torch

        import variants

        status = self.client.get_run(self.run_id).info.status
        tags = {} if epoch is None else {MODEL_EPOCH_TAG: str(epoch)}
        with (fluent_tracking_uri(self.client.tracking_uri), mlflow.start_run(run_id=self.run_id),
              requirements_as_given()):
            info = mlflow.pytorch.log_model(
                copy.deepcopy(model).cpu(), name=MODEL_NAME, serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                code_paths=[str(Path(variants.__file__).parent)], tags=tags, step=epoch or 0)
        self.client.update_run(self.run_id, status=status)  # start_run's exit marked it FINISHED
        for old in self.logged_models():
            if old.model_id != info.model_id:
                self.client.delete_logged_model(old.model_id)

    def logged_models(self) -> list[Any]:
        """The run's logged models (not deleted), newest first."""
        exp = self.experiment_id
        found = self.client.search_logged_models([exp], filter_string=f"source_run_id = '{self.run_id}'",
                                                 order_by=[{"field_name": "creation_timestamp", "ascending": False}])
        return [m for m in found if m.name == MODEL_NAME]

    def finish(self, status: str = "FINISHED") -> None:
        """End the run, and the analysis runs it logged into here with the same status (they are its epochs')."""
        self.client.set_terminated(self.run_id, status=status)
        for analysis in self.analyses.values():
            analysis.finish(status)

    def mark_running(self) -> None:
        """Running again (a resumed run): the reason it stopped last time no longer describes it."""
        if FAILURE_TAG in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, FAILURE_TAG)
        self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
