"""python -m bench.run: train one variant x one latent size x one seed, tracked in MLflow.

    python -m bench.run --variant sgvb_b --latent 20
    python -m bench.run --list
    python -m bench.run --resume RUN_ID [--epochs 20]

The run's life (new or resumed, trained, evaluated, ended) is bench.training.lifecycle.
"""

from __future__ import annotations

from bench.core import interrupts, progress

# Before anything heavy is imported: a signal until the run exists leaves nothing and one line.
interrupts.install("python -m bench.run: interrupted before a run was made; nothing recorded")

import argparse  # noqa: E402

# Light modules only (no torch, no MLflow): --help and --list answer from these (issue 17).
from bench.cli import (  # noqa: E402
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
from bench.core.config import BINARIZE, PRECISIONS  # noqa: E402
from bench.progs import RUN as PROG  # noqa: E402
from bench.tracking.names import DEFAULT_EXPERIMENT  # noqa: E402
from bench.tracking.precheck import check_store  # noqa: E402
from bench.training.arguments import variant_from_args  # noqa: E402
from variants.catalog import LIKELIHOOD_NAMES  # noqa: E402
from variants.registry import REGISTRY  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Train one VAE variant on MNIST, tracked in MLflow.")
    p.add_argument("--list", action="store_true", help="list the registered variants and exit")
    p.add_argument("--variant", metavar="NAME", choices=list(REGISTRY), default="sgvb_b",
                   help=f"a registered variant (default sgvb_b): {', '.join(REGISTRY)}")
    p.add_argument("--latent", type=positive_int, default=20, metavar="N", help="latent size (default 20)")
    p.add_argument("--samples", type=positive_int, metavar="L", help="samples per datapoint (k for IWAE)")
    p.add_argument("--decoder", choices=LIKELIHOOD_NAMES, help="override the variant's decoder")
    p.add_argument("--hidden", type=positive_int, metavar="H", help="override the hidden width (400)")
    p.add_argument("--gaussian-variance", type=positive_float, metavar="C",
                   help="c of the Gaussian decoder N(x; f(z), cI) (default 0.01)")
    p.add_argument("--learn-variance", action="store_true", default=None, help="learn c (Gaussian decoder)")
    p.add_argument("--epochs", type=nonneg_int, default=None, help="epochs to train up to (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--seed", type=seed_int, default=1)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: autocast matrix products, losses and optimiser state in float32")
    add_compile(p, resume=True)
    p.add_argument("--binarize", choices=BINARIZE, default="none",
                   help="none: grey levels (the seed); static: one fixed draw; dynamic: a new draw per batch")
    p.add_argument("--limit-train", type=positive_int, metavar="N", help="train on the first N images only")
    p.add_argument("--sweep", metavar="ID", help="tag the run as part of sweep ID (bench.sweep), for reports")
    p.add_argument("--nll-samples", type=nonneg_int, default=0, metavar="K",
                   help="after training, estimate the test NLL with K importance samples (0: skip)")
    p.add_argument("--snr-every", type=nonneg_int, default=0, metavar="N",
                   help="every N epochs, log the gradient SNR on a fixed minibatch as snr/train/... into the "
                        "run's nested run '<run name> · SNR during training' (0: off; a resume keeps the run's)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue this run from its last completed epoch")
    p.add_argument("--wait", action="store_true",
                   help="with --resume: if another process holds the run, wait until it is free (default: refuse)")
    add_common(p, experiment=DEFAULT_EXPERIMENT, progress=True)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        width = max(map(len, REGISTRY))
        for name, v in REGISTRY.items():
            print(f"{name:<{width}}  {v.description}")
        return 0
    # What can be checked without torch and MLflow is checked first: a bad store or variant is one line at once.
    check_store(args.tracking_uri, existing=bool(args.resume))
    if not args.resume:
        variant_from_args(args)
    progress.note("loading torch and MLflow ...")
    from bench.training.lifecycle import run_command

    progress.note("")
    return run_command(parser, args, argv)


if __name__ == "__main__":
    exit_process(main_guard(main, PROG)())
