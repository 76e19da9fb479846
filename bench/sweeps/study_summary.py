"""The end of a tuning study, on its MLflow parent run: the best value and params, trial counts, and plots."""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from optuna.trial import TrialState

from bench.sweeps import workers

OBJECTIVE = "val_loss"  # the trials' metric, and the study's settings' "objective" (joining workers compare it)
# What optuna-dashboard calls the objective (its axes, its trials table): the metric with its unit.
OBJECTIVE_LABEL = "val_loss in nats"
# The value told to Optuna, to 0.001 nats: optuna-dashboard's Best Trial card prints it as stored
# (192.6388619140625). Trials closer than that are ties at any noise level a seed shows; the trial's run has it in
# full, and the pruner compares the per-epoch values, which are reported in full.
OBJECTIVE_DECIMALS = 3
# A study user attribute, beside the dashboard's Best Trial card (which shows a bare value): what the value is.
OBJECTIVE_ATTR = "bench.objective"
OBJECTIVE_NOTE = (f"val_loss: -ELBO on the validation split in nats per image, to 0.{'0' * (OBJECTIVE_DECIMALS - 1)}1 "
                  "(each trial's run has it in full); lower is better")


def shown_params(params: dict[str, object]) -> str:
    """Params as printed: floats to 3 significant digits (a learning rate of 0.0012345678 as 0.00123)."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def summarise(client: MlflowClient, study: optuna.Study, parent_id: str, plots: bool) -> None:
    """Best value and params, trial counts and (``plots``) the study's plots, on the parent run."""
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in TrialState}
    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{s.name.lower()}", n, now, 0) for s, n in states.items()
               if s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    tags: list[RunTag] = []
    best = None
    with_value = [t for t in trials if t.state == TrialState.COMPLETE]
    if with_value:
        best = min(with_value, key=lambda t: t.value)
        metrics.append(Metric("best_value", best.value, now, best.number))
        tags += [RunTag("best.trial", str(best.number)),
                 RunTag("best.run_id", str(best.user_attrs.get(workers.RUN_ATTR))),
                 *(RunTag(f"best.{k}", str(v)) for k, v in best.params.items())]
    client.log_batch(parent_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory(prefix="vae-bench-study-") as tmp:
        if best is not None:
            path = Path(tmp) / "best_params.json"
            path.write_text(json.dumps({"trial": best.number, OBJECTIVE: best.value, "params": best.params,
                                        "run_id": best.user_attrs.get(workers.RUN_ATTR)}, indent=2))
            client.log_artifact(parent_id, str(path))
        for path in plot_study(study, Path(tmp)) if plots else []:
            client.log_artifact(parent_id, str(path), "plots")
    if best is not None:
        print(f"study {study.study_name}: best {OBJECTIVE} {best.value:.{OBJECTIVE_DECIMALS}f} (trial "
              f"{best.number}: {shown_params(best.params)})")


def plot_study(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimisation history, parameter importances and intermediate values, as PNG files (those that apply)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "optuna.importance" not in sys.modules and "sklearn" not in sys.modules:
        # optuna.importance imports scikit-learn (about 2 s) for its fANOVA evaluator alone; the default one,
        # PED-ANOVA, needs none. Hide it for this one import, which tolerates its absence.
        sys.modules["sklearn"] = None  # type: ignore[assignment]
        try:
            importlib.import_module("optuna.importance")
        finally:
            del sys.modules["sklearn"]
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {"optimization_history": ovm.plot_optimization_history,
             "intermediate_values": ovm.plot_intermediate_values}
    if len(complete) >= 2:
        plots["param_importances"] = ovm.plot_param_importances
    paths = []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. too few trials, a constant param
            print(f"(no {name} plot: {e})", file=sys.stderr)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
