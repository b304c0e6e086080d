"""The LLM scientist writes the run's objective spec from the free-text directive.

The spec is ``evals.objective.ObjectiveSpec`` (validated, bounded fields); the directive
itself is kept verbatim whatever the model says. Without a model, or when the model gives
no valid spec, ``evals.objective.objective_from_directive`` maps keywords instead.
"""
from __future__ import annotations

from typing import Any

from agents.prompts import messages, quote_text
from agents.structured import AgentOutputError, invoke_structured
from evals.objective import ObjectiveSpec, objective_from_directive


def objective_llm(model: Any, directive: str, *, max_repairs: int = 2) -> ObjectiveSpec:
    """The model's spec for ``directive``; raises AgentOutputError if none is valid."""
    prompt = messages("objective", directive=quote_text("directive", directive))
    spec = invoke_structured(model, prompt, ObjectiveSpec, max_repairs=max_repairs)
    return spec.model_copy(update={"directive": directive.strip()})


def objective_for(directive: str, model: Any | None) -> tuple[ObjectiveSpec, str]:
    """(spec, how it was made): the LLM's, else the builtin keyword mapping."""
    base = objective_from_directive(directive)  # validates the directive (non-empty)
    if model is None:
        return base, "builtin keyword mapping"
    try:
        return objective_llm(model, base.directive), "written by the LLM scientist"
    except AgentOutputError as e:
        return base, f"builtin keyword mapping (the LLM gave no valid spec: {e.problems[-1]})"
