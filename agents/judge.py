"""The LLM consistency judge: does the code do what the proposal says?

``judge_consistency_llm`` is the LLM counterpart of the builtin rule
``agents.builtin.coder.matches_proposal``; the verifier calls one or the other.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agents.prompts import messages, quote_data, quote_text
from agents.scientist import MAX_CODE_CHARS, cut, proposal_view
from agents.structured import NonBlank, invoke_structured


class JudgeVerdict(BaseModel):
    consistent: bool = Field(description="true if the code implements the proposal")
    reason: NonBlank = Field(min_length=1, description="one or two sentences why")
    mismatches: list[str] = Field(default=[], description="each place where the code "
                                  "departs from the proposal")


def judge_consistency_llm(model: Any, proposal_text: Any, code: str, *,
                          max_repairs: int = 2) -> tuple[bool, str]:
    """(consistent, reason). ``proposal_text``: the proposal as text, or a proposal
    object / dict. Raises ``AgentOutputError`` when no valid verdict comes back."""
    prompt = messages("judge", proposal=quote_data("proposal", [proposal_view(proposal_text)]),
                      code=quote_text("code", cut(code, MAX_CODE_CHARS), lang="python"))
    verdict = invoke_structured(model, prompt, JudgeVerdict, max_repairs=max_repairs)
    reason = verdict.reason.strip()
    if verdict.mismatches:
        reason += " Mismatches: " + "; ".join(m.strip() for m in verdict.mismatches) + "."
    return verdict.consistent, reason


__all__ = ["judge_consistency_llm", "JudgeVerdict"]
