"""Confidence intervals for comparing algorithms over seeds.

Runs are paired by seed: seed i of algorithm A and seed i of algorithm B see the same
prompt stream, so the comparison uses the per-seed differences d_i = b_i - a_i, which
removes the variance the two runs share.

- ``paired_diff_ci`` / ``mean_ci``: Student t interval, mean +- t_{(1+level)/2, n-1} * sd/sqrt(n),
  sd with ddof=1. With n = 1 the interval is (-inf, +inf): one seed says nothing about
  the spread.
- ``paired_bootstrap_ci``: percentile bootstrap of mean(d), seeded (numpy Generator).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class ConfidenceInterval:
    """A mean with its confidence interval.

    mean: the estimate (mean of the values or of the paired differences b - a).
    ci_low, ci_high: interval bounds; infinite when n == 1.
    n: number of values (seeds). sd: sample standard deviation (ddof=1; nan when n == 1).
    level: coverage, e.g. 0.95. method: "t" or "bootstrap".
    """

    mean: float
    ci_low: float
    ci_high: float
    n: int
    sd: float
    level: float
    method: str

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies strictly on one side of zero."""
        return self.ci_low > 0 or self.ci_high < 0


def _values(x, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per seed), got shape {v.shape}")
    if v.size == 0:
        raise ValueError(f"{name} is empty: a confidence interval needs at least one seed")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return v


def _paired_diffs(a, b) -> np.ndarray:
    a, b = _values(a, "a"), _values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must pair seed by seed: got {a.size} and {b.size} values")
    return b - a                                                          # (n,)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def _sd(v: np.ndarray) -> float:
    return float(v.std(ddof=1)) if v.size > 1 else math.nan


def mean_ci(values, level: float = 0.95) -> ConfidenceInterval:
    """Student t interval for the mean of ``values``: (n,) floats, n >= 1."""
    _check_level(level)
    v = _values(values, "values")
    n, mean, sd = v.size, float(v.mean()), _sd(v)
    if n == 1:
        return ConfidenceInterval(mean, -math.inf, math.inf, 1, sd, level, "t")
    half = float(sps.t.ppf((1.0 + level) / 2.0, df=n - 1)) * sd / math.sqrt(n)
    return ConfidenceInterval(mean, mean - half, mean + half, n, sd, level, "t")


def paired_diff_ci(a, b, level: float = 0.95) -> ConfidenceInterval:
    """Student t interval for mean(b - a); ``a``, ``b``: (n,) per-seed metrics, same seeds.

    Positive mean: b beats a. Matches ``scipy.stats.ttest_rel(b, a)``.
    """
    _check_level(level)
    return mean_ci(_paired_diffs(a, b), level)


def paired_bootstrap_ci(a, b, level: float = 0.95, n_boot: int = 10000,
                        seed: int = 0) -> ConfidenceInterval:
    """Percentile bootstrap interval for mean(b - a); ``a``, ``b``: (n,) per-seed metrics.

    Resamples the n paired differences with replacement ``n_boot`` times from
    ``np.random.default_rng(seed)``; the same inputs and seed give the same interval.
    With n == 1 every resample is identical, so the interval is (-inf, +inf) as for t.
    """
    _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    d = _paired_diffs(a, b)                                               # (n,)
    n, mean, sd = d.size, float(d.mean()), _sd(d)
    if n == 1:
        return ConfidenceInterval(mean, -math.inf, math.inf, 1, sd, level, "bootstrap")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))                            # (n_boot, n)
    boot_means = d[idx].mean(axis=1)                                      # (n_boot,)
    alpha = 1.0 - level
    low, high = np.quantile(boot_means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return ConfidenceInterval(mean, float(low), float(high), n, sd, level, "bootstrap")


def format_ci(ci: ConfidenceInterval, digits: int = 1) -> str:
    """Signed mean and interval, e.g. "+2.3 [+0.8, +3.9]"."""
    return f"{ci.mean:+.{digits}f} [{ci.ci_low:+.{digits}f}, {ci.ci_high:+.{digits}f}]"
