"""The proposal: one proposed mechanism, in the one shape every part of the loop reads.

The seed baseline, a builtin genome draw and an LLM scientist's proposal are all a
``Proposal``; they differ in what they fill in. A builtin proposal carries its
``genome`` (its code is that genome, rendered) and the parents' signatures; an LLM
proposal names the hooks it ``changes`` and, for a crossover, the reference it combines
with the parent (``crossover_with``). What the LLM must write is its reply schema
(``agents.scientist.LLMProposal``); it is read into a ``Proposal`` in one place.

Views:
- ``text()``: the proposal as archived and embedded (name, hypothesis, mechanism, math),
- ``view()``: what the coder, analyst and judge prompts show of it (long fields cut),
- ``state()``: the JSON the graph's state and checkpoints hold; ``Proposal.of`` reads
  it back (and reads checkpoints written before this model, which hold the same keys).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer, field_validator

from agents.builtin.genes import Genome

MAX_FIELD_CHARS = 1500
TEXT_KEYS = ("name", "hypothesis", "mechanism", "math")
VIEW_KEYS = ("name", "kind", "hypothesis", "mechanism", "math", "changes", "crossover_with")


class Proposal(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: str
    kind: str | None = None              # seed, mutation or crossover
    hypothesis: str = ""
    mechanism: str = ""
    math: str = ""
    changes: list[str] | None = None     # builtin: the genes that differ; LLM: the hooks
    rationale: list[str] | None = None   # the evidence behind it
    genome: Genome | None = None         # builtin and seed: the genome it renders
    parents: list[str] | None = None     # builtin: the parent genomes' signatures
    crossover_with: str | None = None    # LLM: the reference combined with the parent
    evidence_shown: list[int] | None = None    # the reflection ids the scientist saw
    references_shown: list[int] | None = None  # the candidate ids it was shown

    @field_validator("genome", mode="before")
    @classmethod
    def _parse_genome(cls, value: Any) -> Any:
        return Genome.from_signature(value) if isinstance(value, str) else value

    @field_serializer("genome")
    def _dump_genome(self, genome: Genome | None) -> str | None:
        return None if genome is None else genome.signature()

    @classmethod
    def of(cls, value: Proposal | dict | BaseModel) -> Proposal:
        """A proposal from the graph state's dict (or any model with its fields)."""
        if isinstance(value, Proposal):
            return value
        if isinstance(value, BaseModel):
            value = value.model_dump()
        return cls.model_validate({k: v for k, v in dict(value).items()
                                   if k in cls.model_fields})

    @property
    def signature(self) -> str | None:
        return None if self.genome is None else self.genome.signature()

    def text(self) -> str:
        """The archived text: its name, hypothesis, mechanism and math."""
        return "\n\n".join(f"{k}: {getattr(self, k)}" for k in TEXT_KEYS if getattr(self, k))

    def view(self, limit: int = 4 * MAX_FIELD_CHARS) -> dict:
        """What a prompt shows: the non-empty fields of ``VIEW_KEYS``, long strings cut."""
        out = {}
        for k in VIEW_KEYS:
            v = getattr(self, k)
            if v in (None, "", []):
                continue
            out[k] = [cut(x, limit) for x in v[:20]] if isinstance(v, list) else cut(v, limit)
        return out

    def state(self) -> dict:
        """The graph state's JSON (unset fields left out)."""
        return self.model_dump(exclude_none=True)


def cut(text: Any, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} chars cut]"


__all__ = ["Proposal", "cut", "MAX_FIELD_CHARS"]
