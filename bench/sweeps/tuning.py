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
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from bench import progs
from bench.core.config import TrainConfig
from bench.core.data import NAME as DATA_NAME
from bench.core.devices import resolve_device
from bench.core.interrupts import graceful_interrupts
from bench.core.splits import split_validation
from bench.errors import NonFiniteLoss
from bench.sweeps import storage as stg
from bench.sweeps import studies, workers
from bench.sweeps.process import open_store_and_data, quiet_optuna, stopwatch
from bench.sweeps.queue import cas_lock
from bench.sweeps.study_summary import (
    OBJECTIVE,
    OBJECTIVE_ATTR,
    OBJECTIVE_DECIMALS,
    OBJECTIVE_LABEL,
    OBJECTIVE_NOTE,
    shown_params,
    summarise,
)
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import FAILURE_TAG, PRUNED_TAG
from bench.tracking.store import redact, resolve_tracking_uri, ui_address
from bench.training.identity import run_name, run_params, run_tags
from bench.training.loop import train
from variants import search_space
from variants.registry import REGISTRY, Variant

PROG = progs.TUNE


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


def parent_name(study: str, variant: str, cfg: TrainConfig) -> str:
    """The study's parent run, short enough for the runs table's Run Name column (about 20 characters; the full
    study name was cut at "tune-sgvb_b-z2-e2-..."): what tells studies apart first, as the grid's "<id> · grid".
    A default study is named by its variant and latent size (the rest is in its params and bench.study tag)."""
    base = f"{variant}-z{cfg.latent}" if study == default_study_name(variant, cfg) else study
    return f"{base} · tune"


def study_settings(variant: Variant, cfg: TrainConfig, digest: str) -> dict[str, Any]:
    """What every worker of a study must share for its trials to compare: the fixed axes and settings (not
    the tuned ones, nor the device)."""
    tuned = {d.name for d in search_space.dimensions(variant)} | {"device", "compile"}
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

    def set_tags(self, tags: dict[str, str]) -> None:
        with stopwatch(self.times, "tracking"):
            self.run.set_tags(tags)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def log_model(self, model: Any) -> None:
        pass


def eta(elapsed: float, done: int, total: int) -> str:
    """The time left for ``total - done`` trials at the mean duration of the ``done`` so far (pruned trials are
    shorter, so it is an upper bound early in a study that prunes)."""
    if done == 0:
        return "ETA after the first trial"
    left = elapsed / done * (total - done)
    return f"ETA {left / 60:.1f} min" if left >= 90 else f"ETA {left:.0f} s"


@dataclasses.dataclass
class Worker:
    """One bench.tune process: its study, its MLflow parent run, and its trials (ask, train, tell)."""

    client: MlflowClient
    experiment: str
    study: optuna.Study
    storage: BaseStorage
    parent_id: str
    variant: Variant
    cfg: TrainConfig
    data: Any
    heartbeat: float
    on_stale: workers.StaleCallback
    times: dict[str, float] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    progress: bool = False  # each trial's training progress bar (bench.run's), on a terminal

    def run_trials(self, n: int, timeout: float | None) -> None:
        """Up to ``n`` trials (a retry queued for a lost worker first, else a new point from the sampler); no new
        trial after ``timeout`` seconds."""
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        started = time.monotonic()
        deadline = started + timeout if timeout else None
        for k in range(1, n + 1):
            if deadline is not None and time.monotonic() > deadline:
                break
            print(f"trial {k}/{n} of this worker ({eta(time.monotonic() - started, k - 1, n)})", flush=True)
            with cas_lock(self.storage):  # on SQLite, two workers could both take one queued retry (queue.cas_lock)
                trial = self.study.ask()
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            t0 = time.perf_counter()
            with workers.Lease(self.storage, trial_id, self.heartbeat) as lease:
                outcome = self.run_trial(trial, lease)
            self.after_trial(trial.number, f"trial {trial.number} ({k}/{n}): {outcome} "
                                           f"({time.perf_counter() - t0:.1f} s)")

    def run_trial(self, trial: optuna.Trial, lease: workers.Lease) -> str:
        """Train one trial's run; the trial ends COMPLETE, PRUNED or FAIL, and its run FINISHED, KILLED or
        FAILED. Returns what happened, in words."""
        variant, overrides = search_space.suggest(trial, self.variant)
        cfg = dataclasses.replace(self.cfg, **overrides)
        tags = {**run_tags(variant), **studies.trial_run_tags(self.study, trial.number, self.parent_id)}
        # The trial number first: the runs table cuts long names at their end.
        run = MlflowTracker.start(self.client, self.experiment, f"t{trial.number} {run_name(variant, cfg)}",
                                  run_params(variant, cfg, self.data.digest), tags=tags)
        trial.set_user_attr(workers.RUN_ATTR, run.run_id)
        run.log_dataset(DATA_NAME, self.data.digest, self.data.source, "train", self.data.test_x[:1].numpy())
        chosen = shown_params(trial.params)
        leased = workers.LeasedTracker(run, lease)
        tracker = TrialTracker(leased, trial, cfg.epochs, self.times)
        try:
            with stopwatch(self.times, "train"):
                result = train(variant, cfg, self.data, tracker, progress=self.progress,
                               log=lambda line: print(f"trial {trial.number} {line}", flush=True))
            value = result.history[-1][OBJECTIVE]
            leased.value = lambda: round(value, OBJECTIVE_DECIMALS)  # what the dashboard shows (study_summary)
            leased.finish("FINISHED")  # the trial turns COMPLETE first, if it is still this worker's
        except optuna.TrialPruned as e:
            return self._end(trial, leased, TrialState.PRUNED, "KILLED", {PRUNED_TAG: str(tracker.epoch)}, e,
                             f"pruned: {e} [{chosen}]")
        except NonFiniteLoss as e:
            return self._end(trial, leased, TrialState.FAIL, "FAILED", {}, e, f"failed: {e} [{chosen}]")
        except workers.LostTrial as e:
            self._count("lost")
            return str(e)
        except KeyboardInterrupt as e:
            self._end(trial, leased, TrialState.FAIL, "KILLED", {}, f"interrupted ({e or 'SIGINT'})", "")
            raise
        except BaseException as e:
            self._end(trial, leased, TrialState.FAIL, "FAILED", {}, f"{type(e).__name__}: {e}", "")
            raise
        self._count("complete")
        return f"{OBJECTIVE} {value:.{OBJECTIVE_DECIMALS}f} [{chosen}]"

    def _end(self, trial: optuna.Trial, run: workers.LeasedTracker, state: TrialState, status: str,
             tags: dict[str, str], why: object, outcome: str) -> str:
        run.set_tags({**tags, FAILURE_TAG: str(why)})
        run.finish(status)
        if not run.lease.lost:
            self.study.tell(trial, state=state, skip_if_finished=True)
        self._count(state.name.lower())
        return outcome

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def after_trial(self, number: int, line: str) -> None:
        """The trial's line with the best value so far (also a curve in the parent's metrics); the trials of lost
        workers are failed and queued again."""
        workers.fail_lost_trials(self.study, self.storage, self.on_stale)
        try:
            best = self.study.best_trial
        except ValueError:
            print(f"{line}; no trial complete yet", flush=True)
            return
        print(f"{line}; best {OBJECTIVE} {best.value:.{OBJECTIVE_DECIMALS}f} (trial {best.number})", flush=True)
        if best.number <= number:
            self.client.log_batch(self.parent_id, metrics=[Metric("best_value", best.value,
                                                                  int(time.time() * 1000), number)])


def tune(args: argparse.Namespace) -> int:
    """What ``python -m bench.tune`` does with its arguments: run this worker's trials of the study."""
    variant = REGISTRY[args.variant]
    cfg = TrainConfig(latent=args.latent, epochs=args.epochs, seed=args.seed, device=resolve_device(args.device),
                      precision=args.precision, binarize=args.binarize, limit_train=args.limit_train,
                      compile=args.compile,
                      validation=args.validation)
    name = studies.check_name(args.study_name or default_study_name(variant.name, cfg))
    if args.storage:
        stg.check_storage_spec(args.storage, resolve_tracking_uri(args.tracking_uri))
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a server's "View run" per run
    quiet_optuna()
    client, experiment_id, data = open_store_and_data(args.tracking_uri, args.experiment, args.data_dir)
    split_validation(data, cfg)  # a validation split that leaves no training images is a user error, now
    on_stale = workers.stale_trial_callback(client, print if args.verbose else lambda line: None)
    spec = args.storage or stg.default_storage(client.tracking_uri)
    storage = stg.open_storage(spec)
    sampler = optuna.samplers.TPESampler()  # unseeded: workers must not all propose the same points
    pruner = optuna.pruners.MedianPruner(n_startup_trials=args.prune_after)
    study, created = stg.create_or_load(name, storage, sampler, pruner)
    if created:
        study.set_metric_names([OBJECTIVE_LABEL])  # optuna-dashboard names the objective by it
        study.set_user_attr(OBJECTIVE_ATTR, OBJECTIVE_NOTE)
    settings = study_settings(variant, cfg, data.digest)
    studies.agree_settings(study, settings, created, "give the same settings or another --study-name")
    parent_params = {**settings, "storage": redact(spec), "sampler": "TPESampler",
                     "pruner": f"MedianPruner(n_startup_trials={args.prune_after})", "direction": "minimize",
                     "search_space": "; ".join(d.describe() for d in search_space.dimensions(variant))}
    parent_id = studies.parent_run(client, experiment_id, study, created, parent_params,
                                   f"Optuna study {name}: {REGISTRY[variant.name].description}",
                                   run_name=parent_name(name, variant.name, cfg))
    print(f"study {name} ({'created' if created else 'joined'}) on {redact(spec)}; parent run {parent_id} "
          f"at {ui_address(client, experiment_id, parent_id)}", flush=True)
    worker = Worker(client, args.experiment, study, storage, parent_id, variant, cfg, data, args.heartbeat,
                    on_stale, progress=not args.no_progress and sys.stderr.isatty())
    workers.clean_up(client, study, storage, on_stale)
    status = 0
    try:
        if args.trials:
            with graceful_interrupts():
                worker.run_trials(args.trials, args.timeout)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; the running trial's run is KILLED", file=sys.stderr)
        status = 130
    finally:
        workers.clean_up(client, study, storage, on_stale)
        # The worker that leaves no trial running or waiting ends the study: it draws the plots (a few seconds,
        # once per study) and ends the parent run. Others only update the best value and counts.
        last = studies.study_done(study)
        summarise(client, study, parent_id, plots=last and args.trials > 0)
        if last:
            client.set_terminated(parent_id, "FINISHED")
        stg.close_storage(storage)
    if args.verbose:
        # Time outside the training loop (start-up, Optuna, MLflow, plots) as a share of this worker's wall time;
        # MLflow and Optuna calls from inside the loop (metrics, images, pruning) are shown apart.
        wall, training = process_seconds(), worker.times.get("train", 0.0)
        counts = ", ".join(f"{n} {k}" for k, n in worker.counts.items()) or "no trials"
        print(f"worker {workers.short(workers.WORKER)}: {counts} in {wall:.1f} s, {training:.1f} s of it in the "
              f"training loop (tracking calls {worker.times.get('tracking', 0.0):.1f} s of those); outside it "
              f"{wall - training:.1f} s ({100 * (1 - training / wall):.1f}%)")
    print(f"browse the study with `optuna-dashboard {redact(stg.postgres_driver(spec))}` (pip install "
          "optuna-dashboard), its runs at "
          f"{ui_address(client, experiment_id, parent_id)}")
    return status
