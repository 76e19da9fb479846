"""The report's statistics: paired t-intervals, Holm's adjustment for a family of them, and a two-stage bootstrap of
a variance ratio (over runs, then minibatches within each run). Pure functions of numbers; no pandas, no MLflow.

scipy (a dependency of mlflow, and listed in pyproject.toml) gives the t quantiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95  # every interval in the report


@dataclass(frozen=True)
class Paired:
    """Mean paired difference (b - a) over n pairs, its 95% t-interval on n - 1 degrees of freedom, and the
    two-sided p-value of a paired t-test. With n < 2 there is no interval: ci_low, ci_high, sd, p are NaN; with
    identical differences (sd = 0) neither (ci_low, ci_high, p NaN)."""

    n: int
    mean_diff: float
    sd: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def resolved(self) -> bool:
        """The interval excludes 0."""
        return self.n >= 2 and (self.ci_low > 0 or self.ci_high < 0)


def paired_t(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Paired:
    """Paired differences b - a (a[i] and b[i] come from the same seed)."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    nan = float("nan")
    if n == 0:
        return Paired(0, nan, nan, nan, nan, nan)
    mean = float(d.mean())
    if n < 2:
        return Paired(1, mean, nan, nan, nan, nan)
    sd = float(d.std(ddof=1))
    if sd == 0:  # every pair differs by the same amount: no spread to build an interval or a test on (as scipy)
        return Paired(n, mean, 0.0, nan, nan, nan)
    se = sd / math.sqrt(n)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * se
    return Paired(n, mean, sd, mean - half, mean + half, float(2 * sps.t.sf(abs(mean / se), n - 1)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count towards the family)."""
    p = np.asarray(p_values, dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full(len(p), np.nan)
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def mean_se(values: Sequence[float]) -> tuple[int, float, float]:
    """n, mean and standard error of the mean (NaN below 2 values) of the finite values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return 0, float("nan"), float("nan")
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return len(v), float(v.mean()), se


@dataclass(frozen=True)
class Ratio:
    """A ratio of mean variances with a percentile bootstrap interval; how it was resampled in ``over``."""

    ratio: float
    ci_low: float
    ci_high: float
    runs: int
    batches: int
    over: str


def bootstrap_ratio(num: Sequence[Sequence[float]], den: Sequence[Sequence[float]], reps: int = 2000,
                    level: float = LEVEL, seed: int = 0) -> Ratio:
    """sum(num) / sum(den) over runs (rows) and minibatches (columns; num[r][b] and den[r][b] measured on the
    same minibatch of the same run), with a two-stage percentile bootstrap: runs with replacement, then the
    minibatches of each drawn run with replacement. Runs with different minibatch counts are resampled by run
    only (their per-run means); a single run by minibatch only. Too few units for a percentile interval to mean
    anything (fewer than 3 runs resampled by run, or 3 minibatches of a single run) give none."""
    rows = [(np.asarray(x, float), np.asarray(y, float)) for x, y in zip(num, den, strict=True)]
    rows = [(x[np.isfinite(x) & np.isfinite(y)], y[np.isfinite(x) & np.isfinite(y)]) for x, y in rows]
    rows = [(x, y) for x, y in rows if len(x)]
    nan = float("nan")
    if not rows:
        return Ratio(nan, nan, nan, 0, 0, "nothing")
    r = len(rows)
    sizes = {len(x) for x, _ in rows}
    point = sum(x.mean() for x, _ in rows) / sum(y.mean() for _, y in rows)
    rng = np.random.default_rng(seed)
    b = sizes.pop() if len(sizes) == 1 else 0
    if b > 1 and (r > 1 or b >= 3):
        n = np.stack([x for x, _ in rows])
        d = np.stack([y for _, y in rows])
        ir = rng.integers(r, size=(reps, r))[..., None]
        ib = rng.integers(b, size=(reps, r, b))
        sims = n[ir, ib].sum(axis=(1, 2)) / d[ir, ib].sum(axis=(1, 2))
        over = f"{r} runs × {b} minibatches" if r > 1 else f"the {b} minibatches of 1 run"
        batches = b
    elif r >= 3:
        n = np.array([x.mean() for x, _ in rows])
        d = np.array([y.mean() for _, y in rows])
        ir = rng.integers(r, size=(reps, r))
        sims = n[ir].sum(axis=1) / d[ir].sum(axis=1)
        over = f"{r} runs (per-run means)"
        batches = min(len(x) for x, _ in rows)
    else:
        return Ratio(float(point), nan, nan, r, min(len(x) for x, _ in rows),
                     f"{r} run(s) × {b or 'unequal'} minibatch(es): too few for an interval")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(sims, [alpha, 1 - alpha])
    return Ratio(float(point), float(lo), float(hi), r, batches, over)


def sig2(x: float) -> str:
    """Two significant figures, thousands separated: 6100, 0.54, 1.2, 35000."""
    if not math.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    v = float(f"{x:.1e}")  # rounded first: 0.0996 -> 0.10, two figures of the rounded value
    digits = 1 - int(math.floor(math.log10(abs(v))))
    return f"{v:,.0f}" if digits <= 0 else f"{v:.{digits}f}"
