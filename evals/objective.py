"""Directive -> objective: how a free-text directive becomes a fitness function.

The builtin mapping reads keywords (an LLM scientist may instead write the same
``ObjectiveSpec`` as JSON; it is validated here either way):

- accuracy words ("accurate", "correct", "score", or none at all) -> ``Overall``;
- brevity words ("concise", "short", "brief", "terse", "efficient") add a length term.

Fitness with a length term (points, higher is better)::

    fitness = Overall + w * 100 * max(0, L_ref - L) / L_ref     if Overall >= Overall_ref - tol
            = Overall                                          otherwise

where L is the candidate's mean greedy response length and (Overall_ref, L_ref) are the
reference algorithm's (GRPO's, evaluated first in every run). The bonus is paid only
while accuracy holds within ``tol`` points of the reference, so length can never be bought
with accuracy; and since the bonus counts only shortening, a longer answer is never
rewarded. Without a reference yet, fitness is Overall.
"""
from __future__ import annotations

import re

from pydantic import BaseModel, Field

ACCURACY_WORDS = ("accurate", "accuracy", "correct", "score", "overall", "better")
BREVITY_WORDS = ("concise", "short", "brief", "terse", "efficient", "length")


class ObjectiveSpec(BaseModel):
    """What a run optimizes. ``length_weight`` 0 means accuracy only."""

    directive: str
    length_weight: float = Field(0.0, ge=0.0, le=1.0)
    accuracy_tolerance: float = Field(1.0, ge=0.0, le=20.0)

    def describe(self) -> str:
        if self.length_weight == 0:
            return "fitness = Overall (val)"
        return (f"fitness = Overall + {self.length_weight:g} x 100 x relative shortening vs "
                f"GRPO, paid only while Overall >= GRPO's - {self.accuracy_tolerance:g}")


def objective_from_directive(directive: str) -> ObjectiveSpec:
    """The builtin keyword mapping (documented in the module docstring)."""
    text = directive.strip()
    if not text:
        raise ValueError("the directive is empty: say what to optimize, e.g. "
                         "\"accurate\" or \"accurate and concise\"")
    words = set(re.findall(r"[a-z]+", text.lower()))
    concise = any(w in words for w in BREVITY_WORDS)
    return ObjectiveSpec(directive=text, length_weight=0.2 if concise else 0.0)


def fitness(spec: ObjectiveSpec, overall: float, length: float,
            reference: tuple[float, float] | None = None) -> float:
    """Fitness in points. ``reference`` is (Overall_ref, L_ref) of the reference run."""
    if spec.length_weight == 0 or reference is None:
        return float(overall)
    ref_overall, ref_length = reference
    if overall < ref_overall - spec.accuracy_tolerance or ref_length <= 0:
        return float(overall)
    shortening = max(0.0, ref_length - length) / ref_length
    return float(overall + spec.length_weight * 100 * shortening)
