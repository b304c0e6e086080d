"""Directive -> objective: a directive is a contract, written as an ``ObjectiveSpec``.

The builtin mapping reads keywords (an LLM objective writes the same spec as JSON; it is
validated here either way):

| directive words | spec | what it means |
|---|---|---|
| accuracy words ("accurate", "correct", "score", ...) or none | ``length="ignore"`` | Overall, nothing else: no length term anywhere (fitness, the parent selector's Pareto term) |
| a brevity word ("concise", "short", "brief", "terse", "efficient", "length") | ``length="minimize"``, ``margin=1`` | as short as possible while Overall stays within ``margin`` points of GRPO's |

"concise" is a constraint, not a weight on length. Where the claim is made (a campaign's
promotion and test stages), it is judged with the seeds' uncertainty on paired seeds:
the winner is the shortest promoted candidate whose mean Overall is within ``margin`` of
GRPO's on the same seeds, and the contract is *met* on the test split when the paired 95%
CI of the Overall difference lies above ``-margin`` and the one of the length difference
below 0.

The search needs one number per seed to climb. Under ``length="minimize"``::

    S       = 100 * (L_ref - L) / L_ref                  percent shorter than GRPO (< 0: longer)
    D       = max(0, (Overall_ref - margin) - Overall)    points below the allowed floor
    fitness = S - penalty * D                             (penalty 10: a point costs 10%)

where L is the mean greedy response length and (Overall_ref, L_ref) are GRPO's (the run's
seed baseline, evaluated first). Within the margin only length counts, so accuracy above
GRPO's buys nothing; below it, each point must be paid with 10% of length, more than any
shortening the testbed allows pays for a few points. Under ``length="ignore"``, fitness
is Overall. Without a reference, fitness is Overall.

Over several seeds the penalty is charged on the candidate's *mean* Overall, as the
contract and the promotion rule read it (``seed_fitnesses``): a candidate's fitness is
the fitness of its seeds' mean Overall and mean length. Charging each seed's own Overall
instead (the rule until the second v2 "concise" campaign) turns seed noise into penalty:
with a seed's Overall varying by 4-6 points, a seed below the floor costs 10x its
shortfall and one above it pays nothing back, so GRPO scored -4.4 against its own mean,
and a candidate 4.9% shorter than GRPO at the same mean Overall (87.7 vs 87.8) scored
-22.0 and ranked 10th of 13 (docs/campaigns/v2-accurate-and-concise-2). The loop scores
the seed baseline against its own mean (graph.graph.evaluate), so GRPO's fitness is 0
under "concise".

Specs written before the contract (``length_weight``, ``accuracy_tolerance``) are read as
the contract: a positive weight is ``length="minimize"`` with the tolerance as margin.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, model_validator

ACCURACY_WORDS = ("accurate", "accuracy", "correct", "score", "overall", "better")
BREVITY_WORDS = ("concise", "short", "brief", "terse", "efficient", "length")
DEFAULT_MARGIN = 1.0
DEFAULT_PENALTY = 10.0


class ObjectiveSpec(BaseModel):
    """What a run optimizes: Overall, and length only under ``length="minimize"``."""

    directive: str
    length: Literal["ignore", "minimize"] = Field(
        "ignore", description="'minimize': as short as possible within the margin")
    margin: float = Field(DEFAULT_MARGIN, ge=0.0, le=20.0,
                          description="Overall points below GRPO's that still count as "
                                      "'not worse'")
    penalty: float = Field(DEFAULT_PENALTY, ge=0.0, le=100.0,
                           description="search only: percent of length a point below "
                                       "the floor costs")

    @model_validator(mode="before")
    @classmethod
    def _read_legacy(cls, data):
        """A spec from before the contract (length_weight / accuracy_tolerance)."""
        if isinstance(data, dict) and ("length_weight" in data
                                       or "accuracy_tolerance" in data):
            data = dict(data)
            weight = data.pop("length_weight", 0.0)
            tolerance = data.pop("accuracy_tolerance", DEFAULT_MARGIN)
            if "length" not in data:
                try:
                    data["length"] = "minimize" if float(weight) > 0 else "ignore"
                except (TypeError, ValueError):
                    data["length"] = weight  # let the field's validation say what is wrong
            data.setdefault("margin", tolerance)
        return data

    @property
    def minimizes_length(self) -> bool:
        return self.length == "minimize"

    def describe(self) -> str:
        if not self.minimizes_length:
            return "fitness = Overall (val)"
        return (f"as short as possible while Overall >= GRPO's - {self.margin:g}: fitness = "
                f"% shorter than GRPO - {self.penalty:g} x (points below GRPO's - "
                f"{self.margin:g})")


def objective_from_directive(directive: str) -> ObjectiveSpec:
    """The builtin keyword mapping (documented in the module docstring)."""
    text = directive.strip()
    if not text:
        raise ValueError("the directive is empty: say what to optimize, e.g. "
                         "\"accurate\" or \"accurate and concise\"")
    words = set(re.findall(r"[a-z]+", text.lower()))
    concise = any(w in words for w in BREVITY_WORDS)
    return ObjectiveSpec(directive=text, length="minimize" if concise else "ignore")


def shortening(length: float, ref_length: float) -> float:
    """Percent shorter than the reference (negative: longer)."""
    return 100.0 * (ref_length - length) / ref_length if ref_length > 0 else 0.0


def fitness(spec: ObjectiveSpec, overall: float, length: float,
            reference: tuple[float, float] | None = None) -> float:
    """One seed's fitness. ``reference`` is (Overall_ref, L_ref), GRPO's means."""
    if not spec.minimizes_length or reference is None:
        return float(overall)
    ref_overall, ref_length = reference
    below = max(0.0, ref_overall - spec.margin - overall)
    return float(shortening(length, ref_length) - spec.penalty * below)


def seed_fitnesses(spec: ObjectiveSpec, finals: list[tuple[float, float]],
                   reference: tuple[float, float] | None = None) -> list[float]:
    """Per-seed fitness of one candidate's seeds, ``finals`` = [(Overall, length), ...],
    whose mean is the fitness of the seeds' means: the shortening is each seed's own
    (linear, so it averages exactly), the penalty is charged once on the mean Overall.
    Under ``length="ignore"`` (or without a reference) each seed's Overall."""
    if not finals:
        return []
    if not spec.minimizes_length or reference is None:
        return [float(o) for o, _ in finals]
    mean_overall = sum(o for o, _ in finals) / len(finals)
    return [fitness(spec, mean_overall, length, reference) for _, length in finals]


def within_margin(spec: ObjectiveSpec, delta_overall: float) -> bool:
    """Whether an Overall difference vs GRPO (a mean or a CI's lower bound) keeps the
    contract's margin."""
    return delta_overall >= -spec.margin
