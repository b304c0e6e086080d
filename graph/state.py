"""Graph state: the run-level state and the per-candidate state of one Send branch.

TypedDicts (no defaults: TypedDict ignores them). ``finished`` is the only key a
candidate branch writes back to the run; it accumulates with ``operator.add``.
"""
from __future__ import annotations

import operator
from typing import Annotated, NotRequired, TypedDict


class CandidateSummary(TypedDict):
    id: int
    name: str
    parents: list[int]
    status: str
    fitness: float | None
    overall: NotRequired[float | None]   # mean val Overall over seeds (None: not trained)
    length: NotRequired[float | None]    # mean val response length
    round: int
    slot: int
    error: str | None


class RunState(TypedDict, total=False):
    run_id: int
    directive: str
    objective: dict                     # evals.objective.ObjectiveSpec as a dict
    round: int                          # 0 = the seed baseline, then 1, 2, ...
    reference: dict | None              # GRPO's {"overall", "length"} from round 0
    finished: Annotated[list[CandidateSummary], operator.add]
    # Steering (python -m graph.steer); absent in unsteered runs.
    vetoed: list[int]                   # candidate ids a person barred from parenting
    pinned: int | None                  # the next round's parent, chosen by a person
    quiet_rounds: int                   # rounds to run before the next pause ("/go N")
    steering: Annotated[list[dict], operator.add]   # applied instructions, with the round


class CandidateState(TypedDict, total=False):
    run_id: int
    directive: str
    objective: dict
    round: int
    slot: int
    reference: dict | None
    vetoed: list[int]                   # never chosen as parent
    pinned: int | None                  # the parent, when a person pinned one
    parent_ids: list[int]
    parent_code: str | None
    parent_signature: str | None
    references: list[str]               # genome signatures in the archive (novelty, crossover)
    evidence: list[dict]                # retrieved reflections
    proposal: dict                      # name, hypothesis, mechanism, math, kind, genome?
    code: str
    attempts: int                       # coder <-> verifier rounds used
    feedback: list[str]                 # the verifier's last feedback for the coder
    results: list[dict]                 # per-seed TrainResult dicts (+ "span": wall times)
    verify_spans: list[list[float]]     # [start, end] wall times of verifier calls
    smoke_spans: list[list[float]]      # ... and of their smoke-training parts
    judge: list[dict]                   # per verification: which judge, and its error
    fitness: float | None
    diagnosis: dict                     # text, tags
    status: str                         # archive status once decided
    error: str | None                   # why it failed, if it did
    finished: Annotated[list[CandidateSummary], operator.add]


class CandidateOutput(TypedDict):
    finished: Annotated[list[CandidateSummary], operator.add]
