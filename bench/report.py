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
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.cli import main_guard
from bench.errors import UserError
from bench.report_data import (
    CORE_METRICS,
    ReportData,
    config_params,
    gradvar_metrics,
    load,
)
from bench.tracking import open_store

PROG = "python -m bench.report"
REPO = Path(__file__).resolve().parent.parent
FIGURES = "figures"
DASH = "—"

# The anchors of ANCHORS.md.
SEED_CONFIG = {"estimator": "sgvb_b", "samples": "1", "decoder": "bernoulli", "hidden": "400",
               "batch_size": "128", "binarize": "none", "limit_train": "None"}
SEED_LATENT, SEED_LR = 20, 1e-3
# (metric, epoch) -> (seed's blog post, pytorch/examples recorded range, pytorch/examples measured here)
SEED_POINTS: dict[tuple[str, int], tuple[str, str, str]] = {
    ("train_loss", 1): ("164.42", "164.0–164.8", "164.82"),
    ("train_loss", 10): ("106.14", "106.1–106.4", "106.23"),
    ("train_recon", 1): ("~150", DASH, DASH),
    ("train_recon", 10): ("~81", DASH, DASH),
    ("train_kld", 1): ("~14", DASH, DASH),
    ("train_kld", 10): ("~25", DASH, DASH),
    ("test_loss", 1): (DASH, "126.5–128.4", "128.43"),
    ("test_loss", 10): (DASH, "105.5–105.6", "105.55"),
}
KINGMA_WELLING = {3: (128.0, 133.5), 5: (115.0, 119.0), 10: (99.0, 103.4), 20: (97.3, 99.5), 200: (97.5, 99.5)}
BURDA = [("VAE, 1 stochastic layer (Burda et al.)", "86.76", "86.47", "86.35"),
         ("IWAE, 1 stochastic layer (Burda et al.)", "86.76", "85.54", "84.78")]

METRIC_NAMES = {"train_loss": "train −ELBO", "test_loss": "test −ELBO", "test_recon": "test reconstruction",
                "test_kld": "test KL", "test_nll": "test NLL", "test_mse": "test MSE",
                "active_units": "active units", "sec_per_epoch": "s / epoch", "train_recon": "train reconstruction",
                "train_kld": "train KL"}
FORMATS = {"test_mse": ".4f", "active_units": ".1f", "sec_per_epoch": ".2f"}


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


# --- small helpers -------------------------------------------------------------------------------------------


def fmt(metric: str) -> str:
    if metric.startswith("gradvar_"):
        return ".3g"
    return FORMATS.get(metric, ".2f")


def cell(values: pd.Series, spec: str, total: int | None = None) -> str:
    """mean ± sd over the runs that have the value; '(k of n runs)' when some lack it; — when none has it."""
    v = values.dropna()
    if v.empty:
        return DASH
    text = format(v.mean(), spec)
    if len(v) > 1:
        text += f" ± {format(v.std(ddof=1), spec)}"
    if total is not None and len(v) < total:
        text += f" ({len(v)} of {total} runs)"
    return text


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    df = pd.DataFrame(rows).astype(object).fillna("").map(esc)
    return df.to_markdown(index=False, disable_numparse=True)


def esc(text: Any) -> str:
    """Safe inside a Markdown table cell (idempotent)."""
    return re.sub(r"(?<!\\)\|", r"\\|", re.sub(r"\s+", " ", str(text))).strip()


def join_ints(values: Any) -> str:
    return ", ".join(str(v) for v in sorted({int(v) for v in values if pd.notna(v)}))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def num(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


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


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"`{sha}`" + (" with uncommitted changes" if dirty else "")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import mlflow
    import torch

    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical cores; "
            f"Python {platform.python_version()}, torch {torch.__version__}, mlflow {mlflow.__version__}")


# --- the report's pieces -------------------------------------------------------------------------------------


@dataclass
class Ctx:
    data: ReportData
    out: Path
    colours: dict[str, tuple[float, float, float]]
    figures: list[str]

    @property
    def fin(self) -> pd.DataFrame:
        return self.data.finished

    def figure(self, name: str) -> Path:
        self.figures.append(name)
        return self.out / FIGURES / name

    def has(self, metric: str, runs: pd.DataFrame | None = None) -> bool:
        runs = self.fin if runs is None else runs
        return metric in runs and bool(runs[metric].notna().any())


def family(decoder: Any) -> str:
    return str(decoder) if pd.notna(decoder) else "unknown"


def recon_name(fam: str) -> str:
    return {"bernoulli": "BCE", "gaussian": "Gaussian −log N"}.get(fam, "reconstruction")


def header(ctx: Ctx, date: str) -> list[str]:
    d = ctx.data
    runs = d.runs
    main = d.main
    statuses = main["status"].value_counts()
    counts = ", ".join(f"{statuses.get(s, 0)} {s.lower()}" for s in ("FINISHED", "FAILED", "KILLED"))
    other = int(len(main) - statuses.reindex(["FINISHED", "FAILED", "KILLED"]).fillna(0).sum())
    if other:
        counts += f", {other} unfinished"
    fin = ctx.fin
    epochs = sorted(set(fin["epochs_logged"])) or [0]
    epoch_text = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}–{epochs[-1]}"
    what = f"sweep `{d.sweep}`" if d.sweep else f"experiment `{d.experiments[0]}`"
    title = f"# vae-bench report: {what}"
    where = f"sweep `{d.sweep}` in experiment {', '.join(f'`{e}`' for e in d.experiments)}" if d.sweep \
        else f"experiment `{d.experiments[0]}`"
    n_studies = int((runs["role"] == "study").sum())
    n_trials = int((runs["role"] == "trial").sum())
    tuning = (f"{n_studies} Optuna stud{'y' if n_studies == 1 else 'ies'} of {n_trials} trial runs "
              "(see *Tuning studies*)") if n_studies else ""
    shown = fin if len(fin) else runs
    devices = sorted(set(shown.get("device", pd.Series(dtype=object)).dropna()) |
                     set(shown.get("precision", pd.Series(dtype=object)).dropna()))
    if len(fin):
        count_line = (f"{len(main)} runs: {counts}. Averaged: {len(fin)} finished runs of {fin['label'].nunique()} "
                      f"variants × latent sizes {join_ints(fin['latent'])} × seeds {join_ints(fin['seed'])}, "
                      f"{epoch_text} epoch{'' if epoch_text == '1' else 's'} each"
                      + (f"; plus {tuning}" if tuning else "") + ".")
    else:
        count_line = f"no runs of a comparison here; {tuning or 'no tuning studies'}."
    lines = [
        title, "",
        f"- **Date:** {date}",
        f"- **Code:** vae-bench commit {git_commit()}",
        f"- **Runs:** {where}, tracking store `{d.uri}`",
        f"- **Counts:** {count_line}",
        f"- **Machine:** report made on {machine()}; runs trained on {', '.join(devices) or 'unknown'}.",
        "",
        "All losses are in nats per image and lower is better: −ELBO = reconstruction + KL, the negative of the "
        "evidence lower bound. Test metrics are computed on the 10,000 MNIST test images in the same way for every "
        "variant (analytic KL, one reparameterised sample from a fixed noise seed), so any two runs compare on "
        "equal terms. Cells read *mean ± standard deviation over seeds*; a dash means not measured.",
        "",
    ]
    return lines


def summary(ctx: Ctx) -> list[str]:
    fin = ctx.fin
    lines = ["## Summary", ""]
    families = sorted(fin["decoder"].map(family).unique()) if "decoder" in fin else ["unknown"]
    for fam in families:
        runs = fin[fin["decoder"].map(family) == fam] if "decoder" in fin else fin
        cols = [("train_loss", "train −ELBO"), ("test_loss", "test −ELBO"),
                ("test_recon", f"test {recon_name(fam)}"), ("test_kld", "test KL")]
        cols += [(m, METRIC_NAMES[m]) for m in ("test_nll", "active_units") if ctx.has(m, runs)]
        cols += [("sec_per_epoch", "s / epoch")]
        rows = []
        for (label, latent), g in runs.groupby(["label", "latent"], sort=True, dropna=False):
            epochs = sorted(set(g["epochs_logged"]))
            row = {"variant": label, "z": latent, "seeds": join_ints(g["seed"]),
                   "epochs": str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}–{epochs[-1]}"}
            for m, name in cols:
                row[name] = cell(g[m], fmt(m), len(g)) if m in g else DASH
            rows.append(row)
        if len(families) > 1:
            lines += [f"### {fam.capitalize()} decoder", ""]
        if fam == "gaussian":
            lines += ["The Gaussian decoder's reconstruction term is a density (−log N(x; f(z), cI) on grey levels), "
                      "so its −ELBO is not on the Bernoulli scale; compare decoders on test MSE "
                      "(*Bernoulli vs Gaussian* below).", ""]
        lines += [table(rows), ""]
    if ctx.has("test_nll"):
        nll = sorted({int(num(v) or 0) for v in ctx.fin.get("nll_samples", pd.Series(dtype=object)).dropna()})
        k = f" with {', '.join(map(str, nll))} importance samples" if nll else ""
        lines += [f"Test NLL is the importance-sampled −log p(x){k}, an upper bound tighter than −ELBO.", ""]
    if ctx.has("active_units"):
        lines += ["Active units: latent dimensions whose encoder mean varies over the test set by more than 0.01 "
                  "(Burda et al.'s rule).", ""]
    lines += ["*s / epoch*: wall-clock seconds per epoch, training plus test evaluation, images and checkpoint, "
              "averaged over the epochs of each run.", ""]
    return lines


def long_history(ctx: Ctx, metrics: list[str], runs: pd.DataFrame) -> pd.DataFrame:
    h = ctx.data.history
    h = h[h["metric"].isin(metrics) & h["run_id"].isin(runs["run_id"])]
    meta = runs[["run_id", "label", "latent", "seed"]]
    df = h.merge(meta, on="run_id", how="inner").rename(columns={"step": "epoch", "metric": "quantity"})
    return df.sort_values(["label", "latent", "seed", "quantity", "epoch"], kind="stable").reset_index(drop=True)


def trends(ctx: Ctx, figures: bool) -> list[str]:
    from bench import report_figures as rf

    fin = ctx.fin
    lines = ["## Trends", "",
             "Each line is the mean over seeds and the band ±1 standard deviation; columns are latent sizes. "
             "The seed's observation — reconstruction falls while KL rises as training goes on — shows as the "
             "middle row going down while the bottom row goes up.", ""]
    for fam in sorted(fin["decoder"].map(family).unique()):
        runs = fin[fin["decoder"].map(family) == fam]
        for split in ("test", "train"):
            rows = [(f"{split}_loss", "−ELBO"), (f"{split}_recon", recon_name(fam)),
                    (f"{split}_kld", "KL")]
            long = long_history(ctx, [q for q, _ in rows], runs)
            if long.empty:
                continue
            name = f"trends_{split}_{fam}.png"
            title = f"{split.capitalize()} −ELBO, reconstruction and KL per epoch ({fam.capitalize()} decoder)"
            if figures:
                colours = {k: v for k, v in ctx.colours.items() if k in set(long["label"])}
                rf.trends(long, rows, colours, title, ctx.figure(name))
            lines += [f"![{title}]({FIGURES}/{name})", ""]
    lines += seed_observation(ctx)
    return lines


def seed_observation(ctx: Ctx) -> list[str]:
    """Does training reconstruction fall and KL rise from the first to the last epoch, as the seed saw?"""
    long = long_history(ctx, ["train_recon", "train_kld"], ctx.fin)
    if long.empty or long["epoch"].nunique() < 2:
        return []
    means = long.groupby(["label", "latent", "quantity", "epoch"])["value"].mean()
    seen, total, examples = 0, 0, []
    for (label, latent), g in means.groupby(level=["label", "latent"], sort=True):
        g = g.droplevel(["label", "latent"])
        try:
            r, k = g.loc["train_recon"], g.loc["train_kld"]
        except KeyError:
            continue
        if len(r) < 2 or len(k) < 2:
            continue
        total += 1
        ok = r.iloc[-1] < r.iloc[0] and k.iloc[-1] > k.iloc[0]
        seen += ok
        examples.append(f"{label} z={latent}: reconstruction {r.iloc[0]:.1f} → {r.iloc[-1]:.1f}, "
                        f"KL {k.iloc[0]:.1f} → {k.iloc[-1]:.1f} (epochs {r.index[0]}–{r.index[-1]})")
    if not total:
        return []
    lines = [f"Training reconstruction fell and KL rose from the first to the last epoch in **{seen} of {total}** "
             "variant × latent settings (the seed: BCE ~150 → ~81, KLD ~14 → ~25 over 10 epochs).", "",
             "<details><summary>Per setting (training set, mean over seeds)</summary>", ""]
    lines += [f"- {e}" for e in examples] + ["", "</details>", ""]
    return lines


# --- comparisons ---------------------------------------------------------------------------------------------


@dataclass
class Axis:
    title: str
    intro: str
    drop: set[str]  # config params that change along the axis
    value: Callable[[pd.Series], str | None]  # a run's position on the axis; None: not on this axis
    order: Callable[[str], Any]
    metrics: list[str]
    latent_is_axis: bool = False
    better: str = ""  # how to phrase the difference column, for two-valued axes


def _decoder_value(r: pd.Series) -> str | None:
    if r.get("decoder") == "bernoulli":
        return "Bernoulli"
    if r.get("decoder") == "gaussian":
        if str(r.get("learn_variance")) == "True":
            return "Gaussian, learned c"
        return f"Gaussian c={r.get('gaussian_variance', '?')}"
    return None


AXES = [
    Axis("Estimator A vs B",
         "SGVB A samples the whole bound, log p(x, z) − log q(z|x); SGVB B takes the KL term in closed form. Same "
         "model, data and seeds otherwise.",
         {"estimator", "baseline"},
         lambda r: {"sgvb_a": "A (sgvb_a)", "sgvb_b": "B (sgvb_b)"}.get(r.get("estimator")), str,
         ["test_loss", "test_nll", "sec_per_epoch"], better="B − A"),
    Axis("L = 1 vs L > 1 samples",
         "L reparameterised samples per datapoint per step (SGVB A and B): a less noisy gradient at L times the "
         "decoder cost.",
         {"samples"},
         lambda r: f"L={r['samples']}" if r.get("estimator") in ("sgvb_a", "sgvb_b") and pd.notna(r.get("samples"))
         else None, lambda v: int(v.split("=")[1]),
         ["test_loss", "test_nll", "sec_per_epoch"], better="L>1 − L=1"),
    Axis("Bernoulli vs Gaussian decoder (test MSE)",
         "The two likelihoods' −ELBOs are on different scales (a probability of grey levels vs a density), so they "
         "compare on the squared error of the decoder's mean per pixel, which both share.",
         {"decoder", "gaussian_variance", "learn_variance"}, _decoder_value, lambda v: (v != "Bernoulli", v),
         ["test_mse"], better="Gaussian − Bernoulli"),
    Axis("Latent size",
         "The same variant at each latent size.",
         set(), lambda r: f"z={r['latent']}" if pd.notna(r.get("latent")) else None,
         lambda v: int(v.split("=")[1]), ["test_loss", "test_kld", "active_units", "test_mse"], latent_is_axis=True),
]


def compare(ctx: Ctx, axis: Axis) -> tuple[list[dict[str, Any]], list[str], list[tuple[str, float, bool]]]:
    """Rows of the comparison table, its value columns, and per row of a 2-value axis (metric, difference,
    whether the difference exceeds the spread over seeds)."""
    fin = ctx.fin.copy()
    keys = [k for k in config_params(ctx.data.params) if k not in axis.drop]
    fin["_v"] = [axis.value(r) for _, r in fin.iterrows()]
    fin = fin[fin["_v"].notna()]
    if fin.empty:
        return [], [], []
    context = fin[keys].astype(object).fillna("-").astype(str).agg("|".join, axis=1) if keys else pd.Series(
        "", index=fin.index)
    if not axis.latent_is_axis:
        context = context + "|z" + fin["latent"].astype(str)
    groups = []
    for _, g in fin.groupby(context, sort=True):
        if g["_v"].nunique() >= 2:
            values = sorted(g["_v"].unique(), key=axis.order)
            labels = list(dict.fromkeys(lab for v in values for lab in sorted(g.loc[g["_v"] == v, "label"])))
            groups.append((labels, g["latent"].iloc[0], g))
    groups.sort(key=lambda t: (t[0], t[1] if not axis.latent_is_axis else 0))
    columns = sorted({v for _, _, g in groups for v in g["_v"]}, key=axis.order)
    rows, diffs = [], []
    for labels, latent, g in groups:
        for m in axis.metrics:
            if not ctx.has(m, g):
                continue
            row: dict[str, Any] = {"variants": " vs ".join(labels)}
            if not axis.latent_is_axis:
                row["z"] = latent
            row["metric"] = METRIC_NAMES.get(m, m)
            for v in columns:
                sub = g[g["_v"] == v]
                row[v] = cell(sub[m], fmt(m), len(sub)) if len(sub) else ""
            if len(columns) == 2 and axis.better:
                (a, sa), (b, sb) = ((g.loc[g["_v"] == v, m].mean(), g.loc[g["_v"] == v, m].std()) for v in columns)
                d = b - a
                row[f"Δ ({axis.better})"] = DASH if pd.isna(d) else signed(d, fmt(m))
                if pd.notna(d):  # beyond the seed-to-seed spread: |d| above the pooled sd of the two cells
                    spread = ((sa**2 + sb**2) / 2) ** 0.5
                    diffs.append((m, d, bool(pd.notna(spread) and abs(d) > spread)))
            rows.append(row)
    return rows, columns, diffs


def comparisons(ctx: Ctx, figures: bool) -> list[str]:
    from bench import report_figures as rf

    lines = ["## Comparisons", ""]
    for axis in AXES:
        rows, columns, diffs = compare(ctx, axis)
        title = axis.title
        if axis.latent_is_axis:
            title = "Latent size " + " vs ".join(str(z) for z in sorted(ctx.fin["latent"].dropna().unique()))
        lines += [f"### {title}", "", axis.intro, ""]
        if not rows:
            lines += ["Not measured: no two finished runs here differ only along this axis.", ""]
            continue
        lines += [table(rows), ""]
        if diffs and axis.better:
            lines += [verdict(axis, columns, diffs), ""]
    if figures and ctx.has("test_loss") and ctx.fin["latent"].nunique() > 1:
        fam = ctx.fin["decoder"].map(family)
        bern = sorted(set(ctx.fin.loc[fam == "bernoulli", "label"]))
        panels = []
        if bern:
            panels.append(("test_loss", "test −ELBO (nats)", bern))
        if ctx.has("test_mse"):
            panels.append(("test_mse", "test MSE per pixel", sorted(set(ctx.fin["label"]))))
        if ctx.has("active_units"):
            panels.append(("active_units", "active units", sorted(set(ctx.fin["label"]))))
        name = "final_vs_latent.png"
        rf.finals(ctx.fin, panels, ctx.colours, "Final test metrics against latent size", ctx.figure(name))
        lines += [f"![Final test metrics against latent size]({FIGURES}/{name})", "",
                  "Means over seeds with ±1 sd bars, at the last epoch." +
                  (" The −ELBO panel shows Bernoulli-decoder variants only." if len(bern) < len(ctx.colours) else ""),
                  ""]
    return lines


def signed(x: float, spec: str) -> str:
    text = format(x, "+" + spec)
    return format(0.0, spec) if float(text) == 0 else text


def verdict(axis: Axis, columns: list[str], diffs: list[tuple[str, float, bool]]) -> str:
    parts = []
    for m in dict.fromkeys(d[0] for d in diffs):
        ds = [(d, big) for mm, d, big in diffs if mm == m]
        lower = sum(d < 0 for d, _ in ds)
        big = sum(b for _, b in ds)
        parts.append(f"{METRIC_NAMES.get(m, m)}: {columns[1]} is lower in {lower} of {len(ds)} settings, mean "
                     f"difference {signed(sum(d for d, _ in ds) / len(ds), fmt(m))}; {big} of {len(ds)} differences "
                     "exceed the spread over seeds")
    return "Lower is better. " + "; ".join(parts) + "."


ESTIMATOR_NAMES = {"sgvb_a": "SGVB A", "sgvb_b": "SGVB B", "score_function": "score function",
                   "score_function_baseline": "score function + baseline", "iwae": "IWAE"}


def _estimator_name(est: str) -> str:
    m = re.fullmatch(r"(.+)_L(\d+)", est)
    if m:
        return f"{ESTIMATOR_NAMES.get(m[1], m[1])}, L={m[2]}"
    if est == "iwae":
        try:
            from bench.gradvar import IWAE_K  # the k bench.evaluate measures IWAE with

            return f"IWAE, k={IWAE_K}"
        except ImportError:
            pass
    return ESTIMATOR_NAMES.get(est, est)


def _estimator_order(est: str) -> tuple[int, str, int]:
    m = re.fullmatch(r"(.+)_L(\d+)", est)
    base, n = (m[1], int(m[2])) if m else (est, 0)
    known = list(ESTIMATOR_NAMES)
    return (known.index(base) if base in known else len(known), base, n)


def _ratio(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def gradient_variance(ctx: Ctx, figures: bool) -> list[str]:
    """gradvar_<encoder|decoder>_<estimator> of bench.evaluate --gradient-variance, per trained variant."""
    from bench import report_figures as rf

    metrics = gradvar_metrics(m for m in ctx.data.metrics if ctx.has(m))
    lines = ["## Gradient variance", ""]
    if not metrics:
        return lines + ["Not measured in these runs (`python -m bench.evaluate --run-id RUN --gradient-variance` "
                        "logs it into a run).", ""]
    fin = ctx.fin
    measured = fin[fin[metrics].notna().any(axis=1)]
    lines += ["Total variance (summed over parameters) of each estimator's minibatch gradient at a trained model's "
              "final parameters, over repeated noise draws on one fixed minibatch of test images "
              "(`bench.evaluate --gradient-variance`). Rows are the trained models, columns the estimator measured. "
              "The seed expects the naive score-function estimator to be far noisier than the reparameterised "
              "ones.", ""]
    for part in ("encoder", "decoder"):
        for sweep in (False, True):
            ests = sorted({m.split("_", 2)[2] for m in metrics if m.split("_")[1] == part
                           and bool(re.search(r"_L\d+$", m)) == sweep}, key=_estimator_order)
            if not ests:
                continue
            rows = []
            for (label, latent), g in measured.groupby(["label", "latent"], sort=True):
                row = {"trained variant": label, "z": latent, "seeds": join_ints(g["seed"])}
                for est in ests:
                    row[_estimator_name(est)] = cell(g[f"gradvar_{part}_{est}"], ".3g", len(g))
                rows.append(row)
            what = "against the number of samples L" if sweep else "by estimator"
            block = [f"**{part.capitalize()} gradient variance {what}**", "", table(rows), ""]
            if part == "decoder":  # the same for A, B and the score function (the same noise): folded away
                block = [f"<details><summary>{part.capitalize()} gradient variance {what}</summary>", "",
                         table(rows), "", "</details>", ""]
            lines += block
    ratios = []
    if "gradvar_encoder_sgvb_b" in measured:
        base = measured["gradvar_encoder_sgvb_b"]
        for est in ("sgvb_a", "score_function", "score_function_baseline", "iwae"):
            col = f"gradvar_encoder_{est}"
            if col in measured and (measured[col] / base).notna().any():
                r = (measured[col] / base).dropna()
                spread = f" (range {_ratio(r.min())}–{_ratio(r.max())})" if len(r) > 1 else ""
                ratios.append(f"{_estimator_name(est)} ×{_ratio(r.median())}{spread}")
    if ratios:
        lines += ["Encoder gradient variance relative to SGVB B (median over the measured models): "
                  + "; ".join(ratios) + ".", ""]
    if figures:
        ests = sorted({m.split("_", 2)[2] for m in metrics if not re.search(r"_L\d+$", m)}, key=_estimator_order)
        labels = sorted(set(measured["label"]))
        shown = "sgvb_b" if "sgvb_b" in labels else labels[0]
        rows = []
        for _, r in measured[measured["label"] == shown].iterrows():
            for part in ("encoder", "decoder"):
                for est in ests:
                    v = r.get(f"gradvar_{part}_{est}")
                    if pd.notna(v):
                        rows.append({"part": part, "estimator": _estimator_name(est), "latent": r["latent"],
                                     "label": r["label"], "value": v})
        if rows:
            name = "gradient_variance.png"
            rf.gradvar(pd.DataFrame(rows), [_estimator_name(e) for e in ests],
                       f"Gradient variance of each estimator at trained {shown} parameters", ctx.figure(name))
            lines += [f"![Gradient variance by estimator]({FIGURES}/{name})", "",
                      f"Each point: mean over the measured {shown} models of that latent size, bars ±1 sd "
                      "(when more than one seed was measured); log scale.", ""]
    lines += ["Signal-to-noise ratios (`gradsnr_*`) and a per-model table (`evaluation/gradvar.md`) are in each "
              "measured run.", ""]
    return lines


def _seed_runs(fin: pd.DataFrame) -> pd.DataFrame:
    ok = pd.Series(True, index=fin.index)
    for k, v in SEED_CONFIG.items():
        ok &= fin[k].astype(str) == v if k in fin else False
    ok &= fin["latent"] == SEED_LATENT
    ok &= fin["lr"].map(num) == SEED_LR if "lr" in fin else False
    return fin[ok]


def seed_verdict(hist: pd.DataFrame, label: str) -> list[str]:
    """Where the suite's mean stands against the pytorch/examples numbers measured on this kind of machine."""
    parts = []
    for m, epoch, what in (("train_loss", 1, "train −ELBO"), ("test_loss", 1, "test −ELBO"),
                           ("train_loss", 10, "train −ELBO"), ("test_loss", 10, "test −ELBO")):
        v = hist.loc[(hist["quantity"] == m) & (hist["epoch"] == epoch), "value"]
        if v.empty:
            continue
        ref = float(SEED_POINTS[(m, epoch)][2])
        parts.append(f"{what} at epoch {epoch} {v.mean():.2f} vs {ref:.2f} ({signed(v.mean() - ref, '.2f')} nats)")
    if not parts:
        return []
    return [f"{label} against pytorch/examples measured on this kind of machine (seed 1): " + "; ".join(parts)
            + ". The *recorded* column shows how far runs of the reference itself spread.", ""]


def anchors(ctx: Ctx, figures: bool) -> list[str]:
    from bench import report_figures as rf

    lines = ["## Against the seed and the literature", "", "### The seed's run", ""]
    runs = _seed_runs(ctx.fin)
    if runs.empty:
        lines += ["No finished run here has the seed's configuration (SGVB B, L=1, Bernoulli, 784-400-20, "
                  "Adam 1e-3, batch 128, the full 60,000 grey-level training images), so the seed's curve is not "
                  "set beside these numbers.", ""]
    else:
        hist = long_history(ctx, ["train_loss", "train_recon", "train_kld", "test_loss"], runs)
        labels = sorted(set(runs["label"]))
        rows = []
        for (m, epoch), (seed, rng, measured) in SEED_POINTS.items():
            row = {"quantity": METRIC_NAMES[m].replace("reconstruction", "BCE"), "epoch": epoch,
                   "seed (blog post)": seed,
                   "pytorch/examples (recorded)": rng, "pytorch/examples (measured here)": measured}
            for label in labels:
                v = hist[(hist["label"] == label) & (hist["quantity"] == m) & (hist["epoch"] == epoch)]
                n = int((runs["label"] == label).sum())
                row[f"{label}, this suite ({n} seeds)"] = cell(v["value"], ".2f", n) if len(v) else "not trained"
            rows.append(row)
        lines += ["The seed trains SGVB B, L=1, a Bernoulli decoder, 784-400-20 with ReLU, Adam 1e-3, batch 128, on "
                  "grey-level MNIST for 10 epochs; the runs below have that configuration. Training figures are "
                  "epoch averages over the training set while the weights change, as the seed prints them.", "",
                  table(rows), ""]
        lines += seed_verdict(hist[hist["label"] == labels[0]], labels[0])
        if figures and not hist.empty:
            seed = "the seed's blog post (BCE and KL approximate)"
            panels = [("train_loss", "train −ELBO", {1: 164.42, 10: 106.14}, seed),
                      ("train_recon", "train BCE", {1: 150.0, 10: 81.0}, seed),
                      ("train_kld", "train KL", {1: 14.0, 10: 25.0}, seed),
                      ("test_loss", "test −ELBO", {1: 128.43, 10: 105.55}, "pytorch/examples, measured here")]
            first = hist[hist["label"] == labels[0]]
            name = "anchor_seed.png"
            rf.anchor_curve(first, panels, f"{labels[0]}, z = 20, against the seed's numbers", ctx.figure(name))
            lines += [f"![{labels[0]} against the seed's curve]({FIGURES}/{name})", ""]
    lines += ["### Kingma & Welling (2014), AEVB", ""]
    kw = ctx.fin[(ctx.fin.get("estimator") == "sgvb_b") & (ctx.fin.get("samples").astype(str) == "1")
                 & (ctx.fin.get("decoder") == "bernoulli") & ctx.fin["latent"].isin(list(KINGMA_WELLING))] \
        if {"estimator", "samples", "decoder"} <= set(ctx.fin) else ctx.fin.iloc[:0]
    if kw.empty:
        lines += [f"No finished SGVB B, L=1, Bernoulli run here has a latent size of theirs "
                  f"({', '.join(map(str, KINGMA_WELLING))}).", ""]
    else:
        rows = []
        for (label, latent), g in kw.groupby(["label", "latent"], sort=True):
            tr, te = KINGMA_WELLING[int(latent)]
            rows.append({"N_z": latent, "AEVB train": f"≈{tr:g}", "AEVB test": f"≈{te:g}", "variant": label,
                         "epochs": join_ints(g["epochs_logged"]), "train −ELBO": cell(g["train_loss"], ".2f", len(g)),
                         "test −ELBO": cell(g["test_loss"], ".2f", len(g))})
        lines += ["Their Fig. 2 reports the average lower bound per datapoint; shown here negated (−ELBO, nats) to "
                  "match this report, read off the figure to about ±1 nat. A loose comparison: they use 500 tanh "
                  "hidden units, Adagrad and minibatches of 100, and train far longer than these runs, while this "
                  "suite uses 400 ReLU units and Adam.", "", table(rows), ""]
    lines += ["### Burda, Grosse & Salakhutdinov (2015), IWAE", ""]
    binarised = ctx.fin[ctx.fin.get("binarize", pd.Series("none", index=ctx.fin.index)).isin(["static", "dynamic"])]
    if binarised.empty or not ctx.has("test_nll", binarised):
        lines += ["Their test NLLs are on binarised MNIST; no finished run here was trained on binarised images "
                  "with its test NLL measured (`--binarize dynamic --nll-samples 5000`), and a grey-level "
                  "Bernoulli likelihood is not a probability of binary images, so their table does not apply.", ""]
    else:
        rows = [{"model": m, "k=1": a, "k=5": b, "k=50": c} for m, a, b, c in BURDA]
        lines += ["Their Table 1 (784-200-200-50 tanh, Adam, batch 20, 3,280 epochs, NLL from 5,000 importance "
                  "samples), then pythae's VAE reproduction (784-400 ReLU, 40 latent, static binarisation, 500 "
                  "epochs, 200 samples): 89.78. A loose comparison: different architectures and far longer training.",
                  "", table(rows), ""]
        ours = []
        for (label, latent), g in binarised.groupby(["label", "latent"], sort=True):
            if g["test_nll"].notna().any():
                ours.append({"variant": label, "z": latent, "binarisation": join_str(g["binarize"]),
                             "epochs": join_ints(g["epochs_logged"]), "test NLL": cell(g["test_nll"], ".2f", len(g))})
        lines += ["This suite, binarised runs:", "", table(ours), ""]
    return lines


def join_str(values: pd.Series) -> str:
    return ", ".join(sorted({str(v) for v in values.dropna()}))


def pictures(ctx: Ctx, figures: bool) -> list[str]:
    """The best finished run of each variant (lowest final test −ELBO): its last epoch's grids."""
    lines = ["## Reconstructions and samples", "",
             "For each variant, its best finished run (lowest final test −ELBO over latent sizes and seeds) at its "
             "last epoch: 8 test digits above their reconstructions, and decodes of 64 draws from the prior.", ""]
    client = None
    rows = []
    used: set[str] = set()
    for label, g in ctx.fin.groupby("label", sort=True):
        g = g.sort_values(["test_loss", "run_id"], na_position="last", kind="stable")
        best = g.iloc[0]
        if pd.isna(best.get("test_loss")):
            continue
        if client is None:
            from mlflow import MlflowClient

            client = MlflowClient(ctx.data.uri)
        s = slug(label)
        while s in used:
            s += "-"
        used.add(s)
        links = {}
        for kind in ("reconstruction", "samples"):
            name = f"best_{s}_{kind}.png"
            if not figures or fetch_image(client, best["run_id"], kind, ctx.figure(name)):
                links[kind] = f"![{kind}, {esc(label)}]({FIGURES}/{name})"
        if not links:
            continue
        rows.append({"variant": label, "best run": f"{best['run_name']} (`{best['run_id'][:8]}`)",
                     "z": best["latent"], "test −ELBO": f"{best['test_loss']:.2f}",
                     "reconstructions (top: data)": links.get("reconstruction", "not logged"),
                     "samples": links.get("samples", "not logged")})
    if not rows:
        return lines + ["No finished run here logged its images.", ""]
    return lines + [table(rows), ""]


def fetch_image(client: Any, run_id: str, kind: str, dest: Path) -> bool:
    """Copy the run's last images/<kind>_NNN.png to dest; False when the run has none."""
    try:
        files = [a.path for a in client.list_artifacts(run_id, "images")]
    except Exception:
        return False
    found = sorted(p for p in files if re.fullmatch(rf"images/{kind}_\d+\.png", p))
    if not found:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vae-bench-report-") as tmp:
        local = client.download_artifacts(run_id, found[-1], tmp)
        shutil.copyfile(local, dest)
    return True


def _short(value: Any) -> str:
    x = num(value)
    if x is None or str(value).isdigit():
        return str(value)
    return f"{x:.3g}"


def tuning(ctx: Ctx) -> list[str]:
    """One row per Optuna study (bench.tune): trial counts from the trials' runs, the best trial from the parent's
    best.* tags (else the finished trial with the lowest objective)."""
    runs = ctx.data.runs
    studies = runs[runs["role"] == "study"]
    if studies.empty:
        return []
    rows = []
    for _, study in studies.sort_values(["study", "run_name", "run_id"], na_position="last").iterrows():
        trials = runs[(runs["parent_run_id"] == study["run_id"]) & (runs["role"] == "trial")]
        if trials.empty and str(study.get("kind")) not in ("tune", "nan", "None"):
            continue  # the parent of something that is not a tuning study
        objective = str(study["objective"]) if pd.notna(study.get("objective")) else "val_loss"
        status = trials["status"].value_counts()
        pruned = int(trials["failure"].fillna("").str.startswith("pruned").sum())
        best_params = {c[len("best."):]: study[c] for c in runs if c.startswith("best.") and
                       c not in ("best.trial", "best.run_id") and pd.notna(study[c])}
        best_value = study.get("best_value")
        best_trial = study.get("best.trial")
        done = trials[trials["status"] == "FINISHED"]
        if pd.isna(best_value) and objective in done and done[objective].notna().any():
            best = done.sort_values([objective, "run_id"], kind="stable").iloc[0]
            best_value, best_trial = best[objective], best.get("run_name")
            keys = [k for k in config_params(ctx.data.params) if k in trials and trials[k].nunique() > 1]
            best_params = {k: best[k] for k in keys}
        rows.append({
            "study": esc(study["study"] if pd.notna(study["study"]) else study["run_name"]),
            "variant": study.get("variant", DASH), "z": study.get("latent", DASH),
            "epochs": study.get("epochs", DASH), "trials": len(trials),
            "completed": int(status.get("FINISHED", 0)), "pruned": pruned,
            "killed": int(status.get("KILLED", 0)) - pruned, "failed": int(status.get("FAILED", 0)),
            f"best {objective}": DASH if pd.isna(best_value) else f"{best_value:.2f}"
            + (f" (trial {best_trial})" if pd.notna(best_trial) else ""),
            "best params": ", ".join(f"{k}={_short(v)}" for k, v in sorted(best_params.items())) or DASH})
    if not rows:
        return []
    where = sorted(set(studies["experiment"]))
    return ["## Tuning studies", "",
            f"Optuna studies of bench.tune (experiment {', '.join(f'`{w}`' for w in where)}): each is an MLflow "
            "parent run with one child run per trial. Trials are chosen on held-out training images "
            "(`val_loss`), never on the test set; pruned trials end KILLED and are not failures.", "",
            table(rows), ""]


def failures(ctx: Ctx) -> list[str]:
    main = ctx.data.main
    bad = main[main["status"] != "FINISHED"]
    lines = ["## Failed, killed and unfinished runs", ""]
    if bad.empty:
        return lines + ["None: every run finished.", ""]
    rows = []
    for _, r in bad.sort_values(["status", "label", "latent", "seed", "run_id"], kind="stable").iterrows():
        rows.append({"status": r["status"], "run": f"{esc(r['run_name'])} (`{r['run_id'][:8]}`)",
                     "variant": esc(r["label"]), "z": r["latent"] if pd.notna(r["latent"]) else DASH,
                     "seed": r["seed"] if pd.notna(r["seed"]) else DASH, "epochs logged": r["epochs_logged"],
                     "last test −ELBO": f"{r['test_loss']:.2f}" if pd.notna(r.get("test_loss")) else DASH,
                     "reason (bench.failure)": esc(r["failure"]) if pd.notna(r["failure"]) else DASH})
    return lines + ["Listed apart and left out of every average above.", "", table(rows), ""]


def missing(ctx: Ctx) -> list[str]:
    rows = []
    for _, r in ctx.fin.iterrows():
        absent = [m for m in CORE_METRICS if m not in r or pd.isna(r[m])]
        target = num(r.get("epochs"))
        short = target is not None and r["epochs_logged"] < target
        if absent or short:
            rows.append({"run": f"{esc(r['run_name'])} (`{r['run_id'][:8]}`)", "variant": esc(r["label"]),
                         "missing metrics": ", ".join(absent) or DASH,
                         "epochs logged": f"{r['epochs_logged']} of {int(target)}" if target is not None
                         else str(r["epochs_logged"])})
    if not rows:
        return []
    return ["## Finished runs with missing metrics", "",
            "These runs are FINISHED but lack some per-epoch metrics or epochs; they stay in the averages for the "
            "metrics they have (cells then say *k of n runs*).", "", table(rows), ""]


def configuration(ctx: Ctx) -> list[str]:
    fin = ctx.fin
    keys = [k for k in ctx.data.params if k in fin and fin[k].notna().any()]
    same = {k: fin[k].iloc[0] for k in keys if fin[k].nunique(dropna=False) == 1}
    varied = [k for k in keys if k not in same]
    lines = ["## Configuration", "",
             "Params shared by every finished run: " + ", ".join(f"`{k}={v}`" for k, v in sorted(same.items())) + ".",
             ""]
    if varied:
        lines += ["Params that vary between runs: " + ", ".join(f"`{k}`" for k in sorted(varied)) + ".", ""]
    return lines


def all_runs(ctx: Ctx) -> list[str]:
    rows = []
    for _, r in ctx.data.main.iterrows():
        rows.append({"run": esc(r["run_name"]), "id": f"`{r['run_id'][:8]}`", "status": r["status"],
                     "variant": esc(r["label"]), "z": r["latent"] if pd.notna(r["latent"]) else DASH,
                     "seed": r["seed"] if pd.notna(r["seed"]) else DASH, "epochs": r["epochs_logged"],
                     "test −ELBO": f"{r['test_loss']:.2f}" if pd.notna(r.get("test_loss")) else DASH})
    return ["<details><summary>Every run in this report</summary>", "", table(rows), "", "</details>", ""]


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
    client = open_store(args.tracking_uri)
    data = load(client, experiment=args.experiment, sweep=args.sweep)
    out = Path(args.out) if args.out else Path("reports") / slug(args.sweep or data.experiments[0])
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    figs = out / FIGURES
    if figs.is_dir():
        for old in figs.glob("*.png"):  # figures of an earlier report into this folder
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    text = render(data, out, date)
    (out / "report.md").write_text(text, encoding="utf-8")
    print(f"wrote {out / 'report.md'} ({len(data.finished)} finished runs, "
          f"{len(list(figs.glob('*.png')))} figures in {figs})")
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main, PROG)())
