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
# What the prompt shows of each retrieved reflection (memory.evidence hits, named by the
# retrieve_evidence node) and of each archive reference.
REFLECTION_KEYS = ("candidate", "candidate_id", "mechanism", "parent", "about_parent",
                   "status", "fitness", "metrics", "tags", "text", "error")
REFERENCE_KEYS = ("name", "id", "role", "kind", "status", "fitness", "metrics",
                  "hypothesis", "mechanism", "math", "summary", "proposal", "tags")
# Trim levels of the prompt, most to least: (reflections, references, code chars,
# characters per field); agents.budget.fit takes the first that fits the window.
LEVELS = ((MAX_REFLECTIONS, MAX_REFERENCES, MAX_CODE_CHARS, MAX_FIELD_CHARS),
          (5, 4, 6000, 800), (3, 2, 3000, 400), (1, 1, 1500, 200), (0, 0, 600, 120))


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
            references: Sequence[Any] = (), taken_names: Iterable[str] = (),
            budget: Any = None, backend: str = "", excluded_genes: Sequence[str] = (),
            compose_rate: float = 0.0, objective: str = "",
            length_contract: bool | None = None) -> Proposal:
    """The scientist's proposal for a child of the parent: the LLM's (``model``) from
    the parent's code and summary, the evidence and the archive ``references``; without
    a model, the builtin draw from the parent's genome (GRPO's when it has none), the
    evidence and the reference genomes, under ``rng``. The proposal's ``evidence_shown``
    and ``references_shown`` say which reflections and candidates the scientist saw.
    ``excluded_genes``: catalog genes (slot=kind, or "paper") the builtin draw may not use;
    ``compose_rate``: the fraction of its proposals that compose a reward / normalization
    expression from primitives; ``length_contract``: the run's objective minimizes length
    within a margin (the builtin draw steers the length coefficient by the constraint;
    None: the directive's words say)."""
    if model is not None:
        return propose_llm(model, parent_code, parent_summary, directive, evidence,
                           references, taken_names=taken_names, budget=budget,
                           backend=backend, objective=objective)
    from agents.builtin import scientist as builtin
    from agents.builtin.genes import Genome, excluded_kinds

    parent = Genome.from_signature(parent_signature) if parent_signature else Genome.grpo()
    refs = [Genome.from_signature(sig) for sig in reference_signatures]
    proposal = builtin.propose(parent, directive, evidence, refs, rng,
                               excluded=excluded_kinds(excluded_genes),
                               compose=compose_rate, contract=length_contract)
    return proposal.model_copy(update={"evidence_shown": _ids(evidence, "reflection_id")})


def propose_llm(model: Any, parent_code: str, parent_summary: str, directive: str,
                reflections: Sequence[Any], references: Sequence[Any], *,
                taken_names: Iterable[str] = (), max_repairs: int = 2,
                budget: Any = None, backend: str = "", objective: str = "") -> Proposal:
    """One novel proposal derived from the parent. ``reflections`` and ``references`` are
    dicts (or pydantic/dataclass records) from the archive; only a few known keys of each
    are shown, as many as fit ``budget`` (an ``agents.budget.Budget``; None: the caps).
    Raises ``AgentOutputError`` when no valid proposal comes back, ``ContextBudgetError``
    when even the smallest prompt does not fit."""
    from agents.backend import describe
    from agents.budget import ask

    all_refs = [as_dict(r) for r in list(references)[:MAX_REFERENCES]]
    ref_names = {str(r["name"]) for r in all_refs if r.get("name")}
    taken = set(taken_names) | ref_names
    reflections = [as_dict(r) for r in reflections]
    shown: dict = {}

    def build(level: int) -> list:
        n_refl, n_refs, code_chars, field_chars = LEVELS[min(level, len(LEVELS) - 1)]
        refl, refs = reflections[:n_refl], all_refs[:n_refs]
        shown.update(evidence=_ids(refl, "reflection_id"), references=_ids(refs, "id"),
                     level=level)
        return messages(
            "scientist", directive=directive.strip() or "(none: the default objective)",
            objective=objective or "fitness = Overall (val)",
            backend=backend or describe(None),
            parent_summary=quote_text("parent_summary", cut(parent_summary, field_chars)),
            parent_code=quote_text("parent_code", cut(parent_code, code_chars),
                                   lang="python"),
            reflections=quote_data("reflections", [compact(r, REFLECTION_KEYS, field_chars)
                                                   for r in refl]),
            references=quote_data("references", [compact(r, REFERENCE_KEYS, field_chars)
                                                 for r in refs]),
            taken_names=quote_data("taken_names", sorted(taken)))

    def check(p: LLMProposal) -> None:
        if p.name in taken:
            raise ValueError(f"the name {p.name!r} is already taken; choose a new one")
        if p.crossover_with is not None and p.crossover_with not in ref_names:
            known = ", ".join(sorted(ref_names)) or "none given"
            raise ValueError(f"crossover_with={cut(repr(p.crossover_with), 120)} is not "
                             f"one of the references ({known}); use a reference's name "
                             "or null")

    reply = ask(build, len(LEVELS), budget, "scientist", lambda prompt, b: invoke_structured(
        model, prompt, LLMProposal, max_repairs=max_repairs, check=check, budget=b))
    return reply.proposal().model_copy(update={
        "evidence_shown": shown.get("evidence", []),
        "references_shown": shown.get("references", [])})


def _ids(items: Sequence[Any], key: str) -> list[int]:
    out = []
    for item in items:
        value = as_dict(item).get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out.append(value)
    return out


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


def compact(item: Any, keys: Sequence[str], limit: int = MAX_FIELD_CHARS) -> dict:
    """The known ``keys`` of a record, strings cut at ``limit``, floats rounded."""
    d = as_dict(item)
    return {k: _small(d[k], limit) for k in keys if d.get(k) not in (None, "", [], {})}


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
