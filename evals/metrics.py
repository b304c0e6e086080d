"""Evaluation metrics: unbiased pass@k, learning-curve AUC, and the weighted Overall score.

pass@k follows Chen et al. 2021 (arXiv:2107.03374, Codex): from n samples of which c are
correct, pass@k = 1 - C(n-c, k) / C(n, k), computed as the product
1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms a large binomial coefficient.

Overall is a weighted sum of per-family metrics, e.g. 0.2*add4/pass@8 + 0.15*add2/acc@1;
the task suite supplies its own ``OverallSpec``, this module knows no task family.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

import numpy as np

WEIGHT_SUM_TOL = 1e-6


def _as_counts(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be integer counts, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must be whole numbers, got {x!r}")
    arr = arr.astype(np.int64)
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative, got {x!r}")
    return arr


def pass_at_k(n, c, k: int) -> float | np.ndarray:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (Chen et al. 2021).

    Args:
        n: samples drawn per problem; int or integer array.
        c: correct samples per problem; int or integer array broadcastable with ``n``.
        k: the k of pass@k, 1 <= k <= every n.
    Returns:
        float for scalar inputs, else a float64 array of the broadcast shape of (n, c).
    Raises:
        ValueError: k < 1, k > n, c > n, a negative or non-integer count.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an int, got {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_arr, c_arr = np.broadcast_arrays(_as_counts(n, "n"), _as_counts(c, "c"))
    if np.any(k > n_arr):
        raise ValueError(f"k={k} exceeds the sample count n (min n = {n_arr.min()}); "
                         f"draw at least k samples per problem")
    if np.any(c_arr > n_arr):
        raise ValueError("c (correct samples) exceeds n (samples drawn) for some problem")
    # Factors 1 - k/i for i = n-c+1 .. n, padded with 1 up to the largest c.
    j = np.arange(int(c_arr.max()) if c_arr.size else 0)                  # (C,)
    i = (n_arr - c_arr + 1)[..., None] + j                                 # (..., C)
    factors = np.where(j < c_arr[..., None], 1.0 - k / i, 1.0)             # (..., C)
    # With fewer than k incorrect samples every k-subset holds a correct one.
    result = np.where(n_arr - c_arr < k, 1.0, 1.0 - np.prod(factors, axis=-1))
    return float(result) if result.ndim == 0 else result


def mean_pass_at_k(correct_matrix, ks: Iterable[int]) -> dict[int, float]:
    """Mean pass@k over problems.

    Args:
        correct_matrix: (problems, n) bool array, True where a sample is correct.
        ks: the k values; each 1 <= k <= n.
    Returns:
        {k: mean over problems of pass@k}, in the order of ``ks``.
    """
    m = np.asarray(correct_matrix)
    if m.dtype != bool:
        raise ValueError(f"correct_matrix must be a bool array, got dtype {m.dtype}")
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"correct_matrix must be (problems, n) with both > 0, got {m.shape}")
    n = np.full(m.shape[0], m.shape[1])                                   # (P,)
    c = m.sum(axis=1)                                                     # (P,)
    return {int(k): float(np.mean(pass_at_k(n, c, k))) for k in ks}


def auc(values) -> float:
    """Area under a learning curve divided by its length: the mean of its evaluations.

    Each of the m evaluations, equally spaced in training, stands for an equal share of
    training (a rectangle rule), so the result is mean(values): less noisy than the last
    value alone, and it rewards learning early.

    Args:
        values: (m,) metric values in training order, m >= 1, all finite.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D (one value per evaluation), got shape {v.shape}")
    if v.size == 0:
        raise ValueError("auc of an empty learning curve: no evaluation was recorded")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"values must be finite, got {values!r}")
    return float(v.mean())


@dataclass(frozen=True)
class OverallSpec:
    """Weights of the Overall score, keyed "family/metric" (e.g. "add4/pass@8").

    Weights are positive and sum to 1 (within 1e-6). Key order is kept for ``describe``.
    """

    weights: Mapping[str, float]

    def __post_init__(self):
        if not self.weights:
            raise ValueError("OverallSpec needs at least one weighted metric")
        for key, w in self.weights.items():
            family, sep, metric = str(key).partition("/")
            if not (isinstance(key, str) and sep and family and metric):
                raise ValueError(f"key {key!r} must look like 'family/metric', "
                                 f"e.g. 'add4/pass@8'")
            if not (isinstance(w, numbers.Real) and not isinstance(w, bool)
                    and math.isfinite(w) and w > 0):
                raise ValueError(f"weight of {key!r} must be a positive number, got {w!r}")
        total = math.fsum(self.weights.values())
        if abs(total - 1.0) > WEIGHT_SUM_TOL:
            raise ValueError(f"weights must sum to 1, they sum to {total:.9g}")
        # Read-only copy, so the frozen spec cannot change behind a caller's dict.
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def overall(self, scores: Mapping[str, float]) -> float:
        """sum_key weight[key] * scores[key]; extra keys in ``scores`` are ignored."""
        missing = [key for key in self.weights if key not in scores]
        if missing:
            raise KeyError(f"scores lack {', '.join(missing)} (Overall needs "
                           f"{', '.join(self.weights)})")
        return math.fsum(w * float(scores[key]) for key, w in self.weights.items())

    def describe(self) -> str:
        """One-line formula, e.g. "Overall = 0.15*add2/acc@1 + 0.2*add4/pass@8"."""
        terms = " + ".join(f"{w:g}*{key}" for key, w in self.weights.items())
        return f"Overall = {terms}"
