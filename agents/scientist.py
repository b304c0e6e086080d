"""The scientist: proposes one mechanism from the parent, the evidence and the directive.

``propose`` is the role: the LLM scientist's proposal when a model is configured
(``propose_llm``), else the builtin genome draw (``agents.builtin.scientist.propose``);
both are an ``agents.proposal.Proposal``. An LLM proposal names the hooks it changes
instead of carrying a genome; what the model must write is ``LLMProposal``, read into a
``Proposal`` here. Everything but the directive enters the prompt as quoted data
(agents/prompts): the parent's summary and code, reflections, archive references and
taken names, all written or derived by earlier agents; capped in number and length so
prompts stay small.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Literal, Sequence

from pydantic import BaseModel, Field, computed_field, field_validator

from agents.prompts import messages, quote_data, quote_text
from agents.proposal import MAX_FIELD_CHARS, Proposal, cut
from agents.structured import NonBlank, invoke_structured
from trainers.source import HOOKS

Hook = Literal[HOOKS]  # type: ignore[valid-type]  # the contract's hook names

MAX_REFLECTIONS = 8
MAX_REFERENCES = 6
MAX_CODE_CHARS = 12_000      # the parent's module
SLUG_MAX = 48
REFLECTION_KEYS = ("candidate", "name", "status", "fitness", "tags", "text", "error")
REFERENCE_KEYS = ("name", "role", "kind", "status", "fitness", "metrics", "hypothesis",
                  "mechanism", "math", "summary", "proposal", "tags")


class LLMProposal(BaseModel):
    """What the LLM scientist must write (its reply schema); ``proposal()`` reads it into
    the loop's ``Proposal``."""

    name: str = Field(description=f"a new lowercase slug for the algorithm, letters, "
                                  f"digits and hyphens, at most {SLUG_MAX} characters, "
                                  "e.g. 'gated-length-grpo'")
    hypothesis: NonBlank = Field(min_length=1, description="why this mechanism should improve "
                            "on the parent under the directive, and what would refute it")
    mechanism: NonBlank = Field(min_length=1, description="what changes, in words, hook by hook")
    math: NonBlank = Field(min_length=1, description="the exact formulas, every symbol and "
                      "constant defined")
    changes: list[Hook] = Field(min_length=1, description="the hooks the mechanism modifies")
    crossover_with: str | None = Field(default=None, description="the name of the archive "
                                       "reference combined with the parent, or null")
    rationale: list[str] = Field(default=[], description="the evidence (reflections, "
                                 "references) behind the proposal, one item each")

    @field_validator("name", mode="before")
    @classmethod
    def _slug(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        slug = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:SLUG_MAX].strip("-")
        if not slug:
            raise ValueError("the name needs letters or digits")
        return slug

    @field_validator("changes")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @computed_field
    @property
    def kind(self) -> Literal["mutation", "crossover"]:
        return "crossover" if self.crossover_with else "mutation"

    def proposal(self) -> Proposal:
        return Proposal(name=self.name, kind=self.kind, hypothesis=self.hypothesis,
                        mechanism=self.mechanism, math=self.math, changes=list(self.changes),
                        rationale=list(self.rationale), crossover_with=self.crossover_with)


def propose(model: Any | None, directive: str, evidence: Sequence[dict], *,
            parent_signature: str | None, reference_signatures: Sequence[str],
            rng: Any, parent_code: str = "", parent_summary: str = "",
            references: Sequence[Any] = (), taken_names: Iterable[str] = ()) -> Proposal:
    """The scientist's proposal for a child of the parent: the LLM's (``model``) from
    the parent's code and summary, the evidence and the archive ``references``; without
    a model, the builtin draw from the parent's genome (GRPO's when it has none), the
    evidence and the reference genomes, under ``rng``."""
    if model is not None:
        return propose_llm(model, parent_code, parent_summary, directive, evidence,
                           references, taken_names=taken_names)
    from agents.builtin import scientist as builtin
    from agents.builtin.genes import Genome

    parent = Genome.from_signature(parent_signature) if parent_signature else Genome.grpo()
    refs = [Genome.from_signature(sig) for sig in reference_signatures]
    return builtin.propose(parent, directive, evidence, refs, rng)


def propose_llm(model: Any, parent_code: str, parent_summary: str, directive: str,
                reflections: Sequence[Any], references: Sequence[Any], *,
                taken_names: Iterable[str] = (), max_repairs: int = 2) -> Proposal:
    """One novel proposal derived from the parent. ``reflections`` and ``references`` are
    dicts (or pydantic/dataclass records) from the archive; only a few known keys of each
    are shown. Raises ``AgentOutputError`` when no valid proposal comes back."""
    refs = [compact(r, REFERENCE_KEYS) for r in list(references)[:MAX_REFERENCES]]
    ref_names = {str(r["name"]) for r in refs if r.get("name")}
    taken = set(taken_names) | ref_names
    prompt = messages(
        "scientist", directive=directive.strip() or "(none: the default objective)",
        parent_summary=quote_text("parent_summary", cut(parent_summary, MAX_FIELD_CHARS)),
        parent_code=quote_text("parent_code", cut(parent_code, MAX_CODE_CHARS),
                               lang="python"),
        reflections=quote_data("reflections", [compact(r, REFLECTION_KEYS)
                                               for r in list(reflections)[:MAX_REFLECTIONS]]),
        references=quote_data("references", refs),
        taken_names=quote_data("taken_names", sorted(taken)))

    def check(p: LLMProposal) -> None:
        if p.name in taken:
            raise ValueError(f"the name {p.name!r} is already taken; choose a new one")
        if p.crossover_with is not None and p.crossover_with not in ref_names:
            known = ", ".join(sorted(ref_names)) or "none given"
            raise ValueError(f"crossover_with={cut(repr(p.crossover_with), 120)} is not "
                             f"one of the references ({known}); use a reference's name "
                             "or null")

    return invoke_structured(model, prompt, LLMProposal, max_repairs=max_repairs,
                             check=check).proposal()


# ----------------------------------------------------------------------------- helpers

def as_dict(item: Any) -> dict:
    """A record as a dict: dicts, pydantic models, dataclasses, plain objects."""
    if isinstance(item, dict):
        return item
    if isinstance(item, BaseModel):
        return item.model_dump()
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    if hasattr(item, "__dict__"):
        return {k: v for k, v in vars(item).items() if not k.startswith("_")}
    return {"text": str(item)}


def compact(item: Any, keys: Sequence[str]) -> dict:
    """The known ``keys`` of a record, long strings cut, floats rounded."""
    d = as_dict(item)
    return {k: _small(d[k]) for k in keys if d.get(k) not in (None, "", [], {})}


def proposal_view(proposal: Any) -> dict:
    """What the coder, analyst and judge see of a proposal (a ``Proposal``, its state
    dict, or a proposal text)."""
    if isinstance(proposal, str):
        return {"text": cut(proposal, 4 * MAX_FIELD_CHARS)}
    return Proposal.of(proposal).view()


def _small(value: Any, limit: int = MAX_FIELD_CHARS) -> Any:
    if isinstance(value, str):
        return cut(value, limit)
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, (list, tuple)):
        return [_small(v, limit) for v in list(value)[:20]]
    if isinstance(value, dict):
        return {str(k): _small(v, limit) for k, v in list(value.items())[:30]}
    return value


__all__ = ["LLMProposal", "propose", "propose_llm", "proposal_view", "compact", "as_dict",
           "cut"]
