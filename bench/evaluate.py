"""python -m bench.evaluate: evaluate a trained run like the papers, logging into that same run.

    python -m bench.evaluate --run-id RUN_ID [--nll-samples 1000] [--gradient-variance] [--repeats 100]
        [--ais [--ais-steps 1000] [--ais-chains 16] [--ais-images 1000|all] [--bdmc] [--gaps] [--nll-ladder]]

What it measures: bench.evaluation.run_evaluation.
"""

from __future__ import annotations

from bench.core import interrupts, progress

# Before anything heavy is imported: a signal until the run is held leaves it as it was.
interrupts.install("python -m bench.evaluate: interrupted before anything was logged")

import argparse  # noqa: E402

# Light modules only (no torch, no MLflow): --help answers from these (issue 17).
from bench.cli import (  # noqa: E402
    ArgumentParser,
    add_common,
    exit_process,
    main_guard,
    nonneg_int,
    positive_int,
    seed_int,
)
from bench.evaluation import defaults as d  # noqa: E402
from bench.progs import EVALUATE as PROG  # noqa: E402
from bench.tracking import locks  # noqa: E402
from bench.tracking.precheck import check_store  # noqa: E402

DEFAULT_NLL_SAMPLES = d.NLL_SAMPLES


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Evaluate a trained bench.run run and log into it: "
                                "test NLL, active units, KL per dimension, gradient variance.")
    p.add_argument("--run-id", required=True, metavar="RUN_ID", help="a run made by bench.run, with a model")
    p.add_argument("--nll-samples", type=nonneg_int, default=DEFAULT_NLL_SAMPLES, metavar="K",
                   help=f"importance samples per test image for test_nll (default {DEFAULT_NLL_SAMPLES}; 0: skip)")
    p.add_argument("--gradient-variance", action="store_true",
                   help="measure every estimator's gradient variance at the run's parameters")
    p.add_argument("--repeats", type=positive_int, default=d.GRADVAR_REPEATS, metavar="R",
                   help=f"noise draws per estimator for --gradient-variance (default {d.GRADVAR_REPEATS}, at least 2)")
    a = p.add_argument_group("likelihoods you can trust (AIS, BDMC, gaps; README: Likelihoods)")
    a.add_argument("--ais", action="store_true",
                   help="test_nll_ais: annealed importance sampling with HMC on the first --ais-images test images")
    a.add_argument("--ais-steps", type=positive_int, default=d.AIS_STEPS, metavar="T",
                   help=f"annealing temperatures (default {d.AIS_STEPS})")
    a.add_argument("--ais-chains", type=positive_int, default=d.AIS_CHAINS, metavar="C",
                   help=f"chains per image, log-mean-exp'd (default {d.AIS_CHAINS})")
    a.add_argument("--ais-images", type=d.parse_images, default=d.AIS_IMAGES, metavar="N",
                   help=f"the first N test images, or 'all' (default {d.AIS_IMAGES}; at most {d.AIS_MAX_IMAGES})")
    a.add_argument("--ais-leapfrog", type=positive_int, default=d.AIS_LEAPFROG, metavar="L",
                   help=f"leapfrog steps per HMC transition (default {d.AIS_LEAPFROG})")
    a.add_argument("--ais-start", choices=("prior", "encoder"), default="prior",
                   help="the path's start: the prior p(z) (default) or the encoder's q(z|x)")
    a.add_argument("--ais-seed", type=seed_int, default=d.AIS_SEED, metavar="SEED",
                   help=f"the AIS noise (default {d.AIS_SEED})")
    a.add_argument("--bdmc", nargs="?", type=positive_int, const=d.BDMC_IMAGES, default=0,
                   metavar="M", help="bdmc_gap: forward and reverse AIS at the same settings on M images simulated "
                   f"from the model (default M {d.BDMC_IMAGES}); implies --ais")
    a.add_argument("--gaps", action="store_true", help="gap/amortization and gap/approximation (q* by Adam per "
                   "image) on the AIS images, in the run's 'likelihood' analysis run; implies --ais")
    a.add_argument("--gap-steps", type=positive_int, default=d.GAP_STEPS, metavar="S",
                   help=f"Adam steps of q* per image (default {d.GAP_STEPS})")
    a.add_argument("--nll-ladder", action="store_true", help="nll_ladder/K<k>: the IWAE bound at K = "
                   f"{', '.join(map(str, d.LADDER))} on the AIS images; implies --ais")
    p.add_argument("--limit-test", type=positive_int, metavar="N",
                   help="a quick check on the first N test images: printed, not logged to the run")
    p.add_argument("--wait", action="store_true",
                   help="if another process holds the run (training it), wait until it is free (default: refuse)")
    add_common(p, progress=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    locks.set_waiting(args.wait)  # --wait also waits for the store's locks
    check_store(args.tracking_uri, existing=True)  # a bad store is one line before torch and MLflow load
    progress.note("loading torch and MLflow ...")
    from bench.evaluation.run_evaluation import evaluate_run

    progress.note("")
    return evaluate_run(args)


if __name__ == "__main__":
    exit_process(main_guard(main, PROG)())
