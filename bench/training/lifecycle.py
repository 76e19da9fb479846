"""One tracked run from start to end: a new run or a resumed one is prepared (every check before the store is
touched), trained, its model logged and evaluated, and ended FINISHED, FAILED or KILLED whatever happens.

A new run is made before torch loads (this module imports none of it): the device, the data's checksums and the
settings are checked without it, the run is created and its id printed, and then torch and the tensors load
(2-3 s on a 2-core machine), under the run's signal handling (issue 17: "started run" within 3 s).

Signals (bench.core.interrupts): until the run exists, Ctrl-C or SIGTERM exits at once and leaves nothing; the
run is created with its params and its owner's claim inside one critical block, and from then on any signal
ends it KILLED with the signal in ``bench.failure``. One process at a time holds a run
(bench.tracking.ownership): a second one is refused, or waits with ``--wait``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from bench import progs
from bench.core import interrupts
from bench.core.config import TrainConfig
from bench.core.data import MNIST, CheckedMNIST, checking_mnist, load_mnist
from bench.core.data import NAME as DATA_NAME
from bench.core.devices import resolve_device
from bench.core.progress import note
from bench.errors import NonFiniteLoss, UserError, first_line, out_of_memory
from bench.tracking import locks
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import FAILURE_TAG, NLL_TAG
from bench.tracking.ownership import Lease
from bench.tracking.store import browse_hint, open_store, resolve_tracking_uri, ui_address
from bench.training.arguments import variant_from_args
from bench.training.identity import run_name, run_params, run_tags
from variants.registry import Variant

PROG = progs.RUN


@dataclass
class Job:
    """What execute() is given: the run's tracker, its variant and settings, the data, the checkpoint to go on from,
    and this process's claim on the run."""

    tracker: MlflowTracker
    variant: Variant
    cfg: TrainConfig
    data: Any
    start: dict[str, Any] | None = None
    lease: Lease | None = None


@dataclass
class Life:
    """What this process has done to its run so far, for a signal that lands between any two statements: the
    tracker once the run is made (or marked running again), the claim once one is being made."""

    tracker: MlflowTracker | None = None
    lease: Lease | None = None


def say_where(tracker: MlflowTracker, lead: str) -> None:
    """``lead`` and the run's UI link, as soon as the run is there."""
    print(f"{lead}; follow it at {ui_address(tracker.client, tracker.experiment_id, tracker.run_id)}", flush=True)


def new_run(client: MlflowClient, args: argparse.Namespace, data: Callable[[], CheckedMNIST], life: Life) -> Job:
    """Check everything, then create the run with its params and this process's claim in one critical block:
    from its first moment the run has what a resume needs, and a signal ends it KILLED. Its id is printed as soon
    as it exists; the tensors (and torch) load after."""
    variant = variant_from_args(args)
    cfg = TrainConfig(latent=args.latent, epochs=10 if args.epochs is None else args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      device=resolve_device(args.device), precision=args.precision,
                      binarize=args.binarize, limit_train=args.limit_train, compile=bool(args.compile))
    mnist = data()
    cfg.check_split(mnist.n_train)  # settings the data cannot meet fail here, before a run is made
    lease = Lease(client, "", "training")
    with interrupts.critical():  # a signal meanwhile is held, then ends the run KILLED (run_command)
        tracker = MlflowTracker.start(client, args.experiment, run_name(variant, cfg),
                                      run_params(variant, cfg, mnist.digest),
                                      tags={**run_tags(variant, args.sweep), **lease.claim_tag(held=True),
                                            **({NLL_TAG: str(args.nll_samples)} if args.nll_samples else {})})
        life.tracker, life.lease = tracker, lease.born(tracker.run_id)
        interrupts.set_phase(interrupts.OWNING)
    say_where(tracker, f"started run {tracker.run_id} ({run_name(variant, cfg)})")
    note("loading torch and MNIST's tensors ...")
    with interrupts.critical():  # a signal meanwhile ends the run KILLED once torch is in, never mid-import
        tensors = load_mnist(args.data_dir)  # the bytes were read and checked above: this decodes them
    note("")
    return Job(tracker, variant, cfg, tensors, None, lease)


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> int:
    """What ``python -m bench.run`` does with its arguments (``args``, parsed by ``parser`` from ``argv``)."""
    locks.set_waiting(bool(args.wait))  # --wait also waits for the store's locks
    life = Life()
    try:
        # MNIST is decompressed and checksummed (GIL released) while the store opens.
        with checking_mnist(args.data_dir) as checked:
            note(f"opening the tracking store {resolve_tracking_uri(args.tracking_uri)} and checking MNIST ...")
            client = open_store(args.tracking_uri, existing=bool(args.resume))
            note("")
            if args.resume:
                from bench.training.resume import resumed_run  # torch

                def data() -> MNIST:
                    checked()  # its UserError, if the files are bad
                    return load_mnist(args.data_dir)

                job = resumed_run(client, parser, args, argv, data, life)
            else:
                job = new_run(client, args, checked, life)
        if job is None:
            return 0
        progress = not args.no_progress and sys.stderr.isatty()
        return execute(job.tracker, job.variant, job.cfg, job.data, job.start, progress=progress,
                       nll_samples=args.nll_samples, lease=job.lease, new=args.resume is None,
                       snr_every=getattr(args, "snr_every", 0))
    except KeyboardInterrupt as e:  # outside execute's own handling: before it, or between two statements
        if life.tracker is not None:
            return interrupted(life.tracker, life.lease, e)
        interrupts.set_phase(interrupts.ENDING)
        if life.lease is not None:
            life.lease.release()
        left = f"run {args.resume} is left as it was" if args.resume else "nothing recorded"
        print(f"\n{PROG}: interrupted ({e or 'SIGINT'}); {left}", file=sys.stderr)
        return 130


class NewMetricsOnly:
    """The tracker, minus the metrics it already holds at the step given (a redone evaluation's)."""

    def __init__(self, tracker: MlflowTracker) -> None:
        self.tracker = tracker

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        client, run_id = self.tracker.client, self.tracker.run_id
        new = {k: v for k, v in metrics.items()
               if not any(m.step == step for m in client.get_metric_history(run_id, k))}
        if new:
            self.tracker.log_metrics(new, step)


def record_end(tracker: MlflowTracker, status: str, reason: str) -> None:
    """Mark the run ended with ``reason`` in its tags, if the store still answers. When it does not, say so in
    a line and carry on: the error that stopped the run is the one to report."""
    try:
        tracker.set_tags({FAILURE_TAG: reason})
        tracker.finish(status)
    except Exception as e:
        print(f"{PROG}: could not mark run {tracker.run_id} {status} ({first_line(e)})", file=sys.stderr)


def interrupted(tracker: MlflowTracker, lease: Lease | None, e: BaseException) -> int:
    """A signal stopped the run: KILLED with the signal as the reason, the claim given up, one line."""
    interrupts.set_phase(interrupts.ENDING)
    record_end(tracker, "KILLED", f"interrupted ({e or 'SIGINT'})")
    if lease is not None:
        lease.release()
    print(f"\n{PROG}: run {tracker.run_id} killed; resume it with --resume {tracker.run_id}", file=sys.stderr)
    return 130


def execute(tracker: MlflowTracker, variant: Variant, cfg: TrainConfig, data: Any,
            start: dict[str, Any] | None, progress: bool, nll_samples: int = 0, lease: Lease | None = None,
            new: bool = False, hint: bool = True, snr_every: int = 0) -> int:
    """Train under the tracker; whatever happens, the run ends recorded: FINISHED, FAILED or KILLED. Without a
    ``lease`` (a grid's run) the run is claimed here; it is given up at the end either way. ``new``: bench.run's
    new run, whose id is printed and whose data set is logged here."""
    run_id = tracker.run_id
    try:
        with interrupts.graceful_interrupts():
            if lease is None:
                lease = Lease(tracker.client, run_id, "training").claim()
            if new:  # bench.run's new run: its id is printed already (new_run)
                tracker.log_dataset(DATA_NAME, data.digest, data.source, "train", data.test_x[:1].numpy())
            from bench.training.loop import train

            result = train(variant, cfg, data, tracker, start=start, progress=progress, snr_every=snr_every)
            # The model first: an interrupted evaluation can be redone by bench.evaluate. Held from signals: the
            # new model and the removal of the one a previous attempt logged go together.
            with interrupts.critical():
                tracker.log_model(result.model, epoch=cfg.epochs)
            from bench.evaluation.run_evaluation import final_evaluation  # pandas, matplotlib: not at start-up

            # A resume of a run stopped during its final evaluation evaluates again: the metrics logged before
            # are not logged twice at their step.
            final_evaluation(result.model, variant, cfg, data, tracker if start is None else NewMetricsOnly(tracker),
                             nll_samples=nll_samples, progress=progress)
            with interrupts.critical():
                interrupts.check()  # never FINISHED after a signal, even one swallowed in the evaluation
                tracker.finish("FINISHED")
                interrupts.set_phase(interrupts.ENDING)
    except NonFiniteLoss as e:
        record_end(tracker, "FAILED", str(e))
        print(f"{PROG}: run {run_id} failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        return interrupted(tracker, lease, e)
    except (MlflowException, OSError) as e:  # the tracking store or the disk gave way: the user's to mend
        reason = f"{type(e).__name__}: {first_line(e)}"
        record_end(tracker, "FAILED", reason)
        raise UserError(f"run {run_id} stopped ({reason}); once that is mended, resume it with --resume {run_id}"
                        ) from None
    except BaseException as e:
        if out_of_memory(e):
            record_end(tracker, "FAILED", f"out of memory: {first_line(e)}")
            raise UserError(f"run {run_id} ran out of memory ({first_line(e, 120)}); its last checkpoint is kept: "
                            f"resume it with --resume {run_id} where there is more memory, or start a smaller run"
                            ) from None
        record_end(tracker, "FAILED", f"{type(e).__name__}: {e}")
        raise
    finally:
        if lease is not None:
            lease.release()
    if hint:  # a sweep prints one hint for all its runs instead
        print(f"run {run_id} finished; {browse_hint(tracker.client, tracker.experiment_id, run_id)}")
    return 0
