"""evals.stats against a hand computation, scipy's t tests, and a simulated study."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from evals.stats import (ConfidenceInterval, format_ci, mean_ci, paired_bootstrap_ci,
                         paired_diff_ci)


def test_paired_t_interval_by_hand():
    # d = [1, 2, 2]: mean 5/3, sd = sqrt(1/3), sem = 1/3, t_{0.975, 2} = 4.3026527297.
    ci = paired_diff_ci([1.0, 2.0, 3.0], [2.0, 4.0, 5.0])
    assert ci.mean == pytest.approx(5 / 3)
    assert ci.sd == pytest.approx(math.sqrt(1 / 3))
    assert ci.n == 3 and ci.level == 0.95 and ci.method == "t"
    half = 4.3026527297 / 3
    assert ci.ci_low == pytest.approx(5 / 3 - half, abs=1e-9)
    assert ci.ci_high == pytest.approx(5 / 3 + half, abs=1e-9)


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95, 0.99])
def test_paired_t_interval_matches_scipy(level):
    rng = np.random.default_rng(3)
    a = rng.normal(40, 3, size=7)
    b = a + rng.normal(1.5, 1.0, size=7)
    ci = paired_diff_ci(a, b, level)
    d = b - a
    low, high = sps.t.interval(level, df=6, loc=d.mean(), scale=sps.sem(d))
    assert (ci.ci_low, ci.ci_high) == pytest.approx((low, high), rel=1e-12)
    ref = sps.ttest_rel(b, a).confidence_interval(level)
    assert (ci.ci_low, ci.ci_high) == pytest.approx((ref.low, ref.high), rel=1e-12)


def test_excludes_zero_agrees_with_ttest_rel_p_value():
    rng = np.random.default_rng(4)
    for shift in [0.0, 0.3, 0.6, 1.0, 2.0] * 4:
        a = rng.normal(0, 1, size=6)
        b = a + rng.normal(shift, 1.0, size=6)
        p = sps.ttest_rel(b, a).pvalue
        assert paired_diff_ci(a, b).excludes_zero == (p < 0.05), (shift, p)


def test_mean_ci_matches_scipy_and_is_symmetric():
    values = [47.8, 49.1, 46.5, 48.0, 50.2]
    ci = mean_ci(values, 0.9)
    low, high = sps.t.interval(0.9, df=4, loc=np.mean(values), scale=sps.sem(values))
    assert (ci.ci_low, ci.ci_high) == pytest.approx((low, high), rel=1e-12)
    assert ci.mean - ci.ci_low == pytest.approx(ci.ci_high - ci.mean)
    assert ci.sd == pytest.approx(np.std(values, ddof=1))


def test_one_seed_gives_infinite_interval():
    ci = paired_diff_ci([1.0], [3.0])
    assert ci.mean == 2.0 and ci.n == 1 and math.isnan(ci.sd)
    assert ci.ci_low == -math.inf and ci.ci_high == math.inf
    assert not ci.excludes_zero
    boot = paired_bootstrap_ci([1.0], [3.0])
    assert boot.ci_low == -math.inf and boot.ci_high == math.inf and boot.mean == 2.0


@pytest.mark.parametrize("fn", [paired_diff_ci, paired_bootstrap_ci])
def test_paired_rejects_empty_mismatched_and_bad_level(fn):
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="pair seed by seed"):
        fn([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        fn([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="level"):
        fn([1.0, 2.0], [2.0, 3.0], level=95)


def test_mean_ci_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        mean_ci([])


def test_excludes_zero_clear_and_unclear_cases():
    a = [40.0, 42.0, 41.0, 43.0, 39.0]
    clear_win = paired_diff_ci(a, [x + 3.0 + e for x, e in zip(a, [0.2, -0.1, 0.3, 0.0, -0.2])])
    clear_loss = paired_diff_ci(a, [x - 3.0 + e for x, e in zip(a, [0.2, -0.1, 0.3, 0.0, -0.2])])
    noise = paired_diff_ci(a, [x + e for x, e in zip(a, [2.0, -1.5, 1.0, -2.5, 0.5])])
    assert clear_win.excludes_zero and clear_win.ci_low > 0
    assert clear_loss.excludes_zero and clear_loss.ci_high < 0
    assert not noise.excludes_zero and noise.ci_low < 0 < noise.ci_high
    # An interval touching zero does not exclude it.
    assert not ConfidenceInterval(1.0, 0.0, 2.0, 3, 1.0, 0.95, "t").excludes_zero


def test_bootstrap_is_deterministic_under_seed():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 10), rng.normal(0.5, 1, 10)
    first = paired_bootstrap_ci(a, b, n_boot=2000, seed=7)
    assert paired_bootstrap_ci(a, b, n_boot=2000, seed=7) == first
    other = paired_bootstrap_ci(a, b, n_boot=2000, seed=8)
    assert (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)
    assert other.mean == first.mean == pytest.approx(np.mean(b - a))
    assert first.method == "bootstrap" and first.ci_low < first.mean < first.ci_high


def test_bootstrap_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(6)
    a = rng.normal(0, 1, 200)
    b = a + rng.normal(0.4, 2.0, 200)
    boot = paired_bootstrap_ci(a, b)
    ref = sps.bootstrap((b - a,), np.mean, confidence_level=0.95, n_resamples=10000,
                        method="percentile", rng=np.random.default_rng(1)).confidence_interval
    # Monte Carlo sd of each bound is ~0.004 here; a 90% interval would be ~0.046 off.
    assert boot.ci_low == pytest.approx(ref.low, abs=0.02)
    assert boot.ci_high == pytest.approx(ref.high, abs=0.02)
    t = paired_diff_ci(a, b)
    assert boot.ci_low == pytest.approx(t.ci_low, abs=0.04)
    assert boot.ci_high == pytest.approx(t.ci_high, abs=0.04)


def test_bootstrap_coverage_near_nominal():
    rng = np.random.default_rng(7)
    true_diff, n_sims, n_seeds = 1.5, 200, 30
    covered = 0
    for sim in range(n_sims):
        shared = rng.normal(45, 5, n_seeds)                # per-seed prompt stream
        a = shared + rng.normal(0, 1, n_seeds)
        b = shared + true_diff + rng.normal(0, 1, n_seeds)
        ci = paired_bootstrap_ci(a, b, n_boot=2000, seed=sim)
        covered += ci.ci_low <= true_diff <= ci.ci_high
    coverage = covered / n_sims
    assert 0.88 <= coverage <= 0.99, coverage


def test_bootstrap_rejects_bad_n_boot():
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap_ci([1.0, 2.0], [2.0, 3.0], n_boot=0)


def test_format_ci():
    ci = ConfidenceInterval(2.346, 0.81, 3.94, 5, 1.0, 0.95, "t")
    assert format_ci(ci) == "+2.3 [+0.8, +3.9]"
    assert format_ci(ci, digits=2) == "+2.35 [+0.81, +3.94]"
    neg = ConfidenceInterval(-1.0, -2.5, 0.24, 5, 1.0, 0.95, "t")
    assert format_ci(neg) == "-1.0 [-2.5, +0.2]"
    assert format_ci(paired_diff_ci([1.0], [2.0])) == "+1.0 [-inf, +inf]"
