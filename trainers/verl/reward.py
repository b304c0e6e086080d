"""verl's reward function for math answers: ``compute_score`` (reward.custom_reward_function).

Grading is trainers/verl/grading.py (math-verify on the last ``\\boxed{}``). The
returned ``score`` is the outcome code the VERL adapter decodes (1 correct, 0 valid but
wrong, -1 invalid; see trainers/verl/adapter.py); ``acc``, ``valid``, ``length``
(characters of the decoded response: verl gives the reward function text, not tokens)
``pred`` (the boxed answer, for verl's maj@k) and ``source`` (the data source, so that
verl's validation dump can be grouped per source) are extra info; verl reports the
numeric ones as ``val-core/<source>/acc/...`` and ``val-aux/<source>/...``.
"""
from __future__ import annotations

from trainers.verl.adapter import outcome_code
from trainers.verl.grading import GRADER, extract_boxed, grade  # noqa: F401


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl's reward-function signature -> {score (outcome code), acc, valid, length,
    pred, source}."""
    g = grade(solution_str, ground_truth)
    return {"score": outcome_code(g.correct, g.valid), "acc": float(g.correct),
            "valid": float(g.valid), "length": float(len(solution_str or "")),
            "pred": g.pred, "source": str(data_source)}
