"""Tuning (python -m bench.tune): tune one variant at one latent size with Optuna, every trial a tracked MLflow run.

    python -m bench.tune --variant sgvb_b --latent 20 --trials 30 --epochs 10
    # more workers on the same study, in other shells or on other machines:
    python -m bench.tune --variant sgvb_b --latent 20 --trials 30 --epochs 10 --storage study.journal

TPE sampling over the search space in variants/search_space.py, median pruning on the per-epoch validation
loss (``--validation`` images held out from the end of the training set; the test set is never used to
choose). One MLflow parent run per study, found again by the study's name, and one nested child run per trial.
Storage: an Optuna RDB URL (sqlite:///..., postgresql://...) or a path ending in .journal; by default
optuna.db beside the MLflow SQLite store. ``--trials`` counts per worker. See docs/scaling.md for many machines.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from optuna.trial import TrialState

from bench.core.config import TrainConfig
from bench.core.data import NAME as DATA_NAME
from bench.core.devices import resolve_device
from bench.core.interrupts import graceful_interrupts
from bench.core.splits import split_validation
from bench.errors import NonFiniteLoss
from bench.sweeps import storage as stg
from bench.sweeps import studies, workers
from bench.sweeps.process import open_store_and_data, quiet_optuna, stopwatch
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import FAILURE_TAG, PRUNED_TAG
from bench.tracking.store import redact, resolve_tracking_uri, ui_address
from bench.training.identity import run_name, run_params, run_tags
from bench.training.loop import train
from variants import search_space
from variants.registry import REGISTRY, Variant

PROG = "python -m bench.tune"
OBJECTIVE = "val_loss"


def process_seconds() -> float:
    """Wall seconds since this process started (interpreter start-up and imports included)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def default_study_name(variant: str, cfg: TrainConfig) -> str:
    limit = f"-n{cfg.limit_train}" if cfg.limit_train else ""
    return f"tune-{variant}-z{cfg.latent}-e{cfg.epochs}{limit}"


def study_settings(variant: Variant, cfg: TrainConfig, digest: str) -> dict[str, Any]:
    """What every worker of a study must share for its trials to compare: the fixed axes and settings (not
    the tuned ones, nor the device)."""
    tuned = {d.name for d in search_space.dimensions(variant)} | {"device"}
    fixed = {k: v for k, v in {**variant.axes(), **cfg.params()}.items() if k not in tuned}
    return {"kind": "tune", "objective": OBJECTIVE, **fixed, "data_digest": digest}


class TrialTracker:
    """The harness's tracker for one trial: metrics and images to the trial's MLflow run, the validation loss
    to Optuna; raises TrialPruned when the median pruner says so. No checkpoints: trials are not resumed."""

    def __init__(self, run: MlflowTracker, trial: optuna.Trial, epochs: int, times: dict[str, float]) -> None:
        self.run = run
        self.trial = trial
        self.epochs = epochs
        self.epoch = 0  # the last epoch logged
        self.times = times  # "tracking": seconds spent here, inside the training loop

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with stopwatch(self.times, "tracking"):
            self.run.log_metrics(metrics, step)
            self.epoch = step
            value = metrics[OBJECTIVE]
            if not math.isfinite(value):
                raise NonFiniteLoss(f"{OBJECTIVE} is {value} at epoch {step}")
            self.trial.report(value, step)
            # The last epoch is the trial's result: pruning it would only throw a finished trial away.
            prune = step < self.epochs and self.trial.should_prune()
        if prune:
            raise optuna.TrialPruned(f"pruned at epoch {step} ({OBJECTIVE} {value:.2f} worse than the median)")

    def log_artifact(self, path: Path, artifact_dir: str) -> None:
        with stopwatch(self.times, "tracking"):
            self.run.log_artifact(path, artifact_dir)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def log_model(self, model: Any) -> None:
        pass


@dataclasses.dataclass
class Worker:
    """One bench.tune process: its study, its MLflow parent run, and the objective it runs trials with."""

    client: MlflowClient
    experiment_id: str
    experiment: str
    study: optuna.Study
    parent_id: str
    variant: Variant
    cfg: TrainConfig
    data: Any
    on_stale: Any  # what to do with a trial whose worker died (bench.study.stale_trial_callback)
    times: dict[str, float] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def objective(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(workers.WORKER_ATTR, workers.WORKER)
        variant, overrides = search_space.suggest(trial, self.variant)
        cfg = dataclasses.replace(self.cfg, **overrides)
        tags = {**run_tags(variant), **studies.trial_run_tags(self.study, trial.number, self.parent_id)}
        run = MlflowTracker.start(self.client, self.experiment, f"{run_name(variant, cfg)}-t{trial.number}",
                                  run_params(variant, cfg, self.data.digest), tags=tags)
        trial.set_user_attr(workers.RUN_ATTR, run.run_id)
        run.log_dataset(DATA_NAME, self.data.digest, self.data.source, "train", self.data.test_x[:1].numpy())
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        prefix = f"trial {trial.number}"
        tracker = TrialTracker(run, trial, cfg.epochs, self.times)
        t0 = time.perf_counter()
        try:
            with stopwatch(self.times, "train"):
                result = train(variant, cfg, self.data, tracker,
                               log=lambda line: print(f"{prefix} {line}", flush=True))
        except optuna.TrialPruned as e:
            run.set_tags({PRUNED_TAG: str(tracker.epoch), FAILURE_TAG: str(e)})
            run.finish("KILLED")
            self._count("pruned")
            print(f"{prefix}: {e} [{chosen}] ({time.perf_counter() - t0:.1f} s)", flush=True)
            raise
        except NonFiniteLoss as e:
            run.set_tags({FAILURE_TAG: str(e)})
            run.finish("FAILED")
            trial.set_user_attr("failure", str(e))
            self._count("failed")
            print(f"{prefix}: failed: {e} [{chosen}]", flush=True)
            return float("nan")  # Optuna marks the trial FAIL; the study goes on
        except KeyboardInterrupt as e:
            run.set_tags({FAILURE_TAG: f"interrupted ({e or 'SIGINT'})"})
            run.finish("KILLED")
            raise
        except BaseException as e:
            run.set_tags({FAILURE_TAG: f"{type(e).__name__}: {e}"})
            run.finish("FAILED")
            raise
        value = result.history[-1][OBJECTIVE]
        run.finish("FINISHED")
        self._count("complete")
        print(f"{prefix}: {OBJECTIVE} {value:.3f} [{chosen}] ({time.perf_counter() - t0:.1f} s)", flush=True)
        return value

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """The parent's best_value after each trial (a curve in the parent's metrics); trials of dead workers
        on this machine are failed and queued again (journal storages have no heartbeat to do it)."""
        workers.fail_dead_trials(study, self.on_stale)
        if trial.state != TrialState.COMPLETE:
            return
        try:
            best = study.best_value
        except ValueError:
            return
        self.client.log_batch(self.parent_id, metrics=[Metric("best_value", best, int(time.time() * 1000),
                                                              trial.number)])

    def summarise(self, plots: bool) -> None:
        """Best value and params, trial counts and (``plots``) the study's plots, on the parent run."""
        trials = self.study.get_trials(deepcopy=False)
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
        self.client.log_batch(self.parent_id, metrics=metrics, tags=tags)
        with tempfile.TemporaryDirectory(prefix="vae-bench-study-") as tmp:
            if best is not None:
                path = Path(tmp) / "best_params.json"
                path.write_text(json.dumps({"trial": best.number, OBJECTIVE: best.value, "params": best.params,
                                            "run_id": best.user_attrs.get(workers.RUN_ATTR)}, indent=2))
                self.client.log_artifact(self.parent_id, str(path))
            for path in plot_study(self.study, Path(tmp)) if plots else []:
                self.client.log_artifact(self.parent_id, str(path), "plots")
        if best is not None:
            print(f"study {self.study.study_name}: best {OBJECTIVE} {best.value:.3f} (trial {best.number}: "
                  f"{best.params})")


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


def tune(args: argparse.Namespace) -> int:
    """What ``python -m bench.tune`` does with its arguments: run this worker's trials of the study."""
    variant = REGISTRY[args.variant]
    cfg = TrainConfig(latent=args.latent, epochs=args.epochs, seed=args.seed, device=resolve_device(args.device),
                      precision=args.precision, binarize=args.binarize, limit_train=args.limit_train,
                      validation=args.validation)
    name = studies.check_name(args.study_name or default_study_name(variant.name, cfg))
    if args.storage:
        stg.check_storage_spec(args.storage, resolve_tracking_uri(args.tracking_uri))
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a server's "View run" per run
    quiet_optuna()
    client, experiment_id, data = open_store_and_data(args.tracking_uri, args.experiment, args.data_dir)
    split_validation(data, cfg)  # a validation split that leaves no training images is a user error, now
    on_stale = workers.stale_trial_callback(client)
    spec = args.storage or stg.default_storage(client.tracking_uri)
    storage = stg.open_storage(spec, args.heartbeat, on_stale)
    sampler = optuna.samplers.TPESampler()  # unseeded: workers must not all propose the same points
    pruner = optuna.pruners.MedianPruner(n_startup_trials=args.prune_after)
    study, created = stg.create_or_load(name, storage, sampler, pruner)
    settings = study_settings(variant, cfg, data.digest)
    studies.agree_settings(study, settings, created, "give the same settings or another --study-name")
    parent_params = {**settings, "storage": redact(spec), "sampler": "TPESampler",
                     "pruner": f"MedianPruner(n_startup_trials={args.prune_after})", "direction": "minimize",
                     "search_space": "; ".join(d.describe() for d in search_space.dimensions(variant))}
    parent_id = studies.parent_run(client, experiment_id, study, created, parent_params,
                              f"Optuna study {name}: {REGISTRY[variant.name].description}")
    print(f"study {name} ({'created' if created else 'joined'}) on {redact(spec)}; parent run {parent_id} "
          f"at {ui_address(client, experiment_id, parent_id)}", flush=True)
    worker = Worker(client, experiment_id, args.experiment, study, parent_id, variant, cfg, data, on_stale)
    workers.clean_up(client, experiment_id, study, on_stale)
    status = 0
    try:
        if args.trials:
            with graceful_interrupts():
                study.optimize(worker.objective, n_trials=args.trials, timeout=args.timeout,
                               callbacks=[worker.after_trial])
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; the running trial's run is KILLED", file=sys.stderr)
        status = 130
    finally:
        workers.clean_up(client, experiment_id, study, on_stale)
        # The worker that leaves no trial running or waiting ends the study: it draws the plots (a few seconds,
        # once per study) and ends the parent run. Others only update the best value and counts.
        last = studies.study_done(study)
        worker.summarise(plots=last and args.trials > 0)
        if last:
            client.set_terminated(parent_id, "FINISHED")
        stg.close_storage(storage)
    # Time outside the training loop (start-up, Optuna, MLflow, plots) as a share of this worker's wall time;
    # MLflow and Optuna calls from inside the loop (metrics, images, pruning) are shown apart.
    wall, training = process_seconds(), worker.times.get("train", 0.0)
    counts = ", ".join(f"{n} {k}" for k, n in worker.counts.items()) or "no trials"
    print(f"worker {workers.WORKER}: {counts} in {wall:.1f} s, {training:.1f} s of it in the training loop "
          f"(tracking calls {worker.times.get('tracking', 0.0):.1f} s of those); outside it {wall - training:.1f} s "
          f"({100 * (1 - training / wall):.1f}%)")
    return status
