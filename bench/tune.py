"""python -m bench.tune: tune one variant at one latent size with Optuna, every trial a tracked MLflow run.

    python -m bench.tune --variant sgvb_b --latent 20 --trials 30 --epochs 10 [--storage study.journal]

How a study is run and shared between workers: bench.sweeps.tuning.
"""

from __future__ import annotations

import argparse

from bench.cli import (
    ArgumentParser,
    add_common,
    add_compile,
    exit_process,
    main_guard,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
)
from bench.core.config import BINARIZE, PRECISIONS
from bench.progs import TUNE as PROG
from bench.tracking.names import TUNE_EXPERIMENT as DEFAULT_EXPERIMENT
from bench.tracking.precheck import check_store
from variants import search_space
from variants.registry import REGISTRY


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tune a VAE variant with Optuna (TPE, median pruning on the validation loss); every trial is "
                    "an MLflow run nested under one parent run per study.",
        epilog="search space (variants/search_space.py):\n" + search_space.describe())
    p.add_argument("--variant", metavar="NAME", choices=list(REGISTRY), required=True,
                   help=f"a registered variant: {', '.join(REGISTRY)}")
    p.add_argument("--latent", type=positive_int, default=20, metavar="N", help="latent size (default 20)")
    p.add_argument("--trials", type=nonneg_int, required=True, metavar="T",
                   help="trials this worker runs (0: create the study and its parent run, then exit)")
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs per trial (default 10)")
    p.add_argument("--study-name", metavar="S", help="default: tune-VARIANT-zN-eE[-nLIMIT]")
    p.add_argument("--storage", metavar="URL_OR_PATH",
                   help="Optuna storage: sqlite:///PATH.db, postgresql://..., or PATH.journal "
                        "(default: optuna.db beside the MLflow SQLite store, else in the working directory)")
    p.add_argument("--timeout", type=positive_float, metavar="SEC", help="start no trial after SEC seconds")
    p.add_argument("--validation", type=positive_int, default=10000, metavar="N",
                   help="training images held out for the objective (default 10000, the last ones)")
    p.add_argument("--limit-train", type=positive_int, metavar="N", help="train on the first N images only")
    p.add_argument("--seed", type=seed_int, default=1, help="training seed of every trial (default 1)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--binarize", choices=BINARIZE, default="none")
    add_compile(p)
    p.add_argument("--prune-after", type=nonneg_int, default=5, metavar="N",
                   help="median pruning starts once N trials have finished (default 5)")
    p.add_argument("--heartbeat", type=positive_int, default=10, metavar="SEC",
                   help="seconds between a worker's beats: a worker that cannot be checked otherwise (another "
                        "machine) and has not beaten for 2 x SEC is taken as lost, its trial queued again (10)")
    p.add_argument("--verbose", action="store_true", help="also print lost workers and this worker's overhead")
    add_common(p, experiment=DEFAULT_EXPERIMENT, progress=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A first line at once (issue 17): torch, MLflow and Optuna take seconds to load.
    print(f"{PROG}: {args.variant} at latent {args.latent}, {args.trials} trial{'s' * (args.trials != 1)} of "
          f"{args.epochs} epoch{'s' * (args.epochs != 1)}; loading torch, MLflow and Optuna ...", flush=True)
    check_store(args.tracking_uri)  # a bad store is one line before they do
    from bench.sweeps.tuning import tune

    return tune(args)


if __name__ == "__main__":
    exit_process(main_guard(main, PROG)())
