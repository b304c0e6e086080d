"""Evidence retrieval and the novelty check, over the archive and its vector store.

``similar_reflections`` answers "what happened before when something like this was
tried?": the reflections nearest to a proposal draft or a diagnosis, each with its
candidate's outcome (status, fitness, error, parents), filterable by run, status, tags
and directive. Filters run inside Chroma (its metadata mirrors SQL) and are re-checked
against SQL, the source of truth, before a hit is returned.

``novelty`` runs before a candidate is trained (training is the expensive step): a
proposal is a near-duplicate when its code hash equals an archived candidate's, or when
its proposal text is at least ``DUPLICATE_SIMILARITY`` cosine-similar to an archived
proposal.

Thresholds: all-MiniLM-L6-v2 cosine similarity, calibrated on ten GRPO-variant
mechanisms, each with a light edit (a clause reworded or one constant changed; the set is
in tests/test_vectors.py). Light edits score 0.77-1.00, nine of ten >= 0.89; two
different mechanisms score median 0.26, at most 0.53 (at most 0.60 against free
rewordings). A free rewording of the same mechanism in new words scores 0.51-0.77, which
overlaps different mechanisms, so embeddings cannot call it a duplicate.
``DUPLICATE_SIMILARITY = 0.85`` flags light edits, with a margin of 0.25 over the closest
different mechanisms; ``RELATED_SIMILARITY = 0.55`` lists close proposals as references
for the scientist without blocking them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from sqlmodel import Session, col, select

from memory.schema import (ArchiveError, Candidate, Lineage, Reflection, Run,
                           expand_statuses, source_hash)

DUPLICATE_SIMILARITY = 0.85
RELATED_SIMILARITY = 0.55
_OVERFETCH = 2           # ask the store for k * this, then re-check filters in SQL


@dataclass
class Evidence:
    """One retrieved reflection and the outcome of the candidate it is about."""

    reflection_id: int
    candidate_id: int
    candidate_name: str
    run_id: int
    directive: str
    generation: int
    parent_ids: list[int]
    status: str
    fitness: float | None
    error: str | None
    similarity: float
    reflection: str
    tags: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Match:
    """An archived candidate that a novelty check found close."""

    candidate_id: int
    name: str
    status: str
    similarity: float          # 1.0 for an identical code hash
    reason: str


@dataclass
class Novelty:
    """The novelty verdict: ``duplicate`` blocks training; ``matches`` explain why and
    ``related`` lists close-but-distinct proposals (references for the scientist)."""

    duplicate: bool
    matches: list[Match] = field(default_factory=list)
    related: list[Match] = field(default_factory=list)
    threshold: float = DUPLICATE_SIMILARITY

    @property
    def reason(self) -> str:
        return "; ".join(m.reason for m in self.matches) or "novel"


# ----------------------------------------------------------------------------- indexing

def vector_records(s: Session, kind: str, ids: Sequence[int]) -> list[tuple[int, str, dict]]:
    """(row id, document, metadata) for the vector store, from SQL rows ``ids``."""
    if not ids:
        return []
    if kind == "reflections":
        rows = s.exec(select(Reflection, Candidate, Run)
                      .join(Candidate, col(Candidate.id) == Reflection.candidate_id)
                      .join(Run, col(Run.id) == Candidate.run_id)
                      .where(col(Reflection.id).in_(ids))).all()
        return [(r.id, r.text, _metadata(c, run, r.tags)) for r, c, run in rows]
    rows = s.exec(select(Candidate, Run).join(Run, col(Run.id) == Candidate.run_id)
                  .where(col(Candidate.id).in_(ids))).all()
    return [(c.id, c.proposal or "", _metadata(c, run, ())) for c, run in rows]


def _metadata(c: Candidate, run: Run, tags: Sequence[str]) -> dict:
    meta = {"candidate_id": c.id, "run_id": c.run_id, "status": c.status,
            "generation": c.generation, "directive": run.directive}
    meta.update({f"tag:{t}": True for t in tags})
    return meta


def _where(run_id: int | None, statuses: list[str] | None, tags: Sequence[str],
           directive: str | None, exclude_candidate: int | None) -> dict | None:
    clauses: list[dict] = []
    if run_id is not None:
        clauses.append({"run_id": int(run_id)})
    if statuses is not None:
        clauses.append({"status": {"$in": statuses}})
    clauses.extend({f"tag:{t}": True} for t in tags)
    if directive is not None:
        clauses.append({"directive": directive})
    if exclude_candidate is not None:
        clauses.append({"candidate_id": {"$ne": int(exclude_candidate)}})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


# ----------------------------------------------------------------------------- retrieval

def similar_reflections(archive, text: str, k: int = 5, *, run_id: int | None = None,
                        status: str | Sequence[str] | None = None,
                        tags: Sequence[str] = (), directive: str | None = None,
                        exclude_candidate: int | None = None) -> list[Evidence]:
    """The ``k`` reflections nearest to ``text``, best first.

    Filters: ``run_id``; ``status`` (one, several, or ``"failed"`` for every failure);
    ``tags`` (a hit carries every one); ``directive`` (exact); ``exclude_candidate``
    (e.g. the candidate being diagnosed)."""
    if not text or not text.strip():
        raise ArchiveError("empty query: give a proposal draft or a diagnosis to search with")
    if k < 1:
        raise ArchiveError(f"k must be >= 1, got {k}")
    statuses = expand_statuses(status)
    tags = [t.strip() for t in tags if t.strip()]
    where = _where(run_id, statuses, tags, directive, exclude_candidate)
    hits = archive.store("reflections").query(text, k=k * _OVERFETCH, where=where)
    if not hits:
        return []
    ids = [int(h.id.rsplit("-", 1)[1]) for h in hits]      # "reflection-<row id>"
    with archive.session() as s:
        rows = {r.id: (r, c, run) for r, c, run in s.exec(
            select(Reflection, Candidate, Run)
            .join(Candidate, col(Candidate.id) == Reflection.candidate_id)
            .join(Run, col(Run.id) == Candidate.run_id)
            .where(col(Reflection.id).in_(ids))).all()}
        parents = _parents(s, [row[1].id for row in rows.values()])
    out = []
    for rid, hit in zip(ids, hits):
        if rid not in rows:
            continue                     # vector of a vanished row: sync() removes it
        r, c, run = rows[rid]
        if not _still_matches(r, c, run, run_id, statuses, tags, directive, exclude_candidate):
            continue
        out.append(Evidence(r.id, c.id, c.name, c.run_id, run.directive, c.generation,
                            parents.get(c.id, []), c.status, c.fitness, c.error,
                            round(hit.similarity, 4), r.text, list(r.tags)))
    return out[:k]


def _still_matches(r: Reflection, c: Candidate, run: Run, run_id, statuses, tags,
                   directive, exclude_candidate) -> bool:
    return ((run_id is None or c.run_id == run_id)
            and (statuses is None or c.status in statuses)
            and set(tags) <= set(r.tags)
            and (directive is None or run.directive == directive)
            and (exclude_candidate is None or c.id != exclude_candidate))


def _parents(s: Session, candidate_ids: Sequence[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for child, parent in s.exec(select(Lineage.child_id, Lineage.parent_id).where(
            col(Lineage.child_id).in_(candidate_ids)).order_by(Lineage.id)).all():
        out.setdefault(child, []).append(parent)
    return out


# ----------------------------------------------------------------------------- novelty

def novelty(archive, proposal: str, code: str | None = None, *,
            threshold: float = DUPLICATE_SIMILARITY, related: float = RELATED_SIMILARITY,
            run_id: int | None = None, exclude_candidate: int | None = None,
            k: int = 5) -> Novelty:
    """Check a proposal (and its code, if written) against the archive before training.

    Duplicate when the code hash equals an archived candidate's, or when the proposal's
    cosine similarity to an archived proposal is >= ``threshold``. Proposals between
    ``related`` and ``threshold`` are listed in ``related``. ``run_id`` limits the check
    to one run; ``exclude_candidate`` skips the candidate itself."""
    verdict = Novelty(duplicate=False, threshold=threshold)
    if code:
        with archive.session() as s:
            q = select(Candidate).where(Candidate.code_hash == source_hash(code))
            if run_id is not None:
                q = q.where(Candidate.run_id == run_id)
            for c in s.exec(q.order_by(Candidate.id)).all():
                if c.id != exclude_candidate:
                    verdict.matches.append(Match(c.id, c.name, c.status, 1.0,
                                                 f"code identical to {c.name} (#{c.id})"))
    if proposal and proposal.strip():
        where = _where(run_id, None, (), None, exclude_candidate)
        for hit in archive.store("proposals").query(proposal, k=k, where=where):
            if not hit.document.strip() or hit.similarity < related:
                continue
            cid = int(hit.metadata["candidate_id"])
            c = archive.candidate(cid)
            sim = round(hit.similarity, 4)
            if sim >= threshold:
                verdict.matches.append(Match(cid, c.name, c.status, sim,
                                             f"proposal {sim:.2f} similar to {c.name} (#{cid})"))
            else:
                verdict.related.append(Match(cid, c.name, c.status, sim, "related proposal"))
    verdict.duplicate = bool(verdict.matches)
    return verdict
