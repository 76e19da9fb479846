"""Two views over the epochs: per-epoch differences against a baseline variant with paired 95% bands, and test
−ELBO against compute (cumulative training seconds, decoder evaluations), so that L > 1, IWAE k and L = 1 meet
at equal cost. Seconds are wall clock on the machine that trained the runs: described, never given a verdict."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bench.reporting.markdown import DASH, fmt, num, table
from bench.reporting.sections import FIGURES, Ctx, family
from bench.reporting.stats import mean_se, paired_t

MNIST_TRAIN = 60_000


def per_epoch(ctx: Ctx, metric: str, runs: pd.DataFrame) -> pd.DataFrame:
    """run_id, label, latent, seed, epoch, value of one metric's history."""
    h = ctx.data.history
    h = h[(h["metric"] == metric) & h["run_id"].isin(runs["run_id"])]
    return h.merge(runs[["run_id", "label", "latent", "seed"]], on="run_id").rename(columns={"step": "epoch"})


def differences(ctx: Ctx) -> pd.DataFrame:
    """Per epoch, test_loss of each variant minus the baseline's, paired by latent size and seed."""
    fin = ctx.fin
    base = fin[fin["variant"] == ctx.baseline]
    if base.empty:
        return pd.DataFrame()
    fam = family(base["decoder"].iloc[0])
    same = fin[fin["decoder"].map(family) == fam]
    long = per_epoch(ctx, "test_loss", same)
    base_labels = set(base["label"])
    b = long[long["label"].isin(base_labels)].sort_values("run_id").drop_duplicates(["latent", "seed", "epoch"])
    rows = []
    others = long[~long["label"].isin(base_labels)].sort_values("run_id")
    others = others.drop_duplicates(["label", "latent", "seed", "epoch"])
    m = others.merge(b[["latent", "seed", "epoch", "value", "label"]], on=["latent", "seed", "epoch"],
                     suffixes=("", "_base"))
    for (label, latent, epoch), g in m.groupby(["label", "latent", "epoch"], sort=True):
        t = paired_t(g["value_base"], g["value"])
        rows.append({"comparison": "trend", "variant_a": g["label_base"].iloc[0], "variant_b": label,
                     "latent": latent, "metric": "test_loss", "epoch": epoch, "n": t.n, "mean_diff": t.mean_diff,
                     "ci_low": t.ci_low, "ci_high": t.ci_high})
    return pd.DataFrame(rows)


def trend_differences(ctx: Ctx, figures: bool) -> list[str]:
    from bench.reporting import figures as rf

    lines = ["### Differences from the baseline, per epoch", ""]
    if not (ctx.fin["variant"] == ctx.baseline).any():
        known = ", ".join(sorted(set(ctx.fin["variant"])))
        return lines + [f"No finished run of the baseline `{ctx.baseline}` here (variants: {known}); "
                        "choose one with `--baseline NAME`.", ""]
    df = differences(ctx)
    if df.empty:
        return lines + [f"No other variant shares a seed and a latent size with `{ctx.baseline}`.", ""]
    ctx.tables.add("trend_differences", df)
    lines += [f"Test −ELBO of each variant minus `{ctx.baseline}`'s, epoch by epoch, paired by seed at each latent "
              "size: the line is the mean paired difference, the band its 95% t-interval (pointwise, one epoch at "
              "a time; no band where fewer than two seeds pair). Below 0: lower (better) than the baseline. The "
              "absolute curves are above, where differences of a nat or so are lost in a 100-nat axis.", ""]
    if figures:
        name = "trend_differences.png"
        colours = {k: v for k, v in ctx.colours.items() if k in set(df["variant_b"])}
        rf.diff_curves(df, colours, f"Test −ELBO minus {ctx.baseline}'s, per epoch (paired by seed)",
                       ctx.figure(name))
        lines += [f"![Per-epoch differences from {ctx.baseline}]({FIGURES}/{name})", ""]
    return lines


def compute_frame(ctx: Ctx) -> pd.DataFrame:
    """Per run and epoch: test_loss, cumulative seconds, cumulative decoder evaluations (Bernoulli runs)."""
    fin = ctx.fin[ctx.fin["decoder"].map(family) == "bernoulli"]
    loss = per_epoch(ctx, "test_loss", fin)
    secs = per_epoch(ctx, "epoch_seconds", fin)[["run_id", "epoch", "value"]].rename(columns={"value": "sec"})
    df = loss.merge(secs, on=["run_id", "epoch"], how="left").sort_values(["run_id", "epoch"])
    df["seconds"] = df.groupby("run_id")["sec"].cumsum()
    images = {}
    for _, r in fin.iterrows():
        limit = num(r.get("limit_train"))
        n = (limit if limit is not None else MNIST_TRAIN) - (num(r.get("validation")) or 0)
        images[r["run_id"]] = (num(r.get("samples")) or 1) * n
    df["decoder_evaluations"] = df["run_id"].map(images) * df["epoch"]
    return df


def _at(curve: pd.DataFrame, x: str, budget: float) -> float:
    """The mean test_loss curve (over seeds, per epoch) of one variant read at a compute budget (linear
    interpolation between epochs; NaN outside the curve)."""
    c = curve.groupby("epoch")[[x, "value"]].mean().dropna().sort_values(x)
    if c.empty or not c[x].iloc[0] <= budget <= c[x].iloc[-1]:
        return float("nan")
    return float(np.interp(budget, c[x], c["value"]))


def compute_matched(ctx: Ctx, figures: bool) -> list[str]:
    from bench.reporting import figures as rf

    lines = ["## Compute-matched views", ""]
    df = compute_frame(ctx)
    if df.empty or df["seconds"].isna().all():
        return lines + ["No Bernoulli-decoder run here has per-epoch test −ELBO and seconds.", ""]
    base = df[df["run_id"].isin(ctx.fin.loc[ctx.fin["variant"] == ctx.baseline, "run_id"])]
    rows, csv = [], []
    for (label, latent), g in df.groupby(["label", "latent"], sort=True):
        last = g.sort_values("epoch").groupby("run_id").tail(1)
        fin = ctx.fin[ctx.fin["run_id"].isin(last["run_id"])]
        bz = base[base["latent"] == latent]
        budget_s = bz.sort_values("epoch").groupby("run_id").tail(1)["seconds"].mean() if len(bz) else np.nan
        budget_e = bz["decoder_evaluations"].max() if len(bz) else np.nan
        n, loss, se = mean_se(last["value"])
        rec: dict[str, Any] = {
            "variant": label, "latent": latent, "n": n, "epochs": int(last["epoch"].max()),
            "sec_per_epoch": float(g["sec"].mean()), "seconds": float(last["seconds"].mean()),
            "decoder_evaluations": float(last["decoder_evaluations"].mean()), "test_loss": loss, "test_loss_se": se,
            "test_nll": float(fin["test_nll"].mean()) if "test_nll" in fin else np.nan,
            "test_loss_at_baseline_seconds": _at(g, "seconds", budget_s),
            "test_loss_at_baseline_evaluations": _at(g, "decoder_evaluations", budget_e)}
        csv.append(rec)
        rows.append({"variant": label, "z": latent, "n": n, "epochs": rec["epochs"],
                     "s / epoch": f"{rec['sec_per_epoch']:.2f}", "training s": f"{rec['seconds']:.0f}",
                     "decoder evals": f"{rec['decoder_evaluations']:.3g}",
                     "final test −ELBO": f"{loss:.2f}" + (f" ± {se:.2f}" if pd.notna(se) else ""),
                     "test NLL": DASH if pd.isna(rec["test_nll"]) else format(rec["test_nll"], fmt("test_nll")),
                     f"−ELBO at {ctx.baseline}'s seconds": _or_dash(rec["test_loss_at_baseline_seconds"]),
                     f"−ELBO at {ctx.baseline}'s evals": _or_dash(rec["test_loss_at_baseline_evaluations"])})
    ctx.tables.add("compute", pd.DataFrame(csv))
    lines += ["Test −ELBO (Bernoulli decoder) against what training cost: cumulative wall-clock seconds (the sum of "
              "`epoch_seconds`, which includes the test evaluation) and decoder evaluations (samples per image × "
              "training images × epochs). Seconds are as measured on the machine that trained the runs (see "
              "*Machine* above; a shared machine makes them noisy), so they describe these runs and carry no "
              f"verdict. The last two columns read each variant's mean curve at the total cost of `{ctx.baseline}` "
              "at the same latent size (a dash: its curve does not reach that cost).", "",
              table(rows), ""]
    if figures:
        name = "compute_matched.png"
        colours = {k: v for k, v in ctx.colours.items() if k in set(df["label"])}
        rf.compute(df, colours, "Test −ELBO against training seconds and decoder evaluations", ctx.figure(name))
        lines += [f"![Test −ELBO against compute]({FIGURES}/{name})", "",
                  "One point per epoch, mean over seeds of both coordinates.", ""]
    return lines


def _or_dash(x: float) -> str:
    return DASH if pd.isna(x) else f"{x:.2f}"
