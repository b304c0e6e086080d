"""The screen's reliability (graph/campaign/screen.py): the one-way random-effects ICC of
the k-seed screen mean, checked against a hand-worked ANOVA, against what it claims to
estimate on simulated screens (the squared correlation of the screen's mean with the
candidates' true means), and on a real archive written by the loop's Archive."""
import math

import numpy as np
import pytest

from graph.campaign.screen import archived_fitness, reliability_line, screen_reliability


def test_hand_worked_anova():
    # means 2, 5, 8 (grand 5); within SS 2 per candidate: MSW = 6 / 3 = 2;
    # MSB = 2 * (9 + 0 + 9) / 2 = 18; between variance (18 - 2) / 2 = 8
    r = screen_reliability({"a": [1, 3], "b": [4, 6], "c": [7, 9]})
    assert r["candidates"] == 3 and r["evaluations"] == 6 and r["seeds"] == 2
    assert r["within_sd"] == pytest.approx(math.sqrt(2))
    assert r["between_sd"] == pytest.approx(math.sqrt(8))
    assert r["f"] == pytest.approx(9)
    assert r["icc_one_seed"] == pytest.approx(0.8)
    assert r["reliability"] == pytest.approx(8 / 9)
    # Spearman-Brown: 0.8 needs 4 * (0.2 / 0.8) = 1 seed
    assert r["seeds_for_target"] == 1
    # McGraw & Wong's bounds: 1 - F(.975; 2, 3) / 9 < 0 -> 0; 1 - 1 / (9 F(.975; 3, 2))
    from scipy.stats import f
    assert r["reliability_ci95"][0] == 0.0
    assert r["reliability_ci95"][1] == pytest.approx(1 - 1 / (9 * f.ppf(0.975, 3, 2)))
    line = reliability_line(r)
    assert "0.89 [0.00, 1.00] (one seed 0.80)" in line and "1 seed would reach 0.8" in line


def test_estimates_what_it_claims_on_simulated_screens():
    """200 candidates x 3 seeds, true candidate SD 1.5 and seed SD 2.5 (about what the
    v3 64-candidate "accurate" screen measured): the reliability is the squared
    correlation between the 3-seed means and the true means, 2.25 / (2.25 + 6.25 / 3)."""
    rng = np.random.default_rng(0)
    truth = rng.normal(80, 1.5, 200)
    seeds = truth[:, None] + rng.normal(0, 2.5, (200, 3))
    r = screen_reliability({f"c{i}": list(row) for i, row in enumerate(seeds)})
    expected = 2.25 / (2.25 + 6.25 / 3)
    lo, hi = r["reliability_ci95"]
    assert lo < expected < hi and hi - lo < 0.3
    assert r["reliability"] == pytest.approx(expected, abs=0.08)
    observed = np.corrcoef(seeds.mean(1), truth)[0, 1] ** 2
    assert r["reliability"] == pytest.approx(observed, abs=0.08)
    assert r["within_sd"] == pytest.approx(2.5, abs=0.2)
    assert r["between_sd"] == pytest.approx(1.5, abs=0.3)
    # 0.8 needs 4 * 6.25 / 2.25 = 11.1 -> 12 seeds at the true values; the estimate is near
    assert 8 <= r["seeds_for_target"] <= 16


def test_unbalanced_missing_and_undefined():
    # a failed seed (None) and a one-seed candidate are left out, not counted as 0
    r = screen_reliability({"a": [1, 3, None], "b": [4, 6], "c": [7, 9], "d": [5]})
    assert r["candidates"] == 3 and r["reliability"] == pytest.approx(8 / 9)
    # unequal seed counts use the ANOVA's mean group size k0 = (7 - 17 / 7) / 2
    u = screen_reliability({"a": [1, 3, 2], "b": [4, 6], "c": [7, 9]})
    assert u["seeds"] == pytest.approx((7 - 17 / 7) / 2)
    too_few = screen_reliability({"a": [1, 2], "b": [3, 4]})
    assert "need 3" in too_few["note"] and "need 3" in reliability_line(too_few)
    flat = screen_reliability({"a": [0, 0], "b": [0, 0], "c": [0, 0]})
    assert "scored the same" in flat["note"]
    # candidates no more different than seeds: no seed count reaches the target
    noise = screen_reliability({"a": [0, 10], "b": [1, 9], "c": [2, 8]})
    assert noise["reliability"] == 0.0 and noise["seeds_for_target"] is None
    assert "no spread between candidates" in reliability_line(noise)
    assert reliability_line(None) == "Screen reliability: not measured."


def test_reads_the_archive(tmp_path):
    """Per-seed fitness as the loop archives it (SQLite through memory.archive)."""
    from memory.archive import Archive
    with Archive(tmp_path) as a:
        run = a.start_run(directive="accurate", config={})
        for name, fits in {"grpo": [1.0, 3.0], "x": [4.0, 6.0], "y": [7.0, None]}.items():
            cid = a.add_candidate(run, name=name, proposal="p", code="c", generation=0)
            for seed, f in enumerate(fits):
                a.add_evaluation(cid, seed=seed, backend="local", metrics={}, fitness=f,
                                 objectives={}, curves={})
        got = archived_fitness(a, run)
    assert got == {"grpo": [1.0, 3.0], "x": [4.0, 6.0], "y": [7.0, None]}
    assert "need 3" in screen_reliability(got)["note"]  # y has one finite seed


def test_phase_totals_and_lines_cover_every_trainer_phase():
    """The campaign's compute by phase: sums per phase over runs, None when any run has
    no split (a partial sum would misstate the shares); the report's groups cover every
    trainer phase once, and the shares are of the stage's total."""
    from graph.campaign.report import phase_lines
    from trainers.local.trainer import PHASE_GROUPS, PHASES, phase_totals

    grouped = [k for _, keys in PHASE_GROUPS for k in keys]
    assert sorted(grouped) == sorted(PHASES) and len(grouped) == len(set(grouped))
    a = dict.fromkeys(PHASES, 1.0) | {"sampling": 6.0, "final_eval": 3.0}  # total 15
    b = dict.fromkeys(PHASES, 1.0) | {"sampling": 2.0}                     # total 9
    total = phase_totals([a, b])
    assert total["sampling"] == 8.0 and total["final_eval"] == 4.0
    assert sum(total.values()) == 24.0
    assert phase_totals([a, None]) is None and phase_totals([a, {}]) is None
    assert phase_totals([]) is None
    lines = phase_lines({"search": total})
    # sampling 8/24, forwards (2 + 2)/24, backward 2/24, evaluation (2 + 4)/24,
    # the rest (step_other 2 + setup 2)/24
    assert lines[-1] == ("- Search (24 CPU-s): sampling 33%, forwards (reference + policy) "
                         "17%, backward + optimizer 8%, evaluation 25%, the rest (grading, "
                         "hooks, setup) 17%")
    assert phase_lines(None) == [] and phase_lines({}) == []
