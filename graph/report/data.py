"""What the run report shows, read from the archive: one run's candidates with their
lineage, evaluations and reflections, and the leaderboard with t intervals over seeds.

Read-only: the report may run while ``graph.run`` is still writing. SQLite in WAL mode
lets readers and the writer proceed without blocking each other; each table is read in
one query, and rows of the other tables are kept only for the candidates read first, so
a candidate archived mid-read shows up in the next report, never half.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sqlmodel import col, select

from evals.stats import ConfidenceInterval, mean_ci, paired_diff_ci
from memory.archive import Archive
from memory.schema import (EVALUATED, ArchiveError, Candidate, CandidateDetails, Evaluation,
                           Lineage, Reflection, Run)

CURVE_KEYS = ("reward", "accuracy", "entropy", "response_length", "validity", "kl_to_start")
BASELINE_KINDS = ("seed", "baseline")


@dataclass
class CandidateView:
    """One candidate as the report shows it."""

    id: int
    name: str
    round: int
    status: str
    proposal: str
    code: str | None
    error: str | None
    info: CandidateDetails                            # Candidate.details, typed
    parents: list[int] = field(default_factory=list)          # primary parent first
    evaluations: list[Evaluation] = field(default_factory=list)  # by seed
    reflections: list[Reflection] = field(default_factory=list)
    shown: dict = field(default_factory=dict)   # Archive.shown: evidence and references

    @property
    def is_baseline(self) -> bool:
        """A root of the genealogy (the seed GRPO of round 0) or a declared baseline."""
        return not self.parents or self.info.kind in BASELINE_KINDS

    @property
    def backends(self) -> list[str]:
        """The trainers of its evaluations (``local``: the CPU testbed, ``verl``)."""
        return sorted({e.backend for e in self.evaluations})

    @property
    def seed_fitness(self) -> dict[int, float]:
        return {e.seed: e.fitness for e in self.evaluations if e.fitness is not None}

    @property
    def fitness(self) -> float | None:
        """Mean fitness over seeds; None until one evaluation with a fitness exists."""
        values = list(self.seed_fitness.values())
        return float(np.mean(values)) if values else None

    @property
    def ranked(self) -> bool:
        """On the leaderboard: evaluated, with at least one fitness (as
        ``Archive.leaderboard``)."""
        return self.status == EVALUATED and self.fitness is not None


@dataclass
class Standing:
    """One leaderboard row: mean fitness, its 95% t interval over seeds, and the paired
    difference to the seed baseline (None for the baseline itself or without shared
    seeds)."""

    candidate: CandidateView
    ci: ConfidenceInterval
    vs_seed: ConfidenceInterval | None


@dataclass
class RunSnapshot:
    run: Run
    candidates: list[CandidateView]

    def __post_init__(self) -> None:
        self.by_id = {c.id: c for c in self.candidates}

    @property
    def seed_baseline(self) -> CandidateView | None:
        """The run's seed baseline: the first root declared as the seed, else the
        first root."""
        roots = [c for c in self.candidates if c.is_baseline]
        seeds = [c for c in roots if c.info.kind == "seed"]
        return (seeds or roots or [None])[0]

    def leaderboard(self) -> list[Standing]:
        """Ranked candidates, best mean fitness first (ties: older first)."""
        seed = self.seed_baseline
        rows = []
        for c in self.candidates:
            if not c.ranked:
                continue
            ci = mean_ci(list(c.seed_fitness.values()))
            rows.append(Standing(c, ci, _paired_vs(seed, c)))
        return sorted(rows, key=lambda s: (-s.ci.mean, s.candidate.id))

    def best(self, k: int) -> list[CandidateView]:
        """The ``k`` best ranked candidates that are not baselines."""
        return [s.candidate for s in self.leaderboard() if not s.candidate.is_baseline][:k]

    def baselines(self) -> list[CandidateView]:
        return [c for c in self.candidates if c.is_baseline and c.ranked]


def _paired_vs(seed: CandidateView | None, cand: CandidateView) -> ConfidenceInterval | None:
    if seed is None or seed.id == cand.id or not seed.ranked:
        return None
    common = sorted(set(seed.seed_fitness) & set(cand.seed_fitness))
    if not common:
        return None
    return paired_diff_ci([seed.seed_fitness[s] for s in common],
                          [cand.seed_fitness[s] for s in common])


def load_snapshot(archive: Archive, run_id: int) -> RunSnapshot:
    from memory.cards import shown

    """Everything the report needs about run ``run_id``; ArchiveError if there is none."""
    snap = _load_snapshot(archive, run_id)
    for c in snap.candidates:
        if c.info.evidence or c.info.references:
            c.shown = shown(archive, c.id)
    return snap


def _load_snapshot(archive: Archive, run_id: int) -> RunSnapshot:
    with archive.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            known = ", ".join(str(r) for r in s.exec(select(Run.id).order_by(Run.id)))
            known = known or "none"
            raise ArchiveError(f"no run {run_id} in the archive at {archive.where} "
                               f"(runs: {known})")
        rows = s.exec(select(Candidate).where(Candidate.run_id == run_id)
                      .order_by(Candidate.id)).all()
        views = {c.id: CandidateView(c.id, c.name,
                                     c.generation if c.info.round is None else c.info.round,
                                     c.status, c.proposal or "", c.code, c.error, c.info)
                 for c in rows}
        ids = list(views)
        if ids:
            for edge in s.exec(select(Lineage).where(col(Lineage.child_id).in_(ids))
                               .order_by(Lineage.id)):
                parents = views[edge.child_id].parents
                if edge.parent_id in views and edge.parent_id not in parents:
                    parents.append(edge.parent_id)
            for ev in s.exec(select(Evaluation).where(col(Evaluation.candidate_id).in_(ids))
                             .order_by(Evaluation.candidate_id, Evaluation.seed)):
                views[ev.candidate_id].evaluations.append(ev)
            for r in s.exec(select(Reflection).where(col(Reflection.candidate_id).in_(ids))
                            .order_by(Reflection.id)):
                views[r.candidate_id].reflections.append(r)
    return RunSnapshot(run, list(views.values()))


def mean_curve(cand: CandidateView, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and sd over seeds of one training curve, on the steps every seed
    logged (sd is 0 with one seed). Empty arrays when no seed logged ``key``."""
    series = [{int(step): float(v) for step, v in ev.curves.get(key) or [] if v is not None}
              for ev in cand.evaluations]
    series = [s for s in series if s]
    if not series:
        empty = np.array([])
        return empty, empty, empty
    steps = sorted(set.intersection(*(set(s) for s in series)))
    values = np.array([[s[t] for t in steps] for s in series], dtype=float)   # (seeds, T)
    finite = np.isfinite(values).all(axis=0)
    values = values[:, finite]
    return np.array(steps)[finite], values.mean(axis=0), values.std(axis=0)


def ci_text(ci: ConfidenceInterval, digits: int = 2, signed: bool = False) -> str:
    """``0.52 [0.41, 0.63]``; with one seed ``0.52 (n=1, no CI)``."""
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    if ci.n < 2 or not math.isfinite(ci.ci_low):
        return f"{fmt.format(ci.mean)} (n=1, no CI)"
    return f"{fmt.format(ci.mean)} [{fmt.format(ci.ci_low)}, {fmt.format(ci.ci_high)}]"
