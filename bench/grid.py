"""python -m bench.grid: a cartesian sweep of ordinary tracked runs, resumable and shared between processes.

    python -m bench.grid --variants sgvb_a,sgvb_b --latents 2,10,20 --seeds 1,2,3 --epochs 10
    # more processes (shells, machines) with the same arguments split the remaining work:
    python -m bench.grid --variants sgvb_a,sgvb_b --latents 2,10,20 --seeds 1,2,3 --epochs 10 --storage grid.journal

What it does: bench.sweeps.grid; how cells are handed out: bench.sweeps.queue.
"""

from __future__ import annotations

import argparse
import math

from bench.cli import (
    ArgumentParser,
    add_common,
    add_compile,
    exit_process,
    listof,
    main_guard,
    nonneg_int,
    one_of,
    positive_float,
    positive_int,
    seed_int,
    variant_name,
)
from bench.core.config import BINARIZE, PRECISIONS
from bench.progs import GRID as PROG
from bench.tracking.names import DEFAULT_EXPERIMENT
from bench.tracking.precheck import check_store
from variants.catalog import LIKELIHOOD_NAMES
from variants.registry import REGISTRY

# The axes a grid multiplies (each a list argument): their product is the number of combinations.
AXES = ("variants", "latents", "seeds", "epochs", "batch_size", "lr", "samples", "decoder", "hidden",
        "gaussian_variance", "precision", "binarize", "limit_train")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Run the cartesian product of the given lists as tracked "
                                "runs (one per combination), skipping combinations already FINISHED.")
    p.add_argument("--variants", type=listof(variant_name, "variant names"), required=True, metavar="LIST",
                   help=f"registered variants: {', '.join(REGISTRY)}")
    p.add_argument("--latents", type=listof(positive_int, "positive integers"), default=[20], metavar="LIST")
    p.add_argument("--seeds", type=listof(seed_int, "seeds from 0 to 2**63-1"), default=[1], metavar="LIST")
    p.add_argument("--epochs", type=listof(nonneg_int, "epoch counts"), default=[10], metavar="LIST")
    p.add_argument("--batch-size", type=listof(positive_int, "positive integers"), default=[128], metavar="LIST")
    p.add_argument("--lr", type=listof(positive_float, "positive numbers"), default=[1e-3], metavar="LIST")
    p.add_argument("--samples", type=listof(positive_int, "positive integers"), default=[None], metavar="LIST",
                   help="samples per datapoint (default: each variant's own)")
    p.add_argument("--decoder", type=listof(one_of(LIKELIHOOD_NAMES), "decoders"), default=[None], metavar="LIST",
                   help=f"{', '.join(LIKELIHOOD_NAMES)} (default: each variant's own)")
    p.add_argument("--hidden", type=listof(positive_int, "positive integers"), default=[None], metavar="LIST")
    p.add_argument("--gaussian-variance", type=listof(positive_float, "positive numbers"), default=[None],
                   metavar="LIST", help="c of the Gaussian decoder (ignored for Bernoulli decoders)")
    p.add_argument("--precision", type=listof(one_of(PRECISIONS), "precisions"), default=["fp32"], metavar="LIST")
    p.add_argument("--binarize", type=listof(one_of(BINARIZE), "binarisations"), default=["none"], metavar="LIST")
    add_compile(p)
    p.add_argument("--limit-train", type=listof(positive_int, "positive integers"), default=[None], metavar="LIST")
    p.add_argument("--nll-samples", type=nonneg_int, default=0, metavar="K",
                   help="after training, estimate the test NLL with K importance samples (0: skip)")
    p.add_argument("--sweep", metavar="ID", help="the sweep's tag value (default: grid-<hash of the grid>)")
    p.add_argument("--storage", metavar="URL_OR_PATH",
                   help="Optuna storage that hands out combinations: sqlite:///PATH.db, postgresql://..., or "
                        "PATH.journal (default: grid-queue.db beside the MLflow SQLite store, else in the working "
                        "directory; apart from bench.tune's optuna.db, so optuna-dashboard shows studies only)")
    p.add_argument("--heartbeat", type=positive_int, default=10, metavar="SEC",
                   help="seconds between a worker's beats: a worker that cannot be checked otherwise (another "
                        "machine) and has not beaten for 2 x SEC is taken as lost, its cell queued again (10)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the combinations that failed twice with a non-finite loss")
    p.add_argument("--dry-run", action="store_true", help="list the combinations and which are done, then exit")
    p.add_argument("--verbose", action="store_true", help="also print the queue's bookkeeping")
    add_common(p, experiment=DEFAULT_EXPERIMENT, progress=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    n = math.prod(len(getattr(args, axis)) for axis in AXES)
    # A first line at once (issue 17): torch, MLflow and Optuna take seconds to load.
    print(f"{PROG}: {n} combination{'s' * (n != 1)}; loading torch, MLflow and Optuna ...", flush=True)
    check_store(args.tracking_uri)  # a bad store is one line before they do
    from bench.sweeps.grid import run_grid

    return run_grid(args)


if __name__ == "__main__":
    exit_process(main_guard(main, PROG)())
