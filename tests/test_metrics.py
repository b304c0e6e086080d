"""evals.metrics against references: brute-force k-subset enumeration and math.comb."""
import itertools
import math

import numpy as np
import pytest

from evals.metrics import OverallSpec, auc, mean_pass_at_k, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (first c correct) holding a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def comb_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k),
                                                       abs=1e-12), (n, c, k)


def test_pass_at_k_matches_comb_formula_for_large_n():
    for n, c, k in [(32, 1, 32), (64, 3, 8), (100, 17, 10), (200, 199, 5), (200, 0, 50),
                    (500, 250, 32)]:
        assert pass_at_k(n, c, k) == pytest.approx(comb_pass_at_k(n, c, k), rel=1e-12)


def test_pass_at_k_vectorized_equals_elementwise():
    rng = np.random.default_rng(0)
    n = rng.integers(8, 40, size=50)
    c = rng.integers(0, 41, size=50) % (n + 1)
    out = pass_at_k(n, c, 8)
    assert isinstance(out, np.ndarray) and out.shape == (50,) and out.dtype == np.float64
    expected = [comb_pass_at_k(int(ni), int(ci), 8) for ni, ci in zip(n, c)]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)


def test_pass_at_k_broadcasts_scalar_n():
    out = pass_at_k(10, np.array([0, 5, 10]), 3)
    np.testing.assert_allclose(out, [0.0, comb_pass_at_k(10, 5, 3), 1.0])


def test_pass_at_k_scalar_returns_python_float():
    value = pass_at_k(np.int64(4), np.int64(1), 2)
    assert type(value) is float and value == pytest.approx(0.5)


def test_pass_at_1_is_fraction_correct():
    assert pass_at_k(np.array([10, 10, 4]), np.array([3, 0, 4]), 1) == pytest.approx(
        [0.3, 0.0, 1.0])


@pytest.mark.parametrize("n, c, k, match", [
    (4, 1, 5, "exceeds the sample count"),
    (4, 5, 2, "exceeds n"),
    (-1, 0, 1, "non-negative"),
    (4, -1, 1, "non-negative"),
    (4, 1, 0, "k must be >= 1"),
    (4, 1.5, 1, "whole numbers"),
    (4, 1, 2.0, "k must be an int"),
])
def test_pass_at_k_rejects_bad_counts(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_when_any_problem_violates():
    with pytest.raises(ValueError, match="exceeds n"):
        pass_at_k(np.array([5, 5]), np.array([2, 6]), 1)
    with pytest.raises(ValueError, match="exceeds the sample count"):
        pass_at_k(np.array([8, 4]), np.array([1, 1]), 6)


def test_mean_pass_at_k_with_k_equal_n_is_fraction_with_any_correct():
    rng = np.random.default_rng(1)
    m = rng.random((40, 8)) < 0.1                                     # (P, n)
    got = mean_pass_at_k(m, [8])
    assert got[8] == pytest.approx(m.any(axis=1).mean())
    assert 0.0 < got[8] < 1.0          # the draw has both kinds of problem


def test_mean_pass_at_k_monotone_in_k_and_pass_at_1_is_accuracy():
    rng = np.random.default_rng(2)
    p = rng.random((30, 1))                                           # per-problem skill
    m = rng.random((30, 16)) < p                                      # (P, n)
    ks = [1, 2, 4, 8, 16]
    got = mean_pass_at_k(m, ks)
    assert list(got) == ks
    values = [got[k] for k in ks]
    assert all(x < y for x, y in zip(values, values[1:])), values
    assert got[1] == pytest.approx(m.mean())


def test_mean_pass_at_k_rejects_non_bool_and_bad_shape():
    with pytest.raises(ValueError, match="bool"):
        mean_pass_at_k(np.ones((3, 4), dtype=int), [1])
    with pytest.raises(ValueError, match=r"\(problems, n\)"):
        mean_pass_at_k(np.ones(4, dtype=bool), [1])
    with pytest.raises(ValueError, match=r"\(problems, n\)"):
        mean_pass_at_k(np.ones((0, 4), dtype=bool), [1])


def test_auc_is_mean_of_equally_spaced_evaluations():
    assert auc([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    assert auc([0.7]) == pytest.approx(0.7)
    # Learning early scores higher than the same final value reached late.
    assert auc([0.1, 0.8, 0.8, 0.8]) > auc([0.1, 0.1, 0.1, 0.8])


def test_auc_rejects_empty_and_non_finite():
    with pytest.raises(ValueError, match="empty"):
        auc([])
    with pytest.raises(ValueError, match="finite"):
        auc([0.1, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        auc([[0.1, 0.2]])


SPEC = {"add2/acc@1": 0.15, "add4/pass@8": 0.2, "add3/acc@1": 0.65}


def test_overall_is_the_weighted_sum():
    spec = OverallSpec(SPEC)
    scores = {"add2/acc@1": 50.0, "add4/pass@8": 30.0, "add3/acc@1": 40.0, "extra/x": 99.0}
    assert spec.overall(scores) == pytest.approx(0.15 * 50 + 0.2 * 30 + 0.65 * 40)
    assert spec.keys == ("add2/acc@1", "add4/pass@8", "add3/acc@1")


def test_overall_missing_key_is_named():
    spec = OverallSpec(SPEC)
    with pytest.raises(KeyError, match="add4/pass@8"):
        spec.overall({"add2/acc@1": 1.0, "add3/acc@1": 1.0})


def test_describe_is_one_line_formula():
    text = OverallSpec(SPEC).describe()
    assert text == "Overall = 0.15*add2/acc@1 + 0.2*add4/pass@8 + 0.65*add3/acc@1"
    assert "\n" not in text


@pytest.mark.parametrize("weights, match", [
    ({}, "at least one"),
    ({"add2/acc@1": 0.5, "add4/pass@8": 0.4}, "sum to 1"),
    ({"add2/acc@1": 1.2, "add4/pass@8": -0.2}, "positive"),
    ({"add2/acc@1": 1.0, "add4/pass@8": 0.0}, "positive"),
    ({"add2/acc@1": float("nan")}, "positive"),
    ({"acc": 1.0}, "family/metric"),
    ({"/acc@1": 1.0}, "family/metric"),
])
def test_overall_spec_validation(weights, match):
    with pytest.raises(ValueError, match=match):
        OverallSpec(weights)


def test_overall_spec_accepts_rounding_within_tolerance_and_is_frozen():
    weights = {"a/x": 0.1, "b/y": 0.2, "c/z": 0.7 + 5e-7}
    spec = OverallSpec(weights)
    weights["a/x"] = 0.9                      # the spec keeps its own copy
    assert spec.weights["a/x"] == 0.1
    with pytest.raises(TypeError):
        spec.weights["a/x"] = 0.5
    with pytest.raises(AttributeError):
        spec.weights = {}
