"""python -m bench.snr: gradient signal-to-noise against K (IWAE, IWAE-DReG, IWAE-STL, the K-sample ELBO) at a
trained run's parameters, with log-log slopes and their intervals, logged into that run.

    python -m bench.snr --run-id RUN_ID [--images 8] [--repeats 100] [--k-grid 1,3,10,30,100,300,1000]

What it measures: bench.evaluation.snr; the command's work: bench.evaluation.snr_study.
"""

from __future__ import annotations

import argparse

from bench.cli import add_common, exit_process, listof, main_guard, positive_int, seed_int
from bench.evaluation import defaults as d
from bench.progs import SNR as PROG


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Gradient SNR against the number of importance samples K, "
                                "at a trained run's parameters (Rainforth et al. 2018; Tucker et al. 2018).")
    p.add_argument("--run-id", required=True, metavar="RUN_ID", help="a run made by bench.run, with a model")
    p.add_argument("--images", type=positive_int, default=d.SNR_IMAGES, metavar="M",
                   help=f"the first M test images, binarised as the run was (default {d.SNR_IMAGES})")
    p.add_argument("--repeats", type=positive_int, default=d.SNR_REPEATS, metavar="R",
                   help=f"noise draws per estimator and K (default {d.SNR_REPEATS}, at least {d.SNR_GROUPS})")
    p.add_argument("--k-grid", type=listof(positive_int, "positive integers"), default=list(d.SNR_K_GRID),
                   metavar="LIST", help=f"the values of K (default {','.join(map(str, d.SNR_K_GRID))})")
    p.add_argument("--seed", type=seed_int, default=d.SNR_SEED, help=f"noise seed (default {d.SNR_SEED})")
    p.add_argument("--out", metavar="DIR", help="also write the table, slopes, Markdown and figure to DIR")
    add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)  # --help and bad flags answer here, before torch and MLflow load
    from bench.evaluation.snr_study import main_args

    return main_args(argv, parser)


if __name__ == "__main__":
    exit_process(main_guard(main, PROG)())
