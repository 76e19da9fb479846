"""python -m bench.report: tracked runs -> a Markdown comparison with seaborn figures.

    python -m bench.report [--experiment NAME] [--sweep ID] [--tracking-uri URI] [--out DIR] [--date YYYY-MM-DD]

Writes DIR/report.md and its figures in DIR/figures/ (linked by relative paths). Only FINISHED runs are
averaged; failed, killed and unfinished runs are listed on their own. The same store gives the same report:
everything is sorted and the only clock reading is the header's date (--date, else $SOURCE_DATE_EPOCH,
else today, UTC).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from pathlib import Path

from bench.cli import main_guard
from bench.errors import UserError
from bench.report_anchors import anchors
from bench.report_comparisons import comparisons, gradient_variance
from bench.report_data import ReportData, load
from bench.report_markdown import slug
from bench.report_sections import (
    FIGURES,
    Ctx,
    all_runs,
    configuration,
    failures,
    header,
    missing,
    pictures,
    summary,
    trends,
    tuning,
)
from bench.tracking import open_store

PROG = "python -m bench.report"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Write a Markdown report of tracked vae-bench runs.")
    p.add_argument("--experiment", metavar="NAME",
                   help="MLflow experiment (default vae-bench; with --sweep alone, every experiment)")
    p.add_argument("--sweep", metavar="ID", help="only the runs tagged bench.sweep=ID")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--out", metavar="DIR", help="output folder (default reports/<sweep or experiment>); "
                   "report.md is overwritten and figures/ rewritten")
    p.add_argument("--date", metavar="YYYY-MM-DD", help="date in the header (default $SOURCE_DATE_EPOCH or today)")
    return p


def report_date(flag: str | None) -> str:
    if flag:
        try:
            return dt.date.fromisoformat(flag).isoformat()
        except ValueError:
            raise UserError(f"--date {flag!r} is not a date; give YYYY-MM-DD") from None
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        return dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc).date().isoformat()
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def render(data: ReportData, out: Path, date: str, figures: bool = True) -> str:
    """The report's Markdown; writes its figures into out/figures when ``figures``."""
    from bench import report_figures as rf

    rf.setup()
    fin = data.finished
    data.runs["sec_per_epoch"] = data.runs["run_id"].map(
        data.history[data.history["metric"] == "epoch_seconds"].groupby("run_id")["value"].mean()).astype(float)
    ctx = Ctx(data, out, rf.palette(sorted(set(fin["label"]))), [])
    if "decoder" not in data.runs:
        data.runs["decoder"] = None
    if fin.empty:  # an experiment of tuning studies only
        parts = [header(ctx, date), tuning(ctx)]
    else:
        parts = [header(ctx, date), summary(ctx), trends(ctx, figures), comparisons(ctx, figures),
                 gradient_variance(ctx, figures), anchors(ctx, figures), pictures(ctx, figures), tuning(ctx),
                 failures(ctx), missing(ctx), configuration(ctx), all_runs(ctx)]
    text = "\n".join(line for part in parts for line in part)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    date = report_date(args.date)
    client = open_store(args.tracking_uri, existing=True)
    data = load(client, experiment=args.experiment, sweep=args.sweep)
    out = Path(args.out) if args.out else Path("reports") / slug(args.sweep or data.experiments[0])
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    figs = out / FIGURES
    try:
        if figs.is_dir():
            for old in figs.glob("*.png"):  # figures of an earlier report into this folder
                old.unlink()
        out.mkdir(parents=True, exist_ok=True)
        text = render(data, out, date)
        (out / "report.md").write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write the report into {out} ({e.strerror or e}); give --out a folder you can "
                        "write to") from None
    print(f"wrote {out / 'report.md'} ({len(data.finished)} finished runs, "
          f"{len(list(figs.glob('*.png')))} figures in {figs})")
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main, PROG)())
