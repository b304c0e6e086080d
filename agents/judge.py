"""The consistency judge: does the code do what the proposal says?

``consistency_judge`` is the role, the judge the verifier is given: for a proposal with
a genome, the builtin rule ``agents.builtin.coder.matches_proposal`` (the code must be
the rendered genome); else the LLM judge ``judge_consistency_llm`` when a model is
configured; else None (the verifier's own keyword rule). The seed baseline is not judged.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from pydantic import BaseModel, Field

from agents.prompts import messages, quote_data, quote_text
from agents.proposal import Proposal
from agents.scientist import MAX_CODE_CHARS, cut, proposal_view
from agents.structured import NonBlank, invoke_structured


class JudgeVerdict(BaseModel):
    consistent: bool = Field(description="true if the code implements the proposal")
    reason: NonBlank = Field(min_length=1, description="one or two sentences why")
    mismatches: list[str] = Field(default=[], description="each place where the code "
                                  "departs from the proposal")


Judge = Callable[[str, str], "tuple[bool, str]"]   # (proposal text, code) -> verdict


def consistency_judge(model: Any | None, proposal: Proposal,
                      budget: Any = None) -> Judge | None:
    """The judge for ``proposal``'s code (see the module docstring)."""
    if proposal.genome is not None:
        if proposal.kind == "seed":
            return None
        from agents.builtin.coder import matches_proposal

        def judge(_proposal_text: str, code: str) -> tuple[bool, str]:
            if matches_proposal(proposal, code):
                return True, "code is the proposal's rendered genome"
            return False, "the code is not the rendered genome of the proposal"

        return judge
    if model is None:
        return None
    judge = functools.partial(judge_consistency_llm, model, budget=budget)
    judge.__name__ = "LLM judge"  # type: ignore[attr-defined]  # the report names it
    return judge


def judge_consistency_llm(model: Any, proposal_text: Any, code: str, *,
                          max_repairs: int = 2, budget: Any = None) -> tuple[bool, str]:
    """(consistent, reason). ``proposal_text``: the proposal as text, or a proposal
    object / dict. Raises ``AgentOutputError`` when no valid verdict comes back."""
    from agents.budget import ask

    def build(level: int) -> list:
        limit = (MAX_CODE_CHARS, 6000, 3000)[level]
        return messages("judge",
                        proposal=quote_data("proposal", [proposal_view(proposal_text)]),
                        code=quote_text("code", cut(code, limit), lang="python"))

    verdict = ask(build, 3, budget, "judge", lambda prompt, b: invoke_structured(
        model, prompt, JudgeVerdict, max_repairs=max_repairs, budget=b))
    reason = verdict.reason.strip()
    if verdict.mismatches:
        reason += " Mismatches: " + "; ".join(m.strip() for m in verdict.mismatches) + "."
    return verdict.consistent, reason


__all__ = ["consistency_judge", "judge_consistency_llm", "JudgeVerdict"]
