"""The report's statistics against scipy, hand-computed cases, and a coverage check of the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.reporting.stats import bootstrap_ratio, holm, mean_se, paired_t, sig2


def test_paired_t_by_hand() -> None:
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t_{0.975, 2} = 4.302653 -> half-width 2.484138
    t = paired_t([10, 10, 10], [11, 12, 13])
    assert (t.n, t.mean_diff, t.sd) == (3, 2.0, 1.0)
    assert t.ci_low == pytest.approx(2 - 2.484138, abs=1e-6) and t.ci_high == pytest.approx(2 + 2.484138, abs=1e-6)
    assert t.resolved is False


def test_paired_t_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(100, 3, 7)
    b = a + rng.normal(-1, 0.5, 7)
    t = paired_t(a, b)
    d = b - a
    lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    assert (t.ci_low, t.ci_high) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    assert t.p_value == pytest.approx(sps.ttest_rel(b, a).pvalue, rel=1e-10)
    assert t.resolved  # a shift of -1 against noise 0.5, 7 pairs


def test_fewer_than_two_pairs_have_no_interval() -> None:
    one = paired_t([1.0], [2.0])
    assert one.n == 1 and one.mean_diff == 1.0
    assert all(math.isnan(x) for x in (one.ci_low, one.ci_high, one.p_value, one.sd))
    none = paired_t([], [])
    assert none.n == 0 and math.isnan(none.mean_diff)
    assert paired_t([1.0, float("nan")], [2.0, 3.0]).n == 1  # a pair with a missing value does not count


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3*0.01 = 0.03, 2*0.03 = 0.06, max(0.06, 1*0.04) = 0.06; NaN stays out of the family
    assert holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx([0.03, 0.06, float("nan"), 0.06], nan_ok=True)


def test_mean_se_and_two_significant_figures() -> None:
    assert mean_se([1.0, 2.0, 3.0]) == (3, 2.0, pytest.approx(1 / math.sqrt(3)))
    assert [sig2(x) for x in (6059.0, 35823.0, 0.5412, 1.234, 0.0996)] == ["6,100", "36,000", "0.54", "1.2", "0.10"]


def test_bootstrap_ratio_point_and_degenerate_cases() -> None:
    r = bootstrap_ratio([[2.0, 4.0], [6.0, 8.0]], [[1.0, 1.0], [1.0, 1.0]])
    assert r.ratio == pytest.approx(5.0) and r.ci_low <= 5.0 <= r.ci_high and (r.runs, r.batches) == (2, 2)
    assert math.isnan(bootstrap_ratio([[3.0]], [[1.0]]).ci_low)  # one value: no interval
    assert math.isnan(bootstrap_ratio([[3.0], [4.0]], [[1.0], [1.0]]).ci_low)  # 2 runs of one minibatch: too few
    assert math.isnan(bootstrap_ratio([[2.0, 2.0], [4.0]], [[1.0, 1.0], [1.0]]).ci_low)
    ragged = bootstrap_ratio([[2.0, 2.0], [4.0], [3.0]], [[1.0, 1.0], [1.0], [1.0]])
    assert ragged.over == "3 runs (per-run means)" and ragged.ci_low < ragged.ratio < ragged.ci_high


def test_bootstrap_interval_covers_the_true_ratio() -> None:
    """Synthetic runs: a seed effect shared by numerator and denominator, run-level and minibatch-level noise with
    mean 1, so the true ratio of expected variances is known. The 95% two-stage interval should cover it in
    roughly 95% of repetitions (a percentile bootstrap over 10 runs undercovers a little)."""
    rng = np.random.default_rng(7)
    true, runs, batches, sims = 0.25, 10, 8, 300

    def mean_one(sigma: float, size: tuple[int, ...]) -> np.ndarray:
        return rng.lognormal(-sigma**2 / 2, sigma, size)

    covered = 0
    for i in range(sims):
        seed_effect = rng.lognormal(0, 0.5, (runs, 1))
        den = 100 * seed_effect * mean_one(0.3, (runs, batches))
        num = true * 100 * seed_effect * mean_one(0.2, (runs, 1)) * mean_one(0.3, (runs, batches))
        r = bootstrap_ratio(num, den, reps=1000, seed=i)
        covered += r.ci_low <= true <= r.ci_high
    assert 0.88 <= covered / sims <= 0.99, covered / sims


def test_identical_differences_have_no_interval_as_in_scipy() -> None:
    t = paired_t([20, 20, 20], [21, 21, 21])
    assert (t.n, t.mean_diff, t.sd) == (3, 1.0, 0.0) and math.isnan(t.ci_low) and math.isnan(t.p_value)
    with np.errstate(all="ignore"):
        assert all(math.isnan(x) for x in sps.t.interval(0.95, 2, loc=1.0, scale=0.0))
