"""The signal-to-noise study of Rainforth et al. (2018) and Tucker et al. (2018) at a trained run's parameters.

For each estimator e in {IWAE, IWAE-DReG, IWAE-STL, the K-sample ELBO (SGVB A with L = K)} and each K of a log
grid, R noise draws of the gradient g of the loss averaged over M fixed test images give, per network:

    per-parameter SNR   mean_p |E g_p| / std(g_p)      (Rainforth et al.'s definition; parameters whose gradient
                                                        does not vary are left out)
    debiased            sqrt(mean_p rho2_p), rho2_p an unbiased estimate of (E g_p)^2 / Var g_p
                                                       (draws.debiased_snr): |g_bar| / s has a floor near
                                                       sqrt(2 / (pi R)) (0.08 at R = 100) where E g_p ~ 0, which
                                                       flattens the slope once SNRs approach it; this form has none
    norm-form SNR       ||E g||^2 / sum_p Var(g_p)     (the form of bench.evaluate --gradient-variance)

then the slope of log SNR against log K (least squares over the grid, and over its tail K >= TAIL_K), with an
interval from a delete-a-group jackknife over the draws: the R draws of every (e, K) are split into G = 10
consecutive groups; group g (its draws at every K) is left out in turn and the slopes refitted; the interval is
slope +- t(0.975, G-1) * jackknife standard error. At each K every estimator sees the same noise (paired).
The draws are a batch dimension (bench.evaluation.draws).

The papers' predictions (asymptotic in K): IWAE's inference network -1/2, its generative network +1/2; DReG's
inference network rises with K again (+1/2); the ELBO's variance falls as 1/K (+1/2 on both).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from torch import Tensor, nn

from bench.evaluation import defaults
from bench.evaluation.draws import PARTS, Moments, gradient_moments
from variants.registry import Variant

K_GRID = defaults.SNR_K_GRID
IMAGES = defaults.SNR_IMAGES  # M
REPEATS = defaults.SNR_REPEATS  # R
SEED = defaults.SNR_SEED
GROUPS = defaults.SNR_GROUPS  # jackknife groups of draws
T_975 = 2.262  # t quantile (0.975, 9 degrees of freedom) for GROUPS = 10
TAIL_K = 100
STUDIED: dict[str, str] = {"iwae": "iwae", "iwae_dreg": "iwae_dreg", "iwae_stl": "iwae_stl", "elbo": "sgvb_a"}
FORMS = {"snr_param": "per-parameter", "snr_param_debiased": "per-parameter, debiased (RMS)", "snr": "norm"}
PREDICTIONS: dict[tuple[str, str], str] = {
    ("iwae", "encoder"): "-1/2 (Rainforth et al. 2018, Thm 1)",
    ("iwae", "decoder"): "+1/2 (Rainforth et al. 2018, Thm 1)",
    ("iwae_dreg", "encoder"): "rises: reversal of IWAE's -1/2 (Tucker et al. 2018)",
    ("iwae_dreg", "decoder"): "+1/2 (IWAE's decoder gradient)",
    ("iwae_stl", "encoder"): "rises (Tucker et al. 2018, empirically; biased for K > 1)",
    ("iwae_stl", "decoder"): "+1/2 (IWAE's decoder gradient)",
    ("elbo", "encoder"): "+1/2 (variance 1/K at a fixed mean)",
    ("elbo", "decoder"): "+1/2 (variance 1/K at a fixed mean)",
}


def prediction(label: str, part: str, form: str) -> str:
    """The papers' prediction for one slope; the norm form is a squared ratio, so its slopes are twice as steep."""
    text = PREDICTIONS.get((label, part), "")
    if form == "snr":
        text = text.replace("-1/2", "-1 = 2 x -1/2").replace("+1/2", "+1 = 2 x +1/2")
    return text


def measure(model: nn.Module, x: Tensor, ks: Sequence[int] = K_GRID, repeats: int = REPEATS, seed: int = SEED,
            estimators: dict[str, str] | None = None, log: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    """One row per (estimator, K, part, jackknife replicate): replicate -1 is all draws, 0..G-1 leave group g out."""
    rows = []
    for k in ks:
        for label, estimator in (estimators or STUDIED).items():
            moments = gradient_moments(model, x, Variant(label, "", estimator, samples=k), repeats, seed + k,
                                       groups=GROUPS)
            rows += _rows(label, k, moments)
        log(f"K = {k} done")
    return pd.DataFrame(rows)


def _rows(label: str, k: int, moments: dict[str, Moments]) -> list[dict[str, object]]:
    out = []
    for part in PARTS:
        for rep in (None, *range(GROUPS)):
            s = moments[part].summary(leave_out=rep)
            out.append({"estimator": label, "K": k, "part": part, "replicate": -1 if rep is None else rep, **s})
    return out


def _slope(ks: np.ndarray, values: np.ndarray) -> float:
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(ks[ok]), np.log(values[ok]), 1)[0])


def slopes(table: pd.DataFrame, tail_k: int = TAIL_K) -> pd.DataFrame:
    """Per (estimator, part, form, range): the log-log slope, its jackknife standard error and 95% interval."""
    rows = []
    for (label, part), g in table.groupby(["estimator", "part"], sort=False):
        for form in (f for f in FORMS if f in g):  # tables of studies made before a form existed lack it
            for span, lo in (("all", 0), ("tail", tail_k)):
                sub = g[g["K"] >= lo]
                if sub["K"].nunique() < 2:
                    continue
                fits = {rep: _slope(d["K"].to_numpy(float), d[form].to_numpy(float))
                        for rep, d in sub.sort_values("K").groupby("replicate")}
                full = fits.pop(-1)
                reps = np.array(list(fits.values()))
                se = math.sqrt((GROUPS - 1) / GROUPS * float(((reps - reps.mean()) ** 2).sum()))
                rows.append({"estimator": label, "part": part, "form": form, "range": span,
                             "k_min": int(sub["K"].min()), "k_max": int(sub["K"].max()), "slope": full,
                             "stderr": se, "ci_low": full - T_975 * se, "ci_high": full + T_975 * se,
                             "prediction": prediction(label, part, form)})
    return pd.DataFrame(rows)


def metrics(table: pd.DataFrame, fits: pd.DataFrame) -> dict[str, float]:
    """snr/<part>/<estimator>/K<k> (per-parameter), snr_norm/..., and snr/slope[_tail][_low|_high]/<part>/<est>."""
    out: dict[str, float] = {}
    for _, r in table[table["replicate"] == -1].iterrows():
        out[f"snr/{r['part']}/{r['estimator']}/K{r['K']}"] = float(r["snr_param"])
        out[f"snr/norm/{r['part']}/{r['estimator']}/K{r['K']}"] = float(r["snr"])
    for _, r in fits[fits["form"] == "snr_param"].iterrows():
        name = "slope" if r["range"] == "all" else "slope_tail"
        for key, col in ((name, "slope"), (f"{name}_low", "ci_low"), (f"{name}_high", "ci_high")):
            out[f"snr/{key}/{r['part']}/{r['estimator']}"] = float(r[col])
    return out


def markdown(fits: pd.DataFrame, where: str, settings: str) -> str:
    """The slopes beside the papers' predictions."""
    lines = [f"# Gradient SNR against K: {where}", "", settings, "",
             "Slope of log SNR against log K, with a 95% interval (delete-a-group jackknife over the draws, "
             f"{GROUPS} groups). `all`: the whole K grid; `tail`: K >= {TAIL_K}.", "",
             "| estimator | network | SNR form | K range | slope | 95% interval | papers' prediction |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for _, r in fits.iterrows():
        net = "inference (encoder)" if r["part"] == "encoder" else "generative (decoder)"
        lines.append(f"| {r['estimator']} | {net} | {FORMS[r['form']]} | {r['k_min']}-{r['k_max']} | "
                     f"{r['slope']:+.3f} | [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['prediction']} |")
    return "\n".join(lines) + "\n"


def figure(table: pd.DataFrame, title: str, path: Path) -> Path:
    """log-log SNR (per-parameter) against K, one panel per network, with jackknife error bars and +-1/2 guides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, part in zip(axes, PARTS, strict=True):
        sub = table[table["part"] == part]
        for label, g in sub.groupby("estimator", sort=False):
            full = g[g["replicate"] == -1].sort_values("K")
            reps = g[g["replicate"] >= 0].groupby("K")["snr_param"]
            se = np.sqrt((GROUPS - 1) / GROUPS * reps.apply(lambda s: ((s - s.mean()) ** 2).sum()))
            ax.errorbar(full["K"], full["snr_param"], yerr=T_975 * se.reindex(full["K"]).to_numpy(),
                        marker="o", ms=3, capsize=2, label=label)
        k = np.array([sub["K"].min(), sub["K"].max()], dtype=float)
        mid = float(sub[(sub["replicate"] == -1)]["snr_param"].median())
        for s, style in ((0.5, ":"), (-0.5, "--")):
            ax.plot(k, mid * (k / math.sqrt(k[0] * k[1])) ** s, "k" + style, lw=0.8, label=f"slope {s:+.1f}")
        network = "inference" if part == "encoder" else "generative"
        ax.set(xscale="log", yscale="log", xlabel="K", title=f"{part} ({network} network)")
    axes[0].set_ylabel("per-parameter SNR  mean_p |E g_p| / sd g_p")
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


TRAINING_PREFIX = "snr/train/"  # bench.run --snr-every's metrics, logged into the run's "SNR during training"
TRAIN_REPEATS = 100  # draws per SNR measurement during training (bench.run --snr-every)
TRAIN_SEED = 2019


def training_snr(model: nn.Module, variant: Variant, x: Tensor, repeats: int = TRAIN_REPEATS) -> dict[str, float]:
    """The run's own estimator's gradient SNR on the fixed minibatch ``x``, same noise at every epoch (paired):
    snr/train/<part> (per-parameter) and snr/train/norm/<part>."""
    moments = gradient_moments(model, x, variant, repeats, TRAIN_SEED)
    out: dict[str, float] = {}
    for part in PARTS:
        s = moments[part].summary()
        out[f"{TRAINING_PREFIX}{part}"] = s["snr_param"]
        out[f"{TRAINING_PREFIX}norm/{part}"] = s["snr"]
    return out
