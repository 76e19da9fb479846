"""One tracked run from start to end: a new run or a resumed one is prepared (every check before the store is
touched), trained, its model logged and evaluated, and ended FINISHED, FAILED or KILLED whatever happens."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from bench.core.config import TrainConfig
from bench.core.data import NAME as DATA_NAME
from bench.core.data import load_mnist
from bench.core.devices import resolve_device
from bench.core.interrupts import graceful_interrupts
from bench.core.splits import split_validation
from bench.errors import NonFiniteLoss, UserError, first_line
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import EPOCHS_TAG, FAILURE_TAG
from bench.tracking.store import open_store, ui_address
from bench.training.identity import restore, run_name, run_params, run_tags
from bench.training.loop import train
from variants.registry import REGISTRY, Variant, get_variant

PROG = "python -m bench.run"


def variant_from_args(args: argparse.Namespace) -> Variant:
    try:
        variant = get_variant(args.variant).replace(
            samples=args.samples, decoder=args.decoder, hidden=args.hidden,
            gaussian_variance=args.gaussian_variance, learn_variance=args.learn_variance)
    except (KeyError, ValueError) as e:
        raise UserError(str(e).strip("'\"")) from None
    if variant.decoder != "gaussian" and (args.gaussian_variance is not None or args.learn_variance):
        raise UserError(f"--gaussian-variance and --learn-variance set the Gaussian decoder's c, and {variant.name} "
                        "decodes with a Bernoulli; add --decoder gaussian or pick a gaussian variant")
    return variant


# What a resumed run keeps from its start (its params); a resume may change only the other flags.
FIXED_ON_RESUME = ("variant", "latent", "samples", "decoder", "hidden", "gaussian_variance", "learn_variance",
                   "batch_size", "lr", "seed", "precision", "binarize", "limit_train", "experiment", "sweep")


def given(parser: argparse.ArgumentParser, argv: list[str] | None, dests: Sequence[str]) -> list[str]:
    """Which of ``dests`` the command line sets, to any value (its default included)."""
    unset = object()
    parser.set_defaults(**dict.fromkeys(dests, unset))
    args = parser.parse_args(argv)
    return [d for d in dests if getattr(args, d) is not unset]


@dataclass
class Job:
    """What execute() is given: the run's tracker, its variant and settings, the data, the checkpoint to go on from."""

    tracker: MlflowTracker
    variant: Variant
    cfg: TrainConfig
    data: Any
    start: dict[str, Any] | None = None


def new_run(client: MlflowClient, args: argparse.Namespace) -> Job:
    variant = variant_from_args(args)
    cfg = TrainConfig(latent=args.latent, epochs=10 if args.epochs is None else args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      device=resolve_device(args.device), precision=args.precision,
                      binarize=args.binarize, limit_train=args.limit_train)
    data = load_mnist(args.data_dir)
    split_validation(data, cfg)  # settings the data cannot meet fail here, before a run is made
    tracker = MlflowTracker.start(client, args.experiment, run_name(variant, cfg),
                                  run_params(variant, cfg, data.digest), tags=run_tags(variant, args.sweep))
    tracker.log_dataset(DATA_NAME, data.digest, data.source, "train", data.test_x[:1].numpy())
    return Job(tracker, variant, cfg, data)


def resumed_run(client: MlflowClient, parser: argparse.ArgumentParser, args: argparse.Namespace,
                argv: list[str] | None) -> Job | None:
    """The run of --resume, ready to go on from its checkpoint (None: it has nothing left to do). Every check
    comes before the run is touched: a refused resume leaves it as it was."""
    try:
        run = client.get_run(args.resume)
    except Exception:
        raise UserError(f"no run with id {args.resume!r} in {client.tracking_uri}; "
                        "give the id of a run made by bench.run") from None
    if fixed := given(parser, argv, FIXED_ON_RESUME):
        flags = ", ".join("--" + d.replace("_", "-") for d in fixed)
        raise UserError(f"--resume continues run {args.resume} with the settings it started with; drop {flags} "
                        "(a resume takes --epochs, --device, --data-dir, --tracking-uri, --nll-samples)")
    variant, cfg = restore(run, args.epochs, resolve_device(args.device))
    tracker = MlflowTracker(client, args.resume)
    start = tracker.load_checkpoint()
    done = start["epoch"] if start else 0
    history = client.get_metric_history(args.resume, "train_loss")
    if start is None and history:
        raise UserError(f"run {args.resume} has {len(history)} epochs logged but no checkpoint to resume from "
                        "(tuning trials keep none); start a new run")
    if done >= cfg.epochs and run.info.status == "FINISHED":
        print(f"run {args.resume} has already trained {done} epochs (target {cfg.epochs}); nothing to do")
        return None
    if done > cfg.epochs:
        raise UserError(f"run {args.resume} has already trained {done} epochs; give --epochs {done} or more")
    data = load_mnist(args.data_dir)
    split_validation(data, cfg)
    if str(cfg.epochs) != run.data.params.get("epochs") or EPOCHS_TAG in run.data.tags:
        tracker.set_tags({EPOCHS_TAG: str(cfg.epochs)})
    if start is not None and not any(m.step == done for m in history):
        tracker.log_metrics(start["metrics"], step=done)  # interrupted between checkpoint and metrics
    tracker.mark_running()
    print(f"resuming run {args.resume} ({run.info.run_name}) after epoch {done}")
    trained_on = run.data.params.get("device", cfg.device)
    if trained_on.split(":")[0] != cfg.device.split(":")[0]:
        print(f"note: it trained on {trained_on} and resumes on {cfg.device}, whose random draws differ: the "
              f"result will not match an uninterrupted run; give --device {trained_on} to match it")
    return Job(tracker, variant, cfg, data, start)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """What ``python -m bench.run`` does with its arguments."""
    args = parser.parse_args(argv)
    if args.list:
        width = max(map(len, REGISTRY))
        for name, v in REGISTRY.items():
            print(f"{name:<{width}}  {v.description}")
        return 0
    client = open_store(args.tracking_uri, existing=bool(args.resume))
    job = resumed_run(client, parser, args, argv) if args.resume else new_run(client, args)
    if job is None:
        return 0
    progress = not args.no_progress and sys.stderr.isatty()
    return execute(job.tracker, job.variant, job.cfg, job.data, job.start, progress=progress,
                   nll_samples=args.nll_samples, snr_every=getattr(args, "snr_every", 0))


def record_end(tracker: MlflowTracker, status: str, reason: str) -> None:
    """Mark the run ended with ``reason`` in its tags, if the store still answers. When it does not, say so in
    a line and carry on: the error that stopped the run is the one to report."""
    try:
        tracker.set_tags({FAILURE_TAG: reason})
        tracker.finish(status)
    except Exception as e:
        print(f"{PROG}: could not mark run {tracker.run_id} {status} ({first_line(e)})", file=sys.stderr)


def execute(tracker: MlflowTracker, variant: Variant, cfg: TrainConfig, data: Any,
            start: dict[str, Any] | None, progress: bool, nll_samples: int = 0, snr_every: int = 0) -> int:
    """Train under the tracker; whatever happens, the run ends recorded: FINISHED, FAILED or KILLED."""
    from bench.evaluation.run_evaluation import (
        final_evaluation,  # here: it pulls in pandas and matplotlib (seconds at start-up)
    )

    run_id = tracker.run_id
    try:
        with graceful_interrupts():
            result = train(variant, cfg, data, tracker, start=start, progress=progress, snr_every=snr_every)
            tracker.log_model(result.model)  # first: an interrupted evaluation can be redone by bench.evaluate
            final_evaluation(result.model, variant, cfg, data, tracker, nll_samples=nll_samples, progress=progress)
            tracker.finish("FINISHED")
    except NonFiniteLoss as e:
        record_end(tracker, "FAILED", str(e))
        print(f"{PROG}: run {run_id} failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        record_end(tracker, "KILLED", f"interrupted ({e or 'SIGINT'})")
        print(f"\n{PROG}: run {run_id} killed; resume it with --resume {run_id}", file=sys.stderr)
        return 130
    except (MlflowException, OSError) as e:  # the tracking store or the disk gave way: the user's to mend
        reason = f"{type(e).__name__}: {first_line(e)}"
        record_end(tracker, "FAILED", reason)
        raise UserError(f"run {run_id} stopped ({reason}); once that is mended, resume it with --resume {run_id}"
                        ) from None
    except BaseException as e:
        record_end(tracker, "FAILED", f"{type(e).__name__}: {e}")
        raise
    print(f"run {run_id} finished; browse it with `mlflow ui --backend-store-uri {tracker.client.tracking_uri}`"
          f" at {ui_address(tracker.client, tracker.experiment_id, run_id)}")
    return 0
