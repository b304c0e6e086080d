"""The LLM scientist reads a person's free text in a steering session.

``interpret_llm`` maps one message to a ``SteerIntent``: a directive change (the whole
new directive), a question about a candidate, a veto, a pin, a budget change, more
rounds, the leaderboard, or nothing but a reply. The session (graph.steer) turns the
intent into the same instruction a slash command gives, and checks it the same way.
Without a model, graph.steering's builtin rules read free text instead.
"""
from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import BaseModel, Field, model_validator

from agents.prompts import messages, quote_data
from agents.structured import invoke_structured

MAX_CANDIDATES = 30          # the most recent ones shown to the model
BUDGET_KEYS = ("candidates", "width", "seeds", "steps")


class SteerIntent(BaseModel):
    """What the person's message asks for (the fields the model writes)."""
    action: Literal["directive", "why", "veto", "pin", "budget", "go", "leaderboard",
                    "none"]
    directive: str | None = Field(None, description="for action=directive: the complete "
                                  "new directive")
    candidate: str | None = Field(None, description="for why/veto/pin: a candidate name "
                                  "or id from the list")
    budget: dict[str, int] = Field({}, description="for action=budget: new values of "
                                   + ", ".join(BUDGET_KEYS))
    rounds: int | None = Field(None, ge=1, description="for action=go: rounds to run")
    reply: str = Field("", description="one short sentence to the person")

    @model_validator(mode="after")
    def _complete(self) -> "SteerIntent":
        if self.action == "directive" and not (self.directive or "").strip():
            raise ValueError("action 'directive' needs the new directive in 'directive'")
        if self.action in ("why", "veto", "pin") and not (self.candidate or "").strip():
            raise ValueError(f"action {self.action!r} needs a candidate name or id")
        if self.action == "budget":
            bad = {k: v for k, v in self.budget.items() if k not in BUDGET_KEYS or v < 1}
            if not self.budget or bad:
                raise ValueError(f"action 'budget' needs 'budget' with keys from "
                                 f"{', '.join(BUDGET_KEYS)} and values >= 1 (got {bad})")
        return self


def interpret_llm(model: Any, text: str, directive: str, candidates: Sequence[dict], *,
                  max_repairs: int = 2) -> SteerIntent:
    """The model's reading of ``text``; raises AgentOutputError if none is valid.
    ``candidates``: dicts with id, name, status, fitness (the run's, oldest first)."""
    prompt = messages("steer", directive=directive.strip(), message=text.strip(),
                      candidates=quote_data("candidates",
                                            list(candidates)[-MAX_CANDIDATES:]))
    return invoke_structured(model, prompt, SteerIntent, max_repairs=max_repairs)
