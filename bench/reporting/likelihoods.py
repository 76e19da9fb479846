"""The report's *Likelihoods* section: bench.evaluate --ais / --bdmc / --gaps / --nll-ladder's numbers
(bench.evaluation.likelihood_study: test_nll_ais and bdmc_gap on the training run; gap/..., elbo/... and
nll_ladder/K<k> in its "likelihood" analysis run, folded into the training run's row by reporting/analyses.py).

- Per variant x latent: test -ELBO, the IWAE NLL at each K measured, the AIS NLL, the BDMC gap and both gaps, as
  mean and 95% t-interval over the runs (seeds), with n.
- The seed's equation as stacked bars per variant: -ELBO[q_enc] = -log p(x) (AIS) + approximation gap +
  amortization gap, per latent size.
- Seed-paired comparisons of test_nll_ais (pairing.pair / row / finish, as every other comparison).
- For each paired test_nll comparison: does its difference exceed the IWAE bound's remaining slack, L_K - AIS, on
  those runs? A difference smaller than the slack may be a better-matched proposal rather than a better model. And
  does it survive the better estimator: does the same pair's seed-paired AIS interval exclude 0 on the same side?
"""

from __future__ import annotations

import math
import re
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from bench.reporting.markdown import DASH
from bench.reporting.pairing import finish, pair, row
from bench.reporting.sections import FIGURES, Ctx, family

AIS = "test_nll_ais"
LADDER = re.compile(r"nll_ladder/K(\d+)")
COLUMNS = [("test_loss", "test −ELBO"), ("test_nll", "IWAE NLL (run's K)"), (AIS, "AIS NLL"),
           ("bdmc_gap", "BDMC gap"), ("gap/amortization", "amortization gap"),
           ("gap/approximation", "approximation gap")]


def interval(values: pd.Series) -> tuple[int, float, float, float]:
    """n, mean and 95% t-interval of the finite values (NaN bounds below 2)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return 0, math.nan, math.nan, math.nan
    if len(v) == 1:
        return 1, float(v[0]), math.nan, math.nan
    half = float(sps.t.ppf(0.975, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return len(v), float(v.mean()), float(v.mean()) - half, float(v.mean()) + half


def _cell(n: int, mean: float, lo: float, hi: float) -> str:
    if n == 0:
        return DASH
    if n == 1:
        return f"{mean:.2f} (n = 1)"
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}] (n = {n})"


def _ladder(fin: pd.DataFrame) -> list[str]:
    cols = [c for c in fin.columns if LADDER.fullmatch(str(c)) and not str(c).endswith("_stderr")]
    return sorted(cols, key=lambda c: int(LADDER.fullmatch(c)[1]))


def summary_rows(fin: pd.DataFrame) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """(Markdown rows, long CSV: label, latent, metric, n, mean, ci_low, ci_high) per variant x latent."""
    metrics = [(m, name) for m, name in COLUMNS if m in fin] + [(c, f"IWAE NLL K={LADDER.fullmatch(c)[1]}")
                                                                for c in _ladder(fin)]
    md, long = [], []
    for (label, latent), g in fin[fin[AIS].notna()].groupby(["label", "latent"], sort=True):
        r: dict[str, Any] = {"variant": label, "latent": latent}
        for m, name in metrics:
            n, mean, lo, hi = interval(g[m])
            r[name] = _cell(n, mean, lo, hi)
            long.append({"variant": label, "latent": latent, "metric": m, "n": n, "mean": mean, "ci_low": lo,
                         "ci_high": hi})
        md.append(r)
    return md, pd.DataFrame(long)


def ais_comparisons(fin: pd.DataFrame) -> pd.DataFrame:
    """Every pair of variants with the same decoder at each latent size, seed-paired on test_nll_ais (Holm within
    this family). Decoders are not paired: a Gaussian decoder's -log p(x) is a density on grey levels, a
    Bernoulli's a probability of binary images, so their difference measures the scales, not the models."""
    rows = []
    has = fin[fin[AIS].notna()]
    decoder = has["decoder"].map(family) if "decoder" in has else pd.Series("unknown", index=has.index)
    for (_, latent), g in has.groupby([decoder, "latent"], sort=True):
        for la, lb in combinations(sorted(set(g["label"])), 2):
            p = pair(g[g["label"] == la], g[g["label"] == lb], AIS)
            if len(p):
                rows.append(row("ais", la, lb, latent, AIS, p))
    return finish(rows)


def _slack(runs: pd.DataFrame) -> pd.Series:
    """L_K - AIS per run on the same images: nll_ladder/K<K> - test_nll_ais, K the run's test_nll K, where the
    ladder has it; else test_nll - test_nll_ais (test_nll on the whole test set, AIS on its first N images)."""
    out = runs["test_nll"] - runs[AIS]
    if "nll_samples" in runs:
        for i, k in runs["nll_samples"].items():
            try:
                col = f"nll_ladder/K{int(float(k))}"
            except (TypeError, ValueError):
                continue
            if col in runs and pd.notna(runs.at[i, col]):
                out.at[i] = runs.at[i, col] - runs.at[i, AIS]
    return out.dropna()


def survives(r: dict[str, Any], ais: dict[str, Any] | None) -> str:
    """Does the IWAE-NLL difference survive the better estimator: the seed-paired AIS difference of the same pair?"""
    if ais is None:
        return "no paired AIS comparison"
    lo, hi, d = ais["ci_low"], ais["ci_high"], r["mean_diff"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "AIS: no interval (n < 2)"
    if lo > 0 or hi < 0:
        same = (ais["mean_diff"] > 0) == (d > 0)
        return "survives the better estimator" if same else "reversed by the better estimator"
    return "does not survive the better estimator (AIS interval includes 0)"


def slack_rows(fin: pd.DataFrame, paired: pd.DataFrame | None, comp: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each paired test_nll comparison with the slack L_K - AIS (mean over the runs of each side that have both: on
    the same images where the NLL ladder has the run's K) and whether |difference| exceeds the larger of the two
    slacks; and, where the same pair has a seed-paired AIS comparison (``comp``), whether the difference survives it."""
    if paired is None or paired.empty or AIS not in fin:
        return pd.DataFrame()
    by_pair = {} if comp is None or comp.empty else {
        (c["variant_a"], c["variant_b"], str(c["latent"])): c for c in comp.to_dict("records")}
    out = []
    for r in paired[paired["metric"] == "test_nll"].to_dict("records"):
        slacks = []
        for side in ("variant_a", "variant_b"):
            runs = fin[(fin["label"] == r[side]) & (fin["latent"].astype(str) == str(r["latent"]))]
            s = _slack(runs)
            slacks.append((len(s), float(s.mean()) if len(s) else math.nan))
        worst = max((s for _, s in slacks if math.isfinite(s)), default=math.nan)
        if not math.isfinite(worst):
            verdict = "no AIS value on these runs: the slack is unknown"
        elif abs(r["mean_diff"]) > worst:
            verdict = "exceeds the remaining slack"
        else:
            verdict = "within the remaining slack: may be the proposal, not the model"
        key = (r["variant_a"], r["variant_b"], str(r["latent"]))
        flip = (r["variant_b"], r["variant_a"], str(r["latent"]))
        ais = by_pair.get(key)
        if ais is None and flip in by_pair:  # the AIS table orders each pair by name: B - A the other way round
            f = by_pair[flip]
            ais = {**f, "mean_diff": -f["mean_diff"], "ci_low": -f["ci_high"], "ci_high": -f["ci_low"]}
        out.append({"comparison": r["comparison"], "variant_a": r["variant_a"], "variant_b": r["variant_b"],
                    "latent": r["latent"], "n": r["n"], "mean_diff": r["mean_diff"], "ci_low": r["ci_low"],
                    "ci_high": r["ci_high"], "slack_a": slacks[0][1], "slack_a_n": slacks[0][0],
                    "slack_b": slacks[1][1], "slack_b_n": slacks[1][0], "verdict": verdict,
                    "ais_n": ais["n"] if ais else 0, "ais_mean_diff": ais["mean_diff"] if ais else math.nan,
                    "ais_ci_low": ais["ci_low"] if ais else math.nan,
                    "ais_ci_high": ais["ci_high"] if ais else math.nan, "ais_verdict": survives(r, ais)})
    return pd.DataFrame(out)


def equation_figure(fin: pd.DataFrame, path: Any) -> bool:
    """Stacked bars per variant, one panel per latent size and decoder (a Gaussian decoder's densities are on another
    scale): -log p(x) (AIS), + approximation gap, + amortization gap = -ELBO[q_enc]. Each panel's axis starts 2 nats
    below its lowest -log p(x), the blue bar rising from there. False if no run has both gaps."""
    import matplotlib.pyplot as plt

    need = [AIS, "gap/approximation", "gap/amortization"]
    if not all(c in fin for c in need):
        return False
    f = fin.dropna(subset=need).copy()
    f["decoder"] = f["decoder"].fillna("?").astype(str) if "decoder" in f else "?"
    g = f.groupby(["latent", "decoder", "label"], sort=True)[need].mean().reset_index()
    if g.empty:
        return False
    panels = list(dict.fromkeys(zip(g["latent"], g["decoder"], strict=True)))
    two = len({d for _, d in panels}) > 1
    width = sum(max(2.5, 0.9 * int(((g["latent"] == z) & (g["decoder"] == d)).sum()) + 1.2) for z, d in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, width), 4), squeeze=False,
                             gridspec_kw={"width_ratios": [int(((g["latent"] == z) & (g["decoder"] == d)).sum()) + 1
                                                           for z, d in panels]})
    for ax, (z, dec) in zip(axes[0], panels, strict=True):
        d = g[(g["latent"] == z) & (g["decoder"] == dec)]
        x = np.arange(len(d))
        base = d[AIS].to_numpy()
        lo = float(base.min()) - 2
        ax.bar(x, base - lo, bottom=lo, label="−log p(x) (AIS)", color="#4c72b0")
        ax.bar(x, d["gap/approximation"], bottom=base, label="approximation gap", color="#dd8452")
        ax.bar(x, d["gap/amortization"], bottom=base + d["gap/approximation"].to_numpy(), label="amortization gap",
               color="#55a868")
        top = (base + d["gap/approximation"] + d["gap/amortization"]).to_numpy()
        ax.set_ylim(lo, float(top.max()) + 1)
        ax.set_xticks(x, list(d["label"]), rotation=30, ha="right")
        ax.set_title(f"z = {z}" + (f", {dec}" if two else ""))
    axes[0][0].set_ylabel("nats per image (−ELBO[q_enc] at the top)")
    handles, names = axes[0][0].get_legend_handles_labels()  # below the panels: the bars fill them
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    fig.suptitle("−ELBO = −log p(x) + approximation gap + amortization gap (means over seeds)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return True


def _settings(fin: pd.DataFrame, col: str) -> str:
    """The values of one AIS setting over the runs with AIS, as 'a' or 'a, b'; '?' where not recorded."""
    if col not in fin:
        return "?"
    vals = sorted({str(v) for v in fin.loc[fin[AIS].notna(), col].dropna()})
    return ", ".join(vals) if vals else "?"


def _images(fin: pd.DataFrame) -> str:
    """Which images each column is on: AIS and what is paired with it on the first N, the rest on the whole test set."""
    return (f"AIS (T = {_settings(fin, 'ais_steps')}, C = {_settings(fin, 'ais_chains')}, from the "
            f"{_settings(fin, 'ais_start')}), the gaps, the IWAE NLL at each K of the ladder and the figure's bars "
            f"are on the first N = {_settings(fin, 'ais_images')} test images of each run; test −ELBO and the IWAE "
            "NLL at the run's K on all 10,000, so the figure's −ELBO (on the N images) is not the table's.")


def likelihoods(ctx: Ctx, figures: bool) -> list[str]:
    """The section, or nothing when no finished run has test_nll_ais."""
    fin = ctx.fin
    if not ctx.has(AIS):
        return []
    lines = ["## Likelihoods", "",
             "log p(x) by annealed importance sampling (`bench.evaluate --ais`; a stochastic lower bound, so its NLL "
             "is an upper bound that tightens with T), checked by BDMC on data simulated from each model, and the "
             "seed's gap −ELBO − (−log p(x)) = KL(q || p(z|x)) split into the amortization gap (encoder against the "
             "best diagonal Gaussian per image) and the approximation gap (that Gaussian against the true posterior). "
             "Means over runs (seeds) with 95% t-intervals, n runs each. " + _images(fin), ""]
    md, long = summary_rows(fin)
    lines += [ctx.table("likelihoods", md, long), ""]
    if figures and equation_figure(fin, ctx.figure("likelihood_equation.png")):
        lines += [f"![the seed's equation as stacked bars]({FIGURES}/likelihood_equation.png)", ""]
    comp = ais_comparisons(fin)
    if len(comp):
        rows = [{"A": r["variant_a"], "B": r["variant_b"], "latent": r["latent"], "n": r["n"],
                 "B − A": f"{r['mean_diff']:+.3f}", "95% interval": f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                 "Holm p": f"{r['p_holm']:.3g}", "verdict": r["verdict"]} for r in comp.to_dict("records")]
        lines += ["Seed-paired differences of the AIS NLL:", "", ctx.table("likelihood_ais_comparisons", rows, comp),
                  ""]
    else:
        lines += ["No two runs at one latent size share a seed and both have test_nll_ais: no AIS comparison.", ""]
    slack = slack_rows(fin, ctx.paired, comp)
    if len(slack):
        rows = [{"A": r["variant_a"], "B": r["variant_b"], "latent": r["latent"], "n": r["n"],
                 "IWAE NLL B − A": f"{r['mean_diff']:+.3f}", "slack A": f"{r['slack_a']:.3f}",
                 "slack B": f"{r['slack_b']:.3f}", "verdict": r["verdict"],
                 "AIS NLL B − A": DASH if not r["ais_n"] else
                 f"{r['ais_mean_diff']:+.3f} [{r['ais_ci_low']:+.3f}, {r['ais_ci_high']:+.3f}] (n = {r['ais_n']})",
                 "with the better estimator": r["ais_verdict"]} for r in slack.to_dict("records")]
        lines += ["Each paired IWAE-NLL comparison against the bound's remaining slack L_K − AIS (mean over the runs "
                  "of each side with both numbers; on the same images, from the NLL ladder, where it has the run's "
                  "K): a difference within the slack may be a better-matched proposal rather than a better model. "
                  "Beside it the same pair's seed-paired AIS difference: the IWAE-NLL claim survives the better "
                  "estimator when that 95% interval excludes 0 on the same side.", "",
                  ctx.table("likelihood_slack", rows, slack), ""]
    return lines
