"""Directive -> objective: "accurate" is Overall alone; "concise" is a contract (as short
as possible while Overall stays within a margin of GRPO's), not a weight on length."""
import pytest

from evals.objective import (ObjectiveSpec, fitness, objective_from_directive, seed_fitnesses,
                             within_margin)


def test_keywords_map_to_objectives():
    assert objective_from_directive("accurate").length == "ignore"
    assert not objective_from_directive("be correct").minimizes_length
    for d in ("Accurate and CONCISE", "short answers please", "brief", "length"):
        spec = objective_from_directive(d)
        assert spec.length == "minimize" and spec.margin == 1.0 and spec.penalty == 10.0
    with pytest.raises(ValueError, match="directive is empty"):
        objective_from_directive("   ")


def test_accuracy_only_fitness_is_overall_and_ignores_length():
    spec = objective_from_directive("accurate")
    assert fitness(spec, 70.0, 10.0, (80.0, 30.0)) == 70.0
    assert fitness(spec, 70.0, 60.0, (80.0, 30.0)) == 70.0
    assert spec.describe() == "fitness = Overall (val)"


def test_concise_ranks_by_length_within_the_margin_and_accuracy_buys_nothing():
    spec = objective_from_directive("accurate and concise")
    ref = (70.0, 30.0)
    assert fitness(spec, 70.0, 24.0, ref) == pytest.approx(20.0)   # 20% shorter
    # within the margin, more accuracy is worth nothing: length alone ranks
    assert fitness(spec, 79.0, 27.0, ref) < fitness(spec, 69.2, 24.0, ref)
    assert fitness(spec, 70.0, 36.0, ref) == pytest.approx(-20.0)  # longer: negative
    assert fitness(spec, 70.0, 30.0, ref) == 0.0                   # GRPO itself


def test_concise_makes_accuracy_below_the_margin_cost_more_than_length_can_buy():
    spec = objective_from_directive("accurate and concise")
    ref = (70.0, 30.0)
    # 3 points below GRPO (2 below the floor) and 50% shorter: -20 points of fitness ...
    assert fitness(spec, 67.0, 15.0, ref) == pytest.approx(50.0 - 10 * 2.0)
    # ... so it loses to a candidate 35% shorter that keeps the margin
    assert fitness(spec, 67.0, 15.0, ref) < fitness(spec, 69.5, 19.5, ref)
    # a collapse (Overall 40, 90% shorter) ranks far below GRPO itself
    assert fitness(spec, 40.0, 3.0, ref) < fitness(spec, 70.0, 30.0, ref) - 100
    assert fitness(spec, 70.0, 24.0, None) == 70.0  # no reference yet: Overall
    strict = spec.model_copy(update={"margin": 0.0})
    assert fitness(strict, 69.5, 24.0, ref) < fitness(spec, 69.5, 24.0, ref)
    assert within_margin(spec, -1.0) and not within_margin(spec, -1.01)


def test_specs_written_before_the_contract_read_as_the_contract():
    old = ObjectiveSpec.model_validate({"directive": "d", "length_weight": 0.2,
                                        "accuracy_tolerance": 2.5})
    assert (old.length, old.margin) == ("minimize", 2.5)
    acc = ObjectiveSpec.model_validate({"directive": "d", "length_weight": 0.0})
    assert (acc.length, acc.margin) == ("ignore", 1.0)
    assert ObjectiveSpec.model_validate(old.model_dump()) == old  # round trip
    with pytest.raises(ValueError):
        ObjectiveSpec.model_validate({"directive": "d", "length": "maximize"})
    with pytest.raises(ValueError):
        ObjectiveSpec.model_validate({"directive": "d", "length": "minimize", "margin": 50})


def test_over_seeds_the_penalty_reads_the_mean_overall_so_noise_is_not_charged():
    concise = objective_from_directive("accurate and concise")
    # GRPO's own three seeds, scored against their own means: 0 (the contract's value),
    # where charging each seed's Overall made seed noise a penalty (-5.6 here)
    grpo = [(85.0, 42.0), (90.0, 44.0), (88.0, 43.0)]
    ref = (sum(o for o, _ in grpo) / 3, sum(length for _, length in grpo) / 3)
    fits = seed_fitnesses(concise, grpo, ref)
    assert sum(fits) / 3 == pytest.approx(0.0)
    assert sum(fitness(concise, o, length, ref) for o, length in grpo) / 3 == pytest.approx(
        -10 * (ref[0] - 1 - 85.0) / 3)
    # any candidate: the mean of its seeds' fitnesses is the fitness of its means
    cand = [(80.0, 30.0), (92.0, 33.0), (86.5, 36.0)]
    mean = (sum(o for o, _ in cand) / 3, sum(length for _, length in cand) / 3)
    assert sum(seed_fitnesses(concise, cand, ref)) / 3 == pytest.approx(
        fitness(concise, *mean, ref))
    below = [(80.0, 30.0), (82.0, 33.0)]  # mean 81: 6.67 points below the floor
    assert sum(seed_fitnesses(concise, below, ref)) / 2 == pytest.approx(
        fitness(concise, 81.0, 31.5, ref)) and fitness(concise, 81.0, 31.5, ref) < 0
    # "accurate": each seed's Overall, as before; no reference: the same
    accurate = objective_from_directive("accurate")
    assert seed_fitnesses(accurate, cand, ref) == [80.0, 92.0, 86.5]
    assert seed_fitnesses(concise, cand, None) == [80.0, 92.0, 86.5]
    assert seed_fitnesses(concise, [], ref) == []
