"""The report (python -m bench.report): tracked runs -> a Markdown comparison with seaborn figures.

    python -m bench.report [--experiment NAME] [--sweep ID] [--tracking-uri URI] [--out DIR] [--date YYYY-MM-DD]

Writes DIR/report.md, its figures in DIR/figures/ (linked by relative paths) and every table as CSV in DIR/tables/.
data.py reads the runs; header.py, sections.py, comparisons.py (with pairing.py and stats.py), compute.py,
gradvar.py and anchors.py write the parts; figures.py draws; markdown.py formats cells; tables.py keeps the CSVs. Only
FINISHED runs are averaged; failed, killed and unfinished runs are listed on their own. The same store gives
the same report: everything is sorted and the only clock reading is the header's date (--date, else
$SOURCE_DATE_EPOCH, else today, UTC).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
from pathlib import Path

from bench import progs
from bench.errors import UserError
from bench.reporting.anchors import anchors
from bench.reporting.comparisons import comparisons
from bench.reporting.compute import compute_matched, trend_differences
from bench.reporting.data import ReportData, load
from bench.reporting.gradvar import gradient_variance
from bench.reporting.header import header, summary
from bench.reporting.likelihoods import likelihoods
from bench.reporting.markdown import slug
from bench.reporting.pairing import check_pairs, parse_pairs
from bench.reporting.sections import FIGURES, Ctx, all_runs, configuration, failures, missing, pictures, trends, tuning
from bench.reporting.tables import TABLES
from bench.tracking.store import open_store

PROG = progs.REPORT


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


def render(data: ReportData, out: Path, date: str, figures: bool = True, baseline: str = "sgvb_b",
           pairs: list[tuple[str, str]] | None = None) -> tuple[str, Ctx]:
    """The report's Markdown and its context (whose ``tables`` the caller writes); writes the figures into
    out/figures when ``figures``."""
    from bench.reporting import figures as rf

    rf.setup()
    fin = data.finished
    data.runs["sec_per_epoch"] = data.runs["run_id"].map(
        data.history[data.history["metric"] == "epoch_seconds"].groupby("run_id")["value"].mean()).astype(float)
    ctx = Ctx(data, out, rf.palette(sorted(set(fin["label"]))), [], baseline=baseline, pairs=pairs or [])
    if "decoder" not in data.runs:
        data.runs["decoder"] = None
    if fin.empty:  # an experiment of tuning studies only
        parts = [header(ctx, date), tuning(ctx)]
    else:
        parts = [header(ctx, date), summary(ctx), trends(ctx, figures), trend_differences(ctx, figures),
                 comparisons(ctx, figures), likelihoods(ctx, figures), compute_matched(ctx, figures),
                 gradient_variance(ctx, figures),
                 anchors(ctx, figures), pictures(ctx, figures), tuning(ctx), failures(ctx), missing(ctx),
                 configuration(ctx), all_runs(ctx)]
    parts.append(ctx.tables.section())
    text = "\n".join(line for part in parts for line in part)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n", ctx


def write_report(args: argparse.Namespace) -> int:
    """What ``python -m bench.report`` does with its arguments."""
    date = report_date(args.date)
    pairs = parse_pairs(getattr(args, "compare", None))
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # no download bars from a tracking server
    client = open_store(args.tracking_uri, existing=True, read_only=True)
    data = load(client, experiment=args.experiment, sweep=args.sweep)
    check_pairs(data.finished, pairs)  # before anything is drawn
    out = Path(args.out) if args.out else Path("reports") / slug(args.sweep or data.experiments[0])
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    figs = out / FIGURES
    try:
        if figs.is_dir():
            for old in figs.glob("*.png"):  # figures of an earlier report into this folder
                old.unlink()
        out.mkdir(parents=True, exist_ok=True)
        text, ctx = render(data, out, date, baseline=getattr(args, "baseline", None) or "sgvb_b", pairs=pairs)
        ctx.tables.write(out)
        (out / "report.md").write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write the report into {out} ({e.strerror or e}); give --out a folder you can "
                        "write to") from None
    print(f"wrote {out / 'report.md'} ({len(data.finished)} finished runs, "
          f"{len(list(figs.glob('*.png')))} figures in {figs}, {len(ctx.tables.frames)} tables in {out / TABLES})")
    return 0
