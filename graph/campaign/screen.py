"""How much of the screen's ranking is seed noise: the reliability of the k-seed screen.

The search scores every candidate on ``--screen-seeds`` seeds; their mean is what the
parent selector and the promotion cut rank. A one-way random-effects analysis of
variance over the archived per-seed fitness values splits their spread into the part
that belongs to the candidates (``between``) and the part that changes with the seed
(``within``). The reliability of a k-seed mean is ICC(1,k) = between / (between +
within / k) (Shrout & Fleiss 1979, case 1; McGraw & Wong 1996): the squared correlation
between the screen's mean and the candidate's true mean at the screening budget. Its
95% CI comes from the F distribution of MSB / MSW (McGraw & Wong's case 1 bounds), and
the Spearman-Brown formula says how many seeds would reach a target reliability.

What it does not measure: whether the screening budget (fewer steps) ranks like the full
one; the screen-vs-promotion rank correlation in the report speaks to that, over the
few promoted candidates, where the restricted range of the top of the screen pulls any
correlation toward 0.
"""
from __future__ import annotations

import math

import numpy as np

TARGET_RELIABILITY = 0.8


def screen_reliability(fitness: dict[str, list[float]],
                       target: float = TARGET_RELIABILITY) -> dict:
    """ICC(1,k) of the screen from ``fitness`` (candidate -> its per-seed fitness values;
    candidates with fewer than 2 finite values are left out). Returns the counts, the
    within- and between-candidate SDs, the one-seed and k-seed reliabilities with the
    k-seed one's 95% CI (clamped to [0, 1]), the expected correlation with the true
    ranking (sqrt of the reliability), and the seeds for ``target``; or, where it cannot
    be estimated, the counts and a ``note`` saying why."""
    from scipy.stats import f as f_dist

    groups = [np.asarray([v for v in vals if v is not None and math.isfinite(v)], float)
              for vals in fitness.values()]
    groups = [g for g in groups if len(g) >= 2]
    a = len(groups)
    n = int(sum(len(g) for g in groups))
    out: dict = {"candidates": a, "evaluations": n}
    if a < 3:
        return {**out, "note": f"undefined: {a} candidate(s) with 2+ seeds, need 3"}
    sizes = np.array([len(g) for g in groups], float)
    k0 = float((n - (sizes ** 2).sum() / n) / (a - 1))  # the mean group size, unbalanced
    grand = np.concatenate(groups).mean()
    msw = float(sum(((g - g.mean()) ** 2).sum() for g in groups) / (n - a))
    msb = float(sum(len(g) * (g.mean() - grand) ** 2 for g in groups) / (a - 1))
    out["seeds"] = k0
    if msw == 0.0:
        return {**out, "note": "undefined: every candidate scored the same on each seed"}
    var_b = max(0.0, (msb - msw) / k0)
    icc1 = var_b / (var_b + msw)
    rel = var_b / (var_b + msw / k0)
    f_obs = msb / msw
    df1, df2 = a - 1, n - a
    f_low = f_obs / f_dist.ppf(0.975, df1, df2)
    f_high = f_obs * f_dist.ppf(0.975, df2, df1)
    clamp = lambda x: min(1.0, max(0.0, x))  # noqa: E731
    seeds_for = (None if icc1 <= 0.0
                 else math.ceil(target / (1 - target) * (1 - icc1) / icc1 - 1e-9))
    return {**out, "within_sd": math.sqrt(msw), "between_sd": math.sqrt(var_b),
            "f": f_obs, "icc_one_seed": icc1, "reliability": rel,
            "reliability_ci95": [clamp(1 - 1 / f_low) if f_low > 0 else 0.0,
                                 clamp(1 - 1 / f_high) if f_high > 0 else 0.0],
            "expected_rho": math.sqrt(rel), "target": target, "seeds_for_target": seeds_for}


def archived_fitness(archive, run_id: int) -> dict[str, list[float]]:
    """Every candidate of ``run_id`` (GRPO included) -> its screen's per-seed fitness."""
    return {c.name: [e.fitness for e in archive.evaluations(c.id)]
            for c in archive.candidates(run_id)}


def reliability_line(rel: dict | None) -> str:
    """The screen's reliability in one sentence, for the report and the terminal."""
    if not rel:
        return "Screen reliability: not measured."
    if "note" in rel:
        return f"Screen reliability ({rel['candidates']} candidates): {rel['note']}."
    lo, hi = rel["reliability_ci95"]
    k = rel["seeds_for_target"]
    need = (f"{k} seed{'s' if k != 1 else ''} would reach {rel['target']:.1f}"
            if k is not None
            else "no seed count reaches it: no spread between candidates was detected")
    return (f"Screen reliability ({rel['candidates']} candidates x {rel['seeds']:.3g} seeds; "
            f"ICC(1,k) of the screen's mean): {rel['reliability']:.2f} [{lo:.2f}, {hi:.2f}] "
            f"(one seed {rel['icc_one_seed']:.2f}); seed SD {rel['within_sd']:.2f}, "
            f"candidate SD {rel['between_sd']:.2f}; expected correlation with the candidates' "
            f"true means at the screening budget ~{rel['expected_rho']:.2f}; {need}.")
