"""Recompute every paired interval of a report's tables/comparisons.csv from the runs' MLflow metrics, without the
report's code: read the runs with mlflow.search_runs, take each metric's latest value, pair by seed, and form the
95% t-interval with scipy.

    python scripts/check_intervals.py --tracking-uri sqlite:////tmp/vae-bench-example/mlflow.db \\
        --sweep example reports/example/tables/comparisons.csv

Prints how many rows match and each one that does not; exits 1 if any differs by more than 1e-6.
"""

from __future__ import annotations

import argparse
import sys

import mlflow
import numpy as np
import pandas as pd
from scipy import stats


def values(runs: pd.DataFrame, variant: str, latent: str, seeds: list[str], metric: str,
           ids: list[str] | None = None) -> np.ndarray:
    """The metric's latest value in the run of each seed: the row's own run ids (runs_a / runs_b) where the table
    has them, else the first run by id of the variant, latent size and seed."""
    if ids:
        by_id = runs.set_index("run_id")
        return np.asarray([by_id.at[i, f"metrics.{metric}"] for i in ids], dtype=float)
    out = []
    for s in seeds:
        hit = runs[(runs["params.variant"] == variant) & (runs["params.latent"] == latent) & (runs["params.seed"] == s)]
        out.append(hit[f"metrics.{metric}"].iloc[0])
    return np.asarray(out, dtype=float)


def sweep_runs(sweep: str) -> pd.DataFrame:
    """The sweep's FINISHED training runs, sorted by id: those it made (tag bench.sweep) and those it reused (tag
    bench.in_sweep.<sweep>), with the metrics of their analysis runs (tag bench.analysis_of: gradient variance...)
    on their rows, and without the analysis runs themselves, which carry their training run's tags."""
    found = [mlflow.search_runs(search_all_experiments=True,
                                filter_string=f"{flt} AND attributes.status = 'FINISHED'")
             for flt in (f"tags.`bench.sweep` = '{sweep}'", f"tags.`bench.in_sweep.{sweep}` = 'true'")]
    if all(f.empty for f in found):
        sys.exit(f"check_intervals.py: no FINISHED runs of sweep {sweep!r}")
    runs = pd.concat([f for f in found if not f.empty], ignore_index=True).drop_duplicates("run_id")
    is_analysis = runs.get("tags.bench.analysis_of", pd.Series(index=runs.index, dtype=object)).notna()
    training, analyses = runs[~is_analysis].copy(), runs[is_analysis]
    for _, a in analyses.iterrows():
        hit = training["run_id"] == a["tags.bench.analysis_of"]
        for c in (c for c in analyses if c.startswith("metrics.") and pd.notna(a[c])):
            training.loc[hit, c] = a[c]
    return training.sort_values("run_id")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--sweep", required=True)
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    runs = sweep_runs(args.sweep)
    table = pd.read_csv(args.csv, dtype={"latent": str, "seeds": str, "runs_a": str, "runs_b": str})
    checked, bad = 0, []
    for _, r in table[table["n"] >= 2].iterrows():
        za, _, zb = str(r["latent"]).partition("→")
        zb = zb or za
        seeds = str(r["seeds"]).split()
        ids = {s: str(r[f"runs_{s}"]).split(";") if pd.notna(r.get(f"runs_{s}")) else None for s in "ab"}
        d = (values(runs, r["variant_b"], zb, seeds, r["metric"], ids["b"])
             - values(runs, r["variant_a"], za, seeds, r["metric"], ids["a"]))
        n, sd = len(d), d.std(ddof=1)
        half = stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) if sd > 0 else float("nan")  # no spread: no interval
        want = (d.mean(), d.mean() - half, d.mean() + half)
        got = (r["mean_diff"], r["ci_low"], r["ci_high"])
        checked += 1
        if n != r["n"] or not np.allclose(want, got, rtol=0, atol=1e-6, equal_nan=True):
            bad.append(f"{r['comparison']} {r['variant_a']}:{r['variant_b']} z={r['latent']} {r['metric']}: "
                       f"recomputed {want}, table {got}")
    print(f"{checked - len(bad)} of {checked} intervals match the runs' metrics (|difference| <= 1e-6)")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
