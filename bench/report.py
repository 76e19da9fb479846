"""python -m bench.report: tracked runs -> a Markdown comparison with seaborn figures.

    python -m bench.report [--experiment NAME] [--sweep ID] [--tracking-uri URI] [--out DIR] [--date YYYY-MM-DD]
                           [--baseline NAME] [--compare A:B ...]

Writes DIR/report.md, its figures in DIR/figures/ (linked by relative paths) and every table as CSV in
DIR/tables/. Only FINISHED runs are
averaged; failed, killed and unfinished runs are listed on their own. The same store gives the same report:
everything is sorted and the only clock reading is the header's date (--date, else $SOURCE_DATE_EPOCH,
else today, UTC).
"""

from __future__ import annotations

import argparse

from bench.cli import ArgumentParser, exit_process, main_guard
from bench.progs import REPORT as PROG
from bench.tracking.precheck import check_store


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Write a Markdown report of tracked vae-bench runs.")
    p.add_argument("--experiment", metavar="NAME",
                   help="MLflow experiment (default vae-bench; with --sweep alone, every experiment)")
    p.add_argument("--sweep", metavar="ID", help="only the runs tagged bench.sweep=ID")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--out", metavar="DIR", help="output folder (default reports/<sweep or experiment>); "
                   "report.md is overwritten and figures/ rewritten")
    p.add_argument("--date", metavar="YYYY-MM-DD", help="date in the header (default $SOURCE_DATE_EPOCH or today)")
    p.add_argument("--baseline", metavar="NAME", default="sgvb_b",
                   help="variant the per-epoch difference curves and compute-matched reads are taken against "
                   "(default sgvb_b)")
    p.add_argument("--compare", metavar="A:B", action="append",
                   help="also compare variant B with A, paired by seed at each latent size (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_store(args.tracking_uri, existing=True, read_only=True)  # one line before pandas, seaborn and MLflow load
    from bench.reporting.build import write_report  # seconds of imports: not for --help

    return write_report(args)


if __name__ == "__main__":
    exit_process(main_guard(main, PROG)())
