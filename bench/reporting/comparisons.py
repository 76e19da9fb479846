"""The comparisons the suite exists for (A vs B, L = 1 vs L > 1, Bernoulli vs Gaussian, latent sizes) and the
gradient variance of each estimator, as report sections."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.reporting.data import config_params, gradvar_metric_names
from bench.reporting.markdown import DASH, METRIC_NAMES, cell, fmt, join_ints, ratio, signed, table
from bench.reporting.sections import FIGURES, Ctx, family


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
    from bench.reporting import figures as rf

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
            from bench.evaluation.gradvar import IWAE_K  # the k bench.evaluate measures IWAE with

            return f"IWAE, k={IWAE_K}"
        except ImportError:
            pass
    return ESTIMATOR_NAMES.get(est, est)


def _estimator_order(est: str) -> tuple[int, str, int]:
    m = re.fullmatch(r"(.+)_L(\d+)", est)
    base, n = (m[1], int(m[2])) if m else (est, 0)
    known = list(ESTIMATOR_NAMES)
    return (known.index(base) if base in known else len(known), base, n)


def gradient_variance(ctx: Ctx, figures: bool) -> list[str]:
    """gradvar_<encoder|decoder>_<estimator> of bench.evaluate --gradient-variance, per trained variant."""
    from bench.reporting import figures as rf

    metrics = gradvar_metric_names(m for m in ctx.data.metrics if ctx.has(m))
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
                spread = f" (range {ratio(r.min())}–{ratio(r.max())})" if len(r) > 1 else ""
                ratios.append(f"{_estimator_name(est)} ×{ratio(r.median())}{spread}")
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
