"""Directive -> objective mapping and the fitness that may not buy length with accuracy."""
import pytest

from evals.objective import fitness, objective_from_directive


def test_keywords_map_to_objectives():
    assert objective_from_directive("accurate").length_weight == 0
    assert objective_from_directive("Accurate and CONCISE").length_weight > 0
    assert objective_from_directive("short answers please").length_weight > 0
    with pytest.raises(ValueError, match="directive is empty"):
        objective_from_directive("   ")


def test_accuracy_only_fitness_is_overall():
    spec = objective_from_directive("accurate")
    assert fitness(spec, 70.0, 10.0, (80.0, 30.0)) == 70.0


def test_length_bonus_needs_accuracy_to_hold():
    spec = objective_from_directive("accurate and concise")
    ref = (70.0, 30.0)
    shorter = fitness(spec, 70.0, 24.0, ref)           # 20% shorter at equal accuracy
    assert shorter == pytest.approx(70.0 + 0.2 * 20)
    assert fitness(spec, 70.0, 36.0, ref) == 70.0       # longer: no bonus, no reward
    # much shorter but 3 points worse than the reference: no bonus at all, so it
    # ranks below the reference itself
    assert fitness(spec, 67.0, 10.0, ref) == 67.0 < fitness(spec, 70.0, 30.0, ref)
    assert fitness(spec, 70.0, 24.0, None) == 70.0     # no reference yet
