"""``--from-run RUN_ID``: a new run that builds on earlier runs' evaluated candidates.

Every evaluated candidate of the source runs is copied into the new run at generation 0
(before its first proposal), with its code, proposal, details and per-seed evaluations,
and the lineage edges among them mirrored between the copies; nothing is re-trained. Each
copy's ``details.origin`` is ``{"run", "candidate", "name"}`` of the row it came from:
the cross-run lineage, which ``python -m memory.show`` and the report print and the
lineage plot draws. The copies' fitness is recomputed under the new run's objective
(their val metrics against the new run's GRPO reference), so a run under "accurate and
concise" can build on an "accurate" run.

The seed baseline: when every source ran on the new run's budget and testbed
(``TESTBED_KEYS`` of the saved context: steps, the trainer, the model and data), the
first source's GRPO is copied as the new run's seed and not re-trained; otherwise the new
run trains its own GRPO first and the copies follow it (``graph.graph.round_end``). The
sources' seeds are never copied twice: their children hang under the new run's seed.

Copies are keyed by origin, so re-importing (a resume re-running the step) adds nothing.
"""
from __future__ import annotations

from typing import Iterable

from evals.objective import ObjectiveSpec, seed_fitnesses
from memory.schema import EVALUATED

TESTBED_KEYS = ("steps", "train_overrides", "warm_config", "preset", "trainer_config",
                "executor_is_verl")


class SourceError(ValueError):
    """A source run that cannot be built on (the message says why, in one line)."""


def testbed(context: dict) -> dict:
    """What decides whether two runs' results are comparable (budget and testbed)."""
    out = {k: context.get(k) for k in TESTBED_KEYS if k != "executor_is_verl"}
    out["executor_is_verl"] = context.get("executor") == "verl"
    out["train_overrides"] = out["train_overrides"] or {}
    return out


def check_sources(archive, run_ids: Iterable[int], context: dict) -> bool:
    """Validate the source runs; True when all share ``context``'s budget and testbed
    (the seed is then copied, not re-trained)."""
    same = True
    ids = list(dict.fromkeys(run_ids))
    if archive is None and ids:
        raise SourceError(f"--from-run {ids[0]}: this home has no archive yet")
    for rid in ids:
        try:
            run = archive.run(rid)
        except Exception:  # noqa: BLE001 - ArchiveError: no such run
            raise SourceError(f"--from-run {rid}: no such run in this home (python -m "
                               "memory.query lists them)") from None
        if not [c for c in archive.candidates(rid) if c.status == EVALUATED]:
            raise SourceError(f"--from-run {rid}: the run has no evaluated candidate")
        if _seed(archive, rid) is None:
            raise SourceError(f"--from-run {rid}: the run has no evaluated seed baseline")
        same = same and testbed(run.config.get("context", {})) == testbed(context)
    return same


def reference_of(archive, seed_id: int) -> dict:
    """The objective's reference (GRPO's mean val Overall and length) from a seed, with
    its first seed's final metrics and its late/early entropy ratio (the analyst's
    yardstick of entropy-collapse on this testbed)."""
    from agents.analyst import mean_final
    from agents.builtin.analyst import entropy_ratio

    evals = archive.evaluations(seed_id)
    finals = [e.metrics["val"] for e in evals]
    means = mean_final(finals)
    return {"overall": means["overall"], "length": means["length"], "final": finals[0],
            "entropy_ratio": entropy_ratio([e.curves for e in evals])}


def copy_seed(archive, run_id: int, source: int, spec: ObjectiveSpec) -> tuple[int, dict]:
    """Copy ``source``'s seed baseline as ``run_id``'s (round 0); returns its id and the
    reference it gives the objective."""
    seed = _seed(archive, source)
    reference = reference_of(archive, seed.id)
    ids = import_candidates(archive, run_id, [source], spec, reference, only=[seed.id])
    return ids[seed.id], reference


def start_from(archive, run_id: int, sources: list[int], spec: ObjectiveSpec) -> dict:
    """Same budget and testbed: copy the first source's seed as ``run_id``'s round 0 and
    every source's evaluated candidates after it. Returns the run state's update: it
    starts at round 1, with the seed finished and its reference set."""
    seed_id, reference = copy_seed(archive, run_id, sources[0], spec)
    import_candidates(archive, run_id, sources, spec, reference, seed_id=seed_id)
    seed = archive.candidate(seed_id)
    return {"round": 1, "reference": reference,
            "finished": [{"id": seed.id, "name": seed.name, "parents": [], "round": 0,
                          "slot": 0, "status": seed.status, "fitness": seed.fitness,
                          "error": None}]}


def import_candidates(archive, run_id: int, sources: Iterable[int], spec: ObjectiveSpec,
                      reference: dict, *, seed_id: int | None = None,
                      only: Iterable[int] | None = None, rebase: bool = False
                      ) -> dict[int, int]:
    """Copy the sources' evaluated candidates into ``run_id``; returns origin id -> copy
    id (the sources' seeds map to ``seed_id`` when given). ``only``: just these ids.

    ``rebase`` (a source on another budget or testbed): each copy's fitness is scored on
    its val Overall shifted by (new seed's Overall - source seed's) and its length scaled
    by (new seed's length / source seed's), so what carries over is its difference from
    GRPO as measured where it was trained; the stored metrics stay as measured, the
    shift and ratio go into ``details.origin``."""
    done = {c.details.get("origin", {}).get("candidate"): c.id
            for c in archive.candidates(run_id) if c.details.get("origin")}
    mapping: dict[int, int] = {}
    wanted = None if only is None else set(only)
    slot = len(archive.candidates(run_id))
    ref = (reference["overall"], reference["length"])
    for rid in dict.fromkeys(sources):
        parents: dict[int, list[tuple[int, str]]] = {}
        for e in archive.edges(rid):
            parents.setdefault(e.child_id, []).append((e.parent_id, e.kind))
        seed = _seed(archive, rid)
        shift, ratio = 0.0, 1.0
        if rebase:
            src = reference_of(archive, seed.id)
            shift = reference["overall"] - src["overall"]
            ratio = reference["length"] / src["length"] if src["length"] > 0 else 1.0
        for c in sorted(archive.candidates(rid), key=lambda c: c.id):  # parents first
            if c.status != EVALUATED or (wanted is not None and c.id not in wanted):
                continue
            if seed_id is not None and c.id == seed.id:
                mapping[c.id] = seed_id
                continue
            if c.id in done:
                mapping[c.id] = done[c.id]
                continue
            mine = [mapping[p] for p, _ in parents.get(c.id, []) if p in mapping]
            kinds = [k for p, k in parents.get(c.id, []) if p in mapping]
            olds = [e for e in archive.evaluations(c.id) if "val" in e.metrics]
            moved = [(e.metrics["val"]["overall"] + shift, e.metrics["val"]["length"] * ratio)
                     for e in olds]
            evals = [{"seed": e.seed, "backend": e.backend, "metrics": e.metrics,
                      "fitness": fit, "objectives": {"overall": o, "neg_length": -length},
                      "curves": e.curves, "wall_time": 0.0}
                     for e, (o, length), fit in zip(olds, moved,
                                                    seed_fitnesses(spec, moved, ref))]
            origin = {"run": rid, "candidate": c.id, "name": c.name}
            if rebase:
                origin.update(overall_shift=shift, length_ratio=ratio)
            details = {**c.details, "origin": origin, "slot": slot,   # its round: drawn
                       "key": f"import:{run_id}:{c.id}"}              # where it was
            mapping[c.id] = archive.add_candidate(
                run_id, c.name, 0, c.proposal, c.code, parents=mine,
                kind=kinds[0] if kinds else None, status=EVALUATED, details=details,
                evaluations=evals, rename_on_conflict=True)
            slot += 1
    return mapping


def origin_id(candidate) -> int | None:
    """The candidate an imported copy came from (None for one proposed in its run)."""
    return (candidate.details.get("origin") or {}).get("candidate")


def _seed(archive, run_id: int):
    roots = [c for c in archive.candidates(run_id)
             if c.generation == 0 and c.status == EVALUATED and c.info.kind == "seed"
             and not c.details.get("origin")]
    if not roots:   # a run that itself began from another: its seed is a copy
        roots = [c for c in archive.candidates(run_id)
                 if c.generation == 0 and c.status == EVALUATED and c.info.kind == "seed"]
    return roots[0] if roots else None
