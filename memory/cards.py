"""What an LLM agent is told about an archived candidate, and what it was shown.

``candidate_card``: its name and id, its mechanism in one line, its parents' names,
status, fitness and mean val metrics (the scientist's evidence and references).
``shown``: the reflections and references a candidate's proposal was made from, by the
ids the loop archived in its details (``memory.show``, ``/why`` and the report read it).
"""
from __future__ import annotations

import math

from memory.schema import Candidate, Reflection

CARD_METRICS = ("overall", "length", "accuracy", "validity")


def mechanism_line(proposal_text: str, limit: int = 200) -> str:
    """The mechanism in one line, from an archived proposal text ("mechanism: ...")."""
    for line in (proposal_text or "").splitlines():
        if line.startswith("mechanism:"):
            return _cut(" ".join(line[len("mechanism:"):].split()), limit)
    return _cut(" ".join((proposal_text or "").split()), limit)


def candidate_card(archive, cand: Candidate) -> dict:
    names = [archive.candidate(p).name for p in archive.parents(cand.id)]
    finals = [e.metrics.get("val") for e in archive.evaluations(cand.id)
              if isinstance(e.metrics.get("val"), dict)]
    metrics = {}
    for k in CARD_METRICS:
        xs = [float(f[k]) for f in finals if isinstance(f.get(k), (int, float))
              and math.isfinite(f[k])]
        if xs:
            metrics[k] = round(sum(xs) / len(xs), 3)
    return {"name": cand.name, "id": cand.id, "mechanism": mechanism_line(cand.proposal),
            "parent": ", ".join(names) or None, "status": cand.status,
            "fitness": cand.fitness, "metrics": metrics or None,
            "seeds": len(finals) or None}


def shown(archive, candidate_id: int) -> dict:
    """The reflections (with the candidate each is about) and the reference candidates
    the scientist was shown for ``candidate_id``; rows deleted since read as missing."""
    d = archive.candidate(candidate_id).info
    with archive.session() as s:
        evidence = []
        for rid in d.evidence:
            r = s.get(Reflection, rid)
            c = s.get(Candidate, r.candidate_id) if r is not None else None
            evidence.append({"reflection_id": rid, "candidate_id": c.id if c else None,
                             "candidate": c.name if c else "(missing)"})
        refs = []
        for cid in d.references:
            c = s.get(Candidate, cid)
            refs.append({"id": cid, "name": c.name if c else "(missing)",
                         "status": c.status if c else None,
                         "fitness": c.fitness if c else None})
    return {"evidence": evidence, "references": refs}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


__all__ = ["candidate_card", "mechanism_line", "shown"]
