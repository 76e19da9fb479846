"""python -m bench.evaluate: evaluate a trained run like the papers, logging into that same run.

    python -m bench.evaluate --run-id RUN_ID [--nll-samples 1000] [--gradient-variance] [--repeats 100]

What it measures: bench.evaluation.run_evaluation.
"""

from __future__ import annotations

from bench.core import interrupts, progress

# Before torch and MLflow are imported (seconds): a signal until the run is held leaves it as it was.
interrupts.install("python -m bench.evaluate: interrupted before anything was logged")

progress.note("loading torch and MLflow ...")

import argparse  # noqa: E402

from bench.cli import ArgumentParser, add_common, exit_process, main_guard, nonneg_int, positive_int  # noqa: E402
from bench.evaluation import gradvar  # noqa: E402
from bench.evaluation.run_evaluation import DEFAULT_NLL_SAMPLES, PROG, evaluate_run  # noqa: E402
from bench.tracking import locks  # noqa: E402

progress.note("")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Evaluate a trained bench.run run and log into it: "
                                "test NLL, active units, KL per dimension, gradient variance.")
    p.add_argument("--run-id", required=True, metavar="RUN_ID", help="a run made by bench.run, with a model")
    p.add_argument("--nll-samples", type=nonneg_int, default=DEFAULT_NLL_SAMPLES, metavar="K",
                   help=f"importance samples per test image for test_nll (default {DEFAULT_NLL_SAMPLES}; 0: skip)")
    p.add_argument("--gradient-variance", action="store_true",
                   help="measure every estimator's gradient variance at the run's parameters")
    p.add_argument("--repeats", type=positive_int, default=gradvar.REPEATS, metavar="R",
                   help=f"noise draws per estimator for --gradient-variance (default {gradvar.REPEATS}, at least 2)")
    p.add_argument("--limit-test", type=positive_int, metavar="N",
                   help="a quick check on the first N test images: printed, not logged to the run")
    p.add_argument("--wait", action="store_true",
                   help="if another process holds the run (training it), wait until it is free (default: refuse)")
    add_common(p, progress=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    locks.set_waiting(args.wait)  # --wait also waits for the store's locks
    return evaluate_run(args)


if __name__ == "__main__":
    exit_process(main_guard(main, PROG)())
