"""The comparisons the suite exists for (A vs B, STL, L = 1 vs L > 1, the IWAE family, decoders, latent sizes, and
the pairs a user names with --compare), as report sections of seed-paired differences with 95% t-intervals
(pairing.py computes them; this module writes the tables, figures and the statement about the family)."""

from __future__ import annotations

import pandas as pd

from bench.reporting.markdown import DASH, METRIC_NAMES, fmt, num, signed, table
from bench.reporting.pairing import AXES, axis_rows, finish, user_rows
from bench.reporting.sections import FIGURES, Ctx, family
from bench.reporting.stats import LEVEL


def paired_table(ctx: Ctx) -> pd.DataFrame:
    """Every paired comparison of the report, Holm-adjusted over all of them (computed once per report)."""
    if ctx.paired is None:
        rows = [r for axis in AXES for r in axis_rows(ctx.fin, ctx.data.params, axis)]
        rows += user_rows(ctx.fin, ctx.data.params, ctx.pairs)
        ctx.paired = finish(rows)
    return ctx.paired


def family_size(df: pd.DataFrame) -> int:
    """The rows Holm's correction adjusts: those with a p-value (n >= 2 and a spread; sd = 0 gives none)."""
    return int(df["p_value"].notna().sum())


def _diff_cell(r: pd.Series) -> str:
    spec = fmt(r["metric"])
    if r["n"] == 0:
        return DASH
    text = signed(r["mean_diff"], spec)
    if r["n"] >= 2 and pd.notna(r["ci_low"]):
        text += f" [{format(r['ci_low'], spec)}, {format(r['ci_high'], spec)}]"
    return text


def display(df: pd.DataFrame, latent_col: str = "z") -> list[dict[str, str]]:
    rows = []
    for _, r in df.iterrows():
        spec = fmt(r["metric"])
        rows.append({"A": r["variant_a"], "B": r["variant_b"], latent_col: r["latent"],
                     "metric": METRIC_NAMES.get(r["metric"], r["metric"]), "n": str(r["n"]),
                     "A mean": DASH if r["n"] == 0 else format(r["mean_a"], spec),
                     "B mean": DASH if r["n"] == 0 else format(r["mean_b"], spec),
                     "B − A [95% CI]": _diff_cell(r), "verdict": r["verdict"],
                     "p (Holm)": DASH if pd.isna(r["p_holm"]) else f"{r['p_holm']:.3g}"})
    return rows


def _section(ctx: Ctx, title: str, intro: str, df: pd.DataFrame, key: str, figures: bool) -> list[str]:
    from bench.reporting import figures as rf

    lines = [f"### {title}", "", intro, ""]
    if df.empty:
        return lines + ["Not measured: no two finished runs here differ only along this axis.", ""]
    lines += [table(display(df, "z" if key != "latent" else "z (A→B)")), ""]
    shown = df[df["n"] >= 2].copy()
    if figures and not shown.empty:
        # A Gaussian decoder's -ELBO is on another scale: its own panel, so the Bernoulli differences stay visible.
        fam = dict(zip(ctx.fin["label"], ctx.fin["decoder"].map(family), strict=False))
        gauss = shown["variant_a"].map(fam).eq("gaussian") | shown["variant_b"].map(fam).eq("gaussian")
        shown["panel"] = shown["metric"] + gauss.map({True: " (Gaussian decoder)", False: ""}).where(
            shown["metric"].isin(["test_loss", "test_nll"]), "")
        name = f"paired_{key}.png"
        rf.forest(shown, f"{title}: paired differences B − A, {LEVEL:.0%} intervals", ctx.figure(name))
        lines += [f"![{title}: paired differences]({FIGURES}/{name})", ""]
    elif shown.empty:
        lines += ["No comparison here has two seed-paired runs, so none has an interval.", ""]
    return lines


def comparisons(ctx: Ctx, figures: bool) -> list[str]:
    from bench.reporting import figures as rf

    df = paired_table(ctx)
    size = family_size(df)
    lines = ["## Comparisons", "",
             "Each row pairs runs that differ only in the compared axis and share a seed (the same initialisation "
             "and data order), and gives the mean paired difference B − A with a 95% t-interval on n − 1 degrees "
             "of freedom; n is the number of pairs. The verdict reads the interval: a difference is claimed only "
             "where the interval excludes 0; a comparison with fewer than two pairs gets no interval. Lower is "
             "better for every loss; more active units is not better or worse in itself.", "",
             f"**Many intervals at once.** The tables below hold {size} intervals (rows with n ≥ 2 and a p-value; "
             "pairs that all differ by the same amount have none). Each is a "
             "per-comparison 95% interval, so about one in twenty would exclude 0 by chance alone; the *p (Holm)* "
             f"column adjusts the paired t-test's p-value for all {size} (Holm's step-down method): a "
             "difference with p (Holm) < 0.05 holds at a 5% family-wise error rate. All rows are in "
             "`tables/comparisons.csv`.", ""]
    ctx.tables.add("comparisons", df)
    for axis in AXES:
        sub = df[df["comparison"] == axis.key]
        if axis.key in ("stl", "iwae_family") and sub.empty:
            continue  # variants that this store may simply not have: no empty section for them
        title = axis.title
        if axis.key == "latent":
            title = "Latent size " + " vs ".join(str(z) for z in sorted(ctx.fin["latent"].dropna().unique()))
        if axis.key == "iwae_family" and not sub.empty:
            family_runs = ctx.fin[ctx.fin["estimator"].isin(["iwae", "iwae_dreg", "iwae_stl"])]
            ks = sorted({int(num(v)) for v in family_runs.get("nll_samples", pd.Series(dtype=object)).dropna()
                         if num(v) is not None})
            ks = [f"{k:,}" for k in ks]
            intro = axis.intro + (f" Test NLL with K = {', '.join(ks)} importance samples." if ks else "")
        else:
            intro = axis.intro
        lines += _section(ctx, title, intro, sub, axis.key, figures)
    user = df[df["comparison"] == "user"]
    if not user.empty:
        lines += _section(ctx, "Pairs named with --compare",
                          "Runs of the two named variants at each latent size both were run at, paired by seed; "
                          "they may differ in more than one setting.", user, "user", figures)
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
