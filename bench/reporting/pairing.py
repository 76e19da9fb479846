"""Seed-paired comparisons: which runs pair up, and the numbers of each paired comparison.

Two runs pair when they differ only along the compared axis (every other configuration param equal, the same
latent size unless latent is the axis) and share a seed: runs with one seed share their initialisation and data
order, so b − a removes what the seed contributes. One row per (pair of axis values, metric), with the mean
paired difference and its 95% t-interval (stats.paired_t); verdicts and Holm's adjustment are added over the
whole report's family (``finish``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import pandas as pd

from bench.errors import UserError
from bench.reporting.config import config_params
from bench.reporting.markdown import num
from bench.reporting.stats import holm, paired_t


@dataclass
class Axis:
    key: str  # the `comparison` column of the CSV
    title: str
    intro: str
    drop: set[str]  # config params that change along the axis
    value: Callable[[pd.Series], str | None]  # a run's position on the axis; None: not on this axis
    order: Callable[[str], Any]
    metrics: list[str]
    latent_is_axis: bool = False
    pairs: str = "first"  # which values pair: "first" (the first with each other), "adjacent", "all"


def _decoder_value(r: pd.Series) -> str | None:
    if r.get("decoder") == "bernoulli":
        return "Bernoulli"
    if r.get("decoder") == "gaussian":
        if str(r.get("learn_variance")) == "True":
            return "Gaussian, learned c"
        return f"Gaussian c={r.get('gaussian_variance', '?')}"
    return None


def _estimators(names: dict[str, str]) -> Callable[[pd.Series], str | None]:
    return lambda r: names.get(str(r.get("estimator")))


IWAE_FAMILY = {"iwae": "IWAE", "iwae_dreg": "IWAE-DReG", "iwae_stl": "IWAE-STL"}
FINAL = ["test_loss", "test_nll"]
AXES = [
    Axis("estimator_a_vs_b", "Estimator A vs B",
         "SGVB A samples the whole bound, log p(x, z) − log q(z|x); SGVB B takes the KL term in closed form. Same "
         "model, data and seeds otherwise.",
         {"estimator", "baseline"}, _estimators({"sgvb_a": "A (sgvb_a)", "sgvb_b": "B (sgvb_b)"}), str, FINAL),
    Axis("stl", "SGVB A vs A with sticking the landing (STL)",
         "STL (Roeder et al. 2017) drops the score term of A's path derivative: the same bound, a gradient with "
         "less variance near the optimum.",
         {"estimator"}, _estimators({"sgvb_a": "A (sgvb_a)", "sgvb_a_stl": "A-STL (sgvb_a_stl)"}), str, FINAL),
    Axis("samples", "L = 1 vs L > 1 samples",
         "L reparameterised samples per datapoint per step (SGVB A and B): a less noisy gradient at L times the "
         "decoder cost (see *Compute-matched views* for the comparison at equal compute).",
         {"samples"},
         lambda r: f"L={r['samples']}" if r.get("estimator") in ("sgvb_a", "sgvb_b") and pd.notna(r.get("samples"))
         else None, lambda v: int(v.split("=")[1]), FINAL),
    Axis("iwae_family", "IWAE vs IWAE-DReG vs IWAE-STL at equal k",
         "The same importance-weighted bound with k samples, three gradients: IWAE's own (Burda et al. 2015), "
         "doubly reparameterised (DReG, Tucker et al. 2018) and sticking the landing (STL). Pairs share k, the "
         "seed and every other setting; test NLL pairs also share the NLL's K.",
         {"estimator"}, _estimators(IWAE_FAMILY), lambda v: list(IWAE_FAMILY.values()).index(v),
         ["test_loss", "test_nll", "active_units"], pairs="all"),
    Axis("decoder", "Bernoulli vs Gaussian decoder (test MSE)",
         "The two likelihoods' −ELBOs are on different scales (a probability of grey levels vs a density), so they "
         "compare on the squared error of the decoder's mean per pixel, which both share.",
         {"decoder", "gaussian_variance", "learn_variance"}, _decoder_value, lambda v: (v != "Bernoulli", v),
         ["test_mse"]),
    Axis("latent", "Latent size",
         "The same variant at each latent size, each size paired with the next larger one.",
         set(), lambda r: f"z={r['latent']}" if pd.notna(r.get("latent")) else None,
         lambda v: int(v.split("=")[1]), ["test_loss", "test_kld", "active_units", "test_mse"], latent_is_axis=True,
         pairs="adjacent"),
]


def pair(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> pd.DataFrame:
    """seed, a, b, run_a, run_b of the runs of a and b that share a seed and both have the metric; for test_nll
    the two NLLs must also come from the same number of importance samples K. Only then, where a seed still
    repeats, the first pair by run ids is kept (filtering first keeps a valid same-K pair that a K-less
    duplicate with a lower id would otherwise hide)."""
    cols = ["seed", "run_id", metric] + (["nll_samples"] if metric == "test_nll" and "nll_samples" in a else [])
    a = a[a["seed"].notna() & a[metric].notna()][cols]
    b = b[b["seed"].notna() & b[metric].notna()][cols]
    m = a.merge(b, on="seed", suffixes=("_a", "_b"))
    if "nll_samples_a" in m:
        m = m[m["nll_samples_a"].map(num) == m["nll_samples_b"].map(num)]
    m = m.sort_values(["seed", "run_id_a", "run_id_b"]).drop_duplicates("seed")
    return pd.DataFrame({"seed": m["seed"].astype(int), "a": m[f"{metric}_a"].astype(float),
                         "b": m[f"{metric}_b"].astype(float), "run_a": m["run_id_a"].astype(object),
                         "run_b": m["run_id_b"].astype(object)}).reset_index(drop=True)


def row(comparison: str, label_a: str, label_b: str, latent: Any, metric: str, p: pd.DataFrame) -> dict[str, Any]:
    t = paired_t(p["a"], p["b"])
    return {"comparison": comparison, "variant_a": label_a, "variant_b": label_b, "latent": latent,
            "metric": metric, "n": t.n, "mean_a": p["a"].mean() if len(p) else float("nan"),
            "mean_b": p["b"].mean() if len(p) else float("nan"), "mean_diff": t.mean_diff, "sd_diff": t.sd,
            "ci_low": t.ci_low, "ci_high": t.ci_high, "p_value": t.p_value,
            "seeds": " ".join(str(s) for s in p["seed"]), "runs_a": ";".join(p["run_a"]) if "run_a" in p else "",
            "runs_b": ";".join(p["run_b"]) if "run_b" in p else ""}


def _value_pairs(values: list[str], how: str) -> list[tuple[str, str]]:
    if how == "adjacent":
        return list(zip(values, values[1:], strict=False))
    if how == "all":
        return list(combinations(values, 2))
    return [(values[0], v) for v in values[1:]]


def axis_rows(fin: pd.DataFrame, params: list[str], axis: Axis) -> list[dict[str, Any]]:
    """The paired comparison rows of one axis (no verdicts yet)."""
    fin = fin.copy()
    keys = [k for k in config_params(params) if k not in axis.drop and k in fin]
    fin["_v"] = [axis.value(r) for _, r in fin.iterrows()]
    fin = fin[fin["_v"].notna()]
    if fin.empty:
        return []
    where = context(fin, keys)
    if not axis.latent_is_axis:
        where = where + "|z" + fin["latent"].astype(str)
    out = []
    for _, g in fin.groupby(where, sort=True):
        values = sorted(g["_v"].unique(), key=axis.order)
        for va, vb in _value_pairs(values, axis.pairs):
            a, b = g[g["_v"] == va], g[g["_v"] == vb]
            la, lb = " / ".join(sorted(set(a["label"]))), " / ".join(sorted(set(b["label"])))
            latent = f"{a['latent'].iloc[0]}→{b['latent'].iloc[0]}" if axis.latent_is_axis else a["latent"].iloc[0]
            for m in axis.metrics:
                if m in g and g[m].notna().any():
                    r = row(axis.key, la, lb, latent, m, pair(a, b, m))
                    r["_order"] = (axis.order(va), axis.order(vb), la, lb, str(latent).zfill(8), axis.metrics.index(m))
                    out.append(r)
    out.sort(key=lambda r: r["_order"])  # finish() keeps only the CSV's columns
    return out


USER_METRICS = ["test_loss", "test_nll", "test_mse", "active_units"]


def context(runs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Per run, its configuration on the given keys as one string (missing params as '-')."""
    if not keys:
        return pd.Series("", index=runs.index, dtype=object)
    return runs[keys].astype(object).fillna("-").astype(str).agg("|".join, axis=1)


def compared_params(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> set[str]:
    """The params --compare A:B compares: those in which every run of A differs from every run of B (the
    variants' axes, e.g. estimator); every other configuration param must match between twins."""
    out = set()
    for k in keys:
        va, vb = set(a[k].astype(object).fillna("-").astype(str)), set(b[k].astype(object).fillna("-").astype(str))
        if not va & vb:
            out.add(k)
    return out


def user_rows(fin: pd.DataFrame, params: list[str], pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """--compare A:B: the runs of variant (or label) A against B at each latent size, paired by seed. Where a
    side holds several configurations (e.g. 5 and 10 epochs), each configuration of A pairs with its twin in B
    (equal in every configuration param but those A:B compares), one row each, labelled with the configuration;
    configurations without a twin are left out. Runs of two configurations are never pooled."""
    check_pairs(fin, pairs)
    keys = [k for k in config_params(params) if k in fin]
    out = []
    for name_a, name_b in pairs:
        a = fin[(fin["variant"] == name_a) | (fin["label"] == name_a)]
        b = fin[(fin["variant"] == name_b) | (fin["label"] == name_b)]
        same = [k for k in keys if k not in compared_params(a, b, keys)]
        ca, cb = context(a, same), context(b, same)
        za, zb = set(a["latent"].dropna()), set(b["latent"].dropna())
        for z in sorted((za & zb) or (za | zb)):  # sizes only one of them ran say nothing; all, if none is shared
            az, bz = a[a["latent"] == z], b[b["latent"] == z]
            twins = sorted(set(ca[az.index]) & set(cb[bz.index]))
            for m in USER_METRICS:
                if m not in fin or not (az[m].notna().any() or bz[m].notna().any()):
                    continue
                if not twins:  # n = 0 rows say what is missing
                    out.append(row("user", name_a, name_b, z, m, pair(az.iloc[:0], bz.iloc[:0], m)))
                for c in twins:
                    ga, gb = az[ca[az.index] == c], bz[cb[bz.index] == c]
                    several = len(set(ca[az.index])) > 1 or len(set(cb[bz.index])) > 1
                    la = " / ".join(sorted(set(ga["label"]))) if several else name_a
                    lb = " / ".join(sorted(set(gb["label"]))) if several else name_b
                    out.append(row("user", la, lb, z, m, pair(ga, gb, m)))
    return out


def check_pairs(fin: pd.DataFrame, pairs: list[tuple[str, str]]) -> None:
    """UserError naming the variants there when a --compare name has no finished run."""
    known = sorted(set(fin["variant"]) | set(fin["label"]))
    for name_a, name_b in pairs:
        for name in (name_a, name_b):
            if name not in known:
                raise UserError(f"--compare {name_a}:{name_b}: no finished run of {name!r} here; variants there: "
                                f"{', '.join(known)}")


def parse_pairs(specs: list[str] | None) -> list[tuple[str, str]]:
    """'A:B' strings of --compare -> (A, B)."""
    out = []
    for s in specs or []:
        a, sep, b = s.partition(":")
        if not sep or not a or not b or ":" in b:
            raise UserError(f"--compare {s!r} is not A:B; give two variant names, e.g. --compare sgvb_b:iwae_k5")
        out.append((a, b))
    return out


def verdict(r: dict[str, Any]) -> str:
    n = r["n"]
    if n == 0:
        same_k = " with the same K" if r["metric"] == "test_nll" else ""  # NLLs pair only at equal K
        return f"no two runs share a seed and have this metric{same_k}: not paired, no interval"
    if n == 1:
        return "one seed-paired pair only (n = 1): no interval"
    if r["sd_diff"] == 0:
        if r["mean_diff"] == 0:
            return "no difference in any pair"
        return f"every pair differs by exactly {r['mean_diff']:+.4g}: no spread, no interval"
    if r["ci_low"] > 0 or r["ci_high"] < 0:
        a, b = r["variant_a"], r["variant_b"]
        if a == b and "→" in str(r["latent"]):  # the latent axis: one variant at two sizes
            za, zb = str(r["latent"]).split("→")
            a, b = f"z={za}", f"z={zb}"
        return f"{b if r['mean_diff'] < 0 else a} lower, interval excludes 0"
    return f"not resolved with n = {n}"


def finish(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """All paired rows of the report, with Holm-adjusted p-values over the whole family and verdicts."""
    cols = ["comparison", "variant_a", "variant_b", "latent", "metric", "n", "mean_a", "mean_b", "mean_diff",
            "sd_diff", "ci_low", "ci_high", "p_value", "p_holm", "verdict", "seeds", "runs_a", "runs_b"]
    df = pd.DataFrame(rows, columns=[c for c in cols if c not in ("p_holm", "verdict")])
    df["p_holm"] = holm(df["p_value"].tolist()) if len(df) else []
    df["verdict"] = [verdict(r) for r in df.to_dict("records")]
    df["latent"] = df["latent"].astype(str)
    return df[cols]
