"""verl's reward function for math answers: ``compute_score`` (reward.custom_reward_function).

Defined in trainers/verl/grading.py (see there). The returned ``score`` is the outcome
code the hooks decode (1 correct, 0 valid but wrong, -1 invalid); ``acc``, ``valid``,
``length`` (characters of the decoded response: verl gives the reward function text, not
tokens), ``pred`` (the boxed answer, for verl's maj@k) and ``source`` (the data source,
so that verl's validation dump can be grouped per source) are extra info; verl reports
the numeric ones as ``val-core/<source>/acc/...`` and ``val-aux/<source>/...``.
"""
from trainers.verl.grading import compute_score, outcome_code  # noqa: F401
