"""``bench.run --resume RUN_ID``: the run is claimed, every check comes before it is touched (a refused or
interrupted resume leaves it as it was), and only then is it marked RUNNING again, in one critical block."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from mlflow import MlflowClient

from bench.core import interrupts
from bench.core.data import MNIST
from bench.core.devices import resolve_device
from bench.core.splits import split_validation
from bench.errors import UserError
from bench.tracking.analyses import find_analysis_run
from bench.tracking.lookup import get_run
from bench.tracking.mlflow_tracker import MlflowTracker, param_value
from bench.tracking.names import EPOCHS_TAG, NLL_TAG, SWEEP_TAG, TRAINING_SNR_ANALYSIS
from bench.tracking.ownership import Lease
from bench.training.identity import restore
from bench.training.lifecycle import Job, Life, say_where
from bench.training.loop import split_epoch

# What a resumed run keeps from its start (its params); a resume may change only the other flags.
FIXED_ON_RESUME = ("variant", "latent", "samples", "decoder", "hidden", "gaussian_variance", "learn_variance",
                   "batch_size", "lr", "seed", "precision", "binarize", "limit_train", "experiment", "sweep")


def given(parser: argparse.ArgumentParser, argv: list[str] | None, dests: Sequence[str]) -> list[str]:
    """Which of ``dests`` the command line sets, to any value (its default included)."""
    unset = object()
    parser.set_defaults(**dict.fromkeys(dests, unset))
    args = parser.parse_args(argv)
    return [d for d in dests if getattr(args, d) is not unset]


def _same(given_value: str, run_value: str | None) -> bool:
    if run_value is None:
        return False
    if given_value == run_value:
        return True
    try:
        return float(given_value) == float(run_value)  # 1e-3 and 0.001
    except ValueError:
        return False


def differing(client: MlflowClient, run: Any, args: argparse.Namespace, dests: Sequence[str]) -> list[str]:
    """``--flag value (the run's: value)`` for each given flag whose value is not the run's own."""
    own = dict(run.data.params)
    own["experiment"] = client.get_experiment(run.info.experiment_id).name
    own["sweep"] = run.data.tags.get(SWEEP_TAG)
    out = []
    for d in dests:
        value = param_value(getattr(args, d))
        if not _same(value, own.get(d)):
            out.append(f"--{d.replace('_', '-')} {value} (the run's: {own.get(d, 'not set')})")
    return out


def log_missing(client: MlflowClient, tracker: MlflowTracker, metrics: dict[str, float], step: int,
                history: Sequence[Any]) -> None:
    """The checkpointed epoch's metrics that the run, or its "SNR during training" run, lacks at ``step`` (the
    run's are logged first, so either can be missing alone)."""
    curves, snr = split_epoch(metrics)
    if not any(m.step == step for m in history):
        tracker.log_metrics(curves, step=step)
    if snr:
        found = find_analysis_run(client, tracker.run_id, TRAINING_SNR_ANALYSIS)
        key = next(iter(snr))
        if found is None or not any(m.step == step for m in client.get_metric_history(found, key)):
            tracker.log_analysis_metrics(TRAINING_SNR_ANALYSIS, snr, step=step)


def resumed_run(client: MlflowClient, parser: argparse.ArgumentParser, args: argparse.Namespace,
                argv: list[str] | None, data: Callable[[], MNIST], life: Life) -> Job | None:
    """The run of --resume, claimed and ready to go on from its checkpoint (None: it has nothing left to do).
    ``life`` records the claim, then the moment the run is touched: a signal before that leaves it as it was,
    after it ends it KILLED (bench.training.lifecycle.run_command)."""
    run_id = args.resume
    run = get_run(client, run_id)
    if wrong := differing(client, run, args, given(parser, argv, FIXED_ON_RESUME)):
        raise UserError(f"--resume continues run {run_id} with the settings it started with, and "
                        f"{', '.join(wrong)} differ{'s' if len(wrong) == 1 else ''}; drop "
                        f"{'it' if len(wrong) == 1 else 'them'} (a resume may change --epochs, --device, "
                        "--data-dir, --nll-samples)")
    variant, cfg = restore(run, args.epochs, resolve_device(args.device))
    trained_compiled = cfg.compile
    if args.compile is not None:  # --compile / --no-compile: how the steps run, which a resume may change
        cfg = dataclasses.replace(cfg, compile=args.compile)
    if not given(parser, argv, ["nll_samples"]):  # the final evaluation the run was started with
        args.nll_samples = int(run.data.tags.get(NLL_TAG, 0))
    if not given(parser, argv, ["snr_every"]):  # and its SNR during training, which would otherwise stop here
        args.snr_every = int(run.data.params.get("snr_every", 0))
    tracker = MlflowTracker(client, run_id)
    lease = life.lease = Lease(client, run_id, "training")
    interrupts.set_phase(interrupts.OWNING)  # from here a signal releases the claim (and, once touched, kills)
    try:
        lease.claim(wait=args.wait)
        run = client.get_run(run_id)  # as its last owner left it
        start = tracker.load_checkpoint()
        done = start["epoch"] if start else 0
        history = client.get_metric_history(run_id, "train_loss")
        if start is None and history:
            raise UserError(f"run {run_id} has {len(history)} epochs logged but no checkpoint to resume from "
                            "(tuning trials keep none); start a new run")
        if done >= cfg.epochs and run.info.status == "FINISHED":
            print(f"run {run_id} has already trained {done} epochs (target {cfg.epochs}); nothing to do")
            lease.release()
            return None
        if done > cfg.epochs:
            raise UserError(f"run {run_id} has already trained {done} epochs; give --epochs {done} or more")
        mnist = data()
        split_validation(mnist, cfg)
        with interrupts.critical():  # the run is touched: from here on it ends recorded, whatever happens
            life.tracker = tracker
            if str(cfg.epochs) != run.data.params.get("epochs") or EPOCHS_TAG in run.data.tags:
                tracker.set_tags({EPOCHS_TAG: str(cfg.epochs)})
            if start is not None:  # killed between the checkpoint and its metrics: they are logged from it
                log_missing(client, tracker, start["metrics"], done, history)
            tracker.mark_running()
    except KeyboardInterrupt:
        raise
    except BaseException:
        lease.release()
        raise
    say_where(tracker, f"resuming run {run_id} ({run.info.run_name}) after epoch {done}")
    trained_on = run.data.params.get("device", cfg.device)
    if trained_on.split(":")[0] != cfg.device.split(":")[0]:
        print(f"note: it trained on {trained_on} and resumes on {cfg.device}, whose random draws differ: the "
              f"result will not match an uninterrupted run; give --device {trained_on} to match it")
    if cfg.compile != trained_compiled:
        how = {True: "compiled", False: "eagerly"}
        print(f"note: it trained {how[trained_compiled]} and resumes {how[cfg.compile]}: compiled and eager steps "
              "differ in the last bits, so the result will not match an uninterrupted run to the bit; give "
              f"--{'' if trained_compiled else 'no-'}compile to match it")
    return Job(tracker, variant, cfg, mnist, start, lease)
