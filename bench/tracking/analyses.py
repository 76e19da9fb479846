"""Analyses of a trained model in runs of their own, nested under the training run.

MLflow 3.17's run page lists every slash-named metric section (``gradvar/...``, ``snr/...``, ``gap/...``) before
the unprefixed one, so a training run that held its diagnostics would open on them rather than on its loss curves.
Each analysis (gradient variance, an SNR study, the likelihood gaps, ...) therefore lives in one child run per
training run and analysis, named ``<run name> · <analysis>``, carrying the parent's params and filterable tags, so
``params.latent = '20' and tags.`bench.analysis` = 'gradient variance'`` finds them in the runs table.

The training run keeps its per-epoch curves and its final numbers (test_nll, active_units, ...). Whoever logs into
an analysis run holds the training run's lease (bench.tracking.ownership), so two processes never make the same
analysis run twice.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Param, RunStatus, RunTag

from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import ANALYSIS_OF_TAG, ANALYSIS_TAG, MEMBER_TAG, NOTE_TAG, OWNER_TAG, PARENT_TAG

NAME_SEPARATOR = " · "
# The training run's tags an analysis run does not inherit: MLflow's bookkeeping of the parent itself (name, parent
# link, model history, description), its owner claims, its failure reason and its per-step evaluation settings.
_NOT_INHERITED = ("mlflow.runName", "mlflow.parentRunId", "mlflow.log-model.history", "mlflow.note.content",
                  "bench.failure", "bench.epochs_target")


def _inherits(key: str) -> bool:
    # Sweep memberships stay with the training run: a sweep's filter (names.sweep_filter) lists its runs only.
    if key in _NOT_INHERITED or key.startswith((OWNER_TAG.format(""), MEMBER_TAG.format(""))):
        return False
    prefix, _, step = key.rpartition(".step")
    return not (prefix.startswith("bench.") and step.isdigit())  # SETTING_TAG: bench.<setting>.step<N>


def analysis_run_name(parent_name: str, analysis: str) -> str:
    return f"{parent_name}{NAME_SEPARATOR}{analysis}"


def find_analysis_run(client: MlflowClient, parent_run_id: str, analysis: str) -> str | None:
    """The id of the training run's analysis run of that kind, or None (the oldest, should there be several)."""
    parent = client.get_run(parent_run_id)
    found = client.search_runs([parent.info.experiment_id],
                               filter_string=f"tags.`{ANALYSIS_OF_TAG}` = '{parent_run_id}' and "
                                             f"tags.`{ANALYSIS_TAG}` = '{analysis}'",
                               order_by=["attributes.start_time ASC"], max_results=1)
    return found[0].info.run_id if found else None


def analysis_run(client: MlflowClient, parent_run_id: str, analysis: str) -> MlflowTracker:
    """The tracker of ``analysis``'s run under the training run ``parent_run_id``: made on first use (with the
    parent's params and tags, marked RUNNING), reused, and marked RUNNING again, afterwards. End it with
    ``tracker.finish()`` (or ``finish("KILLED")``): its status is the analysis's own, the parent's stays as it was."""
    existing = find_analysis_run(client, parent_run_id, analysis)
    if existing is not None:
        client.update_run(existing, status=RunStatus.to_string(RunStatus.RUNNING))
        return MlflowTracker(client, existing)
    parent = client.get_run(parent_run_id)
    name = analysis_run_name(parent.info.run_name or parent_run_id, analysis)
    tags = {k: v for k, v in parent.data.tags.items() if _inherits(k)}
    tags.update({PARENT_TAG: parent_run_id, ANALYSIS_OF_TAG: parent_run_id, ANALYSIS_TAG: analysis})
    run = client.create_run(parent.info.experiment_id, run_name=name, tags=tags)
    params = [Param(k, v) for k, v in sorted(parent.data.params.items())]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    client.log_batch(run.info.run_id, tags=[RunTag(NOTE_TAG,
                                                   f"{analysis} of run {parent_run_id} ({parent.info.run_name})")])
    return MlflowTracker(client, run.info.run_id)
