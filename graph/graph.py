"""The POISE loop as a LangGraph state machine.

Run level::

    START -> plan_round --Send x width--> candidate -> round_end -> plan_round | END
    round_end -> steer -> plan_round | END      (Context.steer: python -m graph.steer)

Round 0 trains the seed baseline (GRPO) once: it is the root of the genealogy and the
reference of the objective. Each ``candidate`` branch is a subgraph::

    select_parent -> retrieve_evidence -> scientist -> coder -> verifier
    verifier --pass--> trainer -> evaluate -> analyst -> archive
    verifier --fail, retries left--> coder          (LLM coder gets the feedback)
    verifier --fail, none left / duplicate--> analyst -> archive

Every failure (a node raising, a contract violation, a crash or timeout in the sandbox)
becomes the branch's ``status``/``error`` and is archived as a failed candidate with
its reason; the loop goes on. The archive write is idempotent per (run, round, slot), so
a resumed run never archives a candidate twice. Export: ``builder`` (uncompiled; tests
compile their own with a fresh checkpointer) and ``graph`` (compiled, no checkpointer).
"""
from __future__ import annotations

import dataclasses
import functools
import random
import threading
import time
import traceback
from typing import Callable, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Send, interrupt

from agents import calls
from agents.analyst import diagnose_failure, diagnose_with, mean_final
from agents.backend import describe as describe_backend
from agents.budget import budget_for
from agents.coder import write_code
from agents.judge import consistency_judge
from agents.proposal import Proposal
from agents.scientist import propose
from agents.builtin.genes import Genome
from evals.objective import ObjectiveSpec, seed_fitnesses
from graph import steering
from graph.context import Context
from graph.state import CandidateOutput, CandidateState, RunState
from graph.summary import val_means
from memory.archive import Archive
from memory.schema import (DUPLICATE, EVALUATED, FAILED_CODING, FAILED_EVALUATION,
                           FAILED_PROPOSAL, FAILED_TRAINING, FAILED_VERIFICATION,
                           CandidateDetails)
from memory.evidence import DUPLICATE_SIMILARITY
from memory.cards import candidate_card
from graph import imports
from memory.selection import directive_objectives, rule_config, select_parent_ids
from trainers.executors import Executor, get_executor

SEED_NAME = "grpo"

# ----------------------------------------------------------------------------- helpers

_archives: dict[str, Archive] = {}
_archives_lock = threading.Lock()


def archive_for(home: str) -> Archive:
    """One Archive per home per process (it is thread-safe; Send branches share it)."""
    with _archives_lock:
        if home not in _archives:
            _archives[home] = Archive(home)
        return _archives[home]


def executor_for(ctx: Context) -> Executor:
    """The run's training executor (one per process; see trainers.executors)."""
    return get_executor(ctx.executor, address=ctx.ray_address,
                        max_parallel_jobs=ctx.max_parallel_jobs,
                        task_memory_mb=ctx.ray_task_memory_mb,
                        max_retries=ctx.ray_max_retries, trainer_config=ctx.trainer_config)


def _key(state: CandidateState) -> str:
    return f"{state['run_id']}:{state['round']}:{state['slot']}"


def guarded(node: Callable) -> Callable:
    """A node that raises becomes a failed branch, routed to the analyst: failures are
    evidence, never swallowed and never fatal to the run."""

    @functools.wraps(node)
    def wrapper(state: CandidateState, runtime: Runtime[Context]):
        if state.get("error"):
            return {}  # an earlier node failed: pass through to the analyst/archive
        try:
            return node(state, runtime)
        except Exception as e:  # noqa: BLE001 - recorded with its traceback tail
            tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
            return {"status": _failure_status(node.__name__),
                    "error": f"{node.__name__} failed: {type(e).__name__}: {e} ({tb})"}

    return wrapper


def _failure_status(node: str) -> str:
    """Which stage a node's failure is archived as: no proposal (choosing the parent,
    retrieving evidence, the scientist), no code (the coder), or training/evaluation."""
    return {"select_parent": FAILED_PROPOSAL, "retrieve_evidence": FAILED_PROPOSAL,
            "scientist": FAILED_PROPOSAL, "coder": FAILED_CODING,
            "trainer": FAILED_TRAINING, "evaluate": FAILED_EVALUATION}.get(
        node, FAILED_VERIFICATION)


_replays: dict[tuple, calls.ReplayChat] = {}
_replays_lock = threading.Lock()


def model_for(role: str, ctx: Context):
    """The chat model of ``role``, or None for the builtin offline agent. A replay
    (``Context.replay``) answers the roles the replayed run gave a model from its
    recorded replies (agents.calls.ReplayChat)."""
    from agents.llm import BUILTIN, FALLBACK, get_model

    if ctx.replay:
        spec = (ctx.models or {}).get(role)
        if not spec or spec == BUILTIN:
            return None
        key = (ctx.replay["home"], ctx.replay["run_id"], role)
        with _replays_lock:
            if key not in _replays:
                _replays[key] = calls.ReplayChat.of_run(
                    calls.ledger_for(ctx.replay["home"]), ctx.replay["run_id"])
            return _replays[key]
    given = ctx.chat_models.get(role) or (ctx.chat_models.get(FALLBACK[role])
                                          if role in FALLBACK else None)
    return given or get_model(role, ctx)


def llm_scope(state: CandidateState, ctx: Context, role: str):
    """Where ``role``'s calls for this candidate are recorded (agents.calls)."""
    return calls.scope(calls.ledger_for(ctx.home), state["run_id"], _key(state), role,
                       cache=ctx.llm_cache)


def _rng(state: CandidateState, ctx: Context) -> random.Random:
    return random.Random(f"{ctx.seed}:{state['run_id']}:{state['round']}:{state['slot']}")


# ----------------------------------------------------------------------------- candidate nodes

@guarded
def select_parent(state: CandidateState, runtime: Runtime[Context]) -> dict:
    """Round 0: the seed baseline. Later: the run's selection rule (memory.selection:
    GP-UCB by default), over the directive's objectives.

    A round reads the run's archive as it stood when the round began (earlier rounds
    only): a sibling slot archived first, by the luck of timing or because the run was
    resumed, must not change what this slot sees."""
    ctx = runtime.context
    archive = archive_for(ctx.home)
    rnd = state["round"]
    run_cands = [c for c in archive.candidates(state["run_id"]) if c.generation < rnd]
    refs = sorted({c.info.signature for c in run_cands} - {None})
    if rnd == 0:
        return {"parent_ids": [], "parent_code": None, "parent_signature": None,
                "references": refs}
    seed = ctx.seed * 100_003 + rnd * 101 + state["slot"]
    pid = state.get("pinned") or select_parent_ids(
        archive, state["run_id"], k=1, seed=seed, exclude=state.get("vetoed") or (),
        below_generation=rnd, rule=ctx.selection,
        config=rule_config(ctx.selection, ctx.selection_config),
        objectives=directive_objectives(state.get("objective")))[0]
    parent = archive.candidate(pid)
    return {"parent_ids": [pid], "parent_code": parent.code,
            "parent_signature": parent.info.signature,
            "references": refs}


@guarded
def retrieve_evidence(state: CandidateState, runtime: Runtime[Context]) -> dict:
    if state["round"] == 0:
        return {"evidence": []}
    ctx = runtime.context
    archive = archive_for(ctx.home)
    pid = state["parent_ids"][0]
    own = archive.reflections(pid) or archive.reflections(imports.origin_id(
        archive.candidate(pid)))   # an imported copy: its original's reflections
    query = own[-1].text if own else state["directive"]
    # Skip this round's siblings (see select_parent): each has one reflection at most.
    hits = [h for h in archive.similar_reflections(query, k=5 + ctx.width)
            if not (h.run_id == state["run_id"] and h.generation >= state["round"])][:5]
    evidence = [h.to_dict() for h in hits]
    for ev in evidence:  # named for the LLM; genomes for the builtin scientist
        cand = archive.candidate(ev["candidate_id"])
        card = candidate_card(archive, cand)
        ev.update(candidate=cand.name, text=ev["reflection"], signature=cand.info.signature,
                  about_parent=ev["candidate_id"] == pid, mechanism=card["mechanism"],
                  parent=card["parent"], metrics=card["metrics"])
    return {"evidence": evidence}


@guarded
def scientist(state: CandidateState, runtime: Runtime[Context]) -> dict:
    if state["round"] == 0:
        genome = Genome.grpo()
        return {"proposal": Proposal(
            name=SEED_NAME, kind="seed", genome=genome,
            hypothesis="The seed baseline: GRPO as shipped.", mechanism=genome.describe(),
            math=genome.math()).state()}
    ctx = runtime.context
    model = model_for("scientist", ctx)
    spec, llm = ObjectiveSpec.model_validate(state["objective"]), {}
    if model is not None:  # what the LLM scientist reads of the archive
        archive = archive_for(ctx.home)
        cands = [c for c in archive.candidates(state["run_id"])
                 if c.generation < state["round"]]   # as the round began (select_parent)
        parent = archive.candidate(state["parent_ids"][0])
        card = candidate_card(archive, parent)
        llm = {"parent_code": parent.code or "",
               "parent_summary": f"{parent.name} (id {parent.id}): status {parent.status}, "
                                 f"fitness {parent.fitness}, metrics {card['metrics']}, "
                                 f"parent {card['parent'] or '-'}\n{parent.proposal}",
               "references": [{**candidate_card(archive, c), "proposal": c.proposal[:600]}
                              for c in cands if c.id != parent.id][-8:],
               "taken_names": [c.name for c in archive.candidates(state["run_id"])],
               "budget": budget_for("scientist", ctx, model),
               "backend": describe_backend(ctx.executor), "objective": spec.describe()}
    with llm_scope(state, ctx, "scientist"):
        proposal = propose(model, state["directive"], state["evidence"],
                           parent_signature=state.get("parent_signature"),
                           reference_signatures=state.get("references", []),
                           rng=_rng(state, ctx), excluded_genes=ctx.exclude_genes,
                           compose_rate=ctx.compose_rate,
                           length_contract=spec.minimizes_length, **llm)
    return {"proposal": proposal.state()}


@guarded
def coder(state: CandidateState, runtime: Runtime[Context]) -> dict:
    ctx = runtime.context
    prop = Proposal.of(state["proposal"])
    model = None if prop.genome is not None else model_for("coder", ctx)
    feedback = state.get("feedback") or None
    mate = None
    if model is not None and prop.crossover_with:  # the other parent's code
        other = [c for c in archive_for(ctx.home).candidates(state["run_id"])
                 if c.name == prop.crossover_with and c.code]
        mate = (other[0].name, other[0].code) if other else None
    with llm_scope(state, ctx, "coder"):
        code = write_code(model, prop, state.get("parent_code") or "", feedback,
                          previous_code=state.get("code") if feedback else None, mate=mate,
                          budget=None if model is None else budget_for("coder", ctx, model),
                          backend=describe_backend(ctx.executor))
    return {"code": code, "attempts": state.get("attempts", 0) + 1}


def verifier(state: CandidateState, runtime: Runtime[Context]
             ) -> Command[Literal["coder", "trainer", "analyst"]]:
    """Static, sandboxed dynamic, smoke and consistency checks, then the novelty check."""
    from agents.verifier import verify

    if state.get("error"):
        return Command(goto="analyst")
    ctx = runtime.context
    began = time.time()
    try:
        prop = Proposal.of(state["proposal"])
        with llm_scope(state, ctx, "verifier"):
            report = verify(state["code"], prop.text(), smoke=ctx.smoke,
                            home=ctx.home, warm_config=ctx.warm_config, device=ctx.device,
                            dynamic_timeout_s=ctx.verify_timeout_s,
                            consistency_judge=_judge(prop, ctx))
    except Exception as e:  # noqa: BLE001
        return Command(goto="analyst", update={"status": FAILED_VERIFICATION,
                                               "error": f"verifier crashed: {e}"})
    ended = time.time()
    judge = report.metrics.get("consistency", {})
    judged = state.get("judge", []) + ([{k: judge[k] for k in ("judge", "judge_error")
                                          if k in judge}] if "judge" in judge else [])
    spans = state.get("verify_spans", []) + [[began, ended]]
    smoke_wall = report.metrics.get("smoke", {}).get("wall_s")
    smoke_spans = state.get("smoke_spans", []) + (
        [[ended - smoke_wall, ended]] if smoke_wall else [])
    if not report.passed:
        feedback = list(report.feedback)
        rendered = prop.genome is not None  # re-rendering would give the same code
        if not rendered and state.get("attempts", 0) <= ctx.max_repairs:
            return Command(goto="coder", update={"feedback": feedback,
                                                 "verify_spans": spans, "judge": judged,
                                                 "smoke_spans": smoke_spans})
        return Command(goto="analyst", update={
            "status": FAILED_VERIFICATION, "feedback": feedback, "verify_spans": spans,
            "judge": judged,
            "smoke_spans": smoke_spans,
            "error": f"verification failed at {report.stage}: " + "; ".join(feedback[:3])})
    if state["round"] > 0:
        # Builtin proposals are novel by construction (the scientist redraws a genome
        # already in the archive), and their templated texts read alike: for them only
        # identical code counts as a duplicate. LLM proposals also face the embedding
        # check (memory.evidence.DUPLICATE_SIMILARITY).
        threshold = 1.01 if prop.genome is not None else DUPLICATE_SIMILARITY
        nov = archive_for(ctx.home).novelty(prop.text(), state["code"], threshold=threshold)
        if nov.duplicate:
            return Command(goto="analyst", update={
                "status": DUPLICATE, "verify_spans": spans, "judge": judged,
                "smoke_spans": smoke_spans,
                "error": "near-duplicate of an archived candidate: "
                + "; ".join(m.reason for m in nov.matches[:2])})
    return Command(goto="trainer", update={"feedback": [], "verify_spans": spans, "judge": judged,
                                           "smoke_spans": smoke_spans})


@guarded
def trainer(state: CandidateState, runtime: Runtime[Context]) -> dict:
    """One sandboxed training job per seed, on the run's executor (local processes, at
    most ``max_parallel_jobs`` at once, or Ray tasks)."""
    ctx = runtime.context
    train_config = dict(ctx.train_overrides)
    if ctx.steps is not None:
        train_config["steps"] = ctx.steps
    payloads = [{"source": state["code"], "seed": seed, "home": ctx.home,
                 "train_config": train_config,
                 **({"warm_config": ctx.warm_config} if ctx.warm_config else {}),
                 **({"device": ctx.device} if ctx.device != "cpu" else {})}
                for seed in range(ctx.seeds)]
    executor = executor_for(ctx)
    if ctx.executor == "verl":  # a long GPU job: stream its metrics as they are logged
        from langgraph.config import get_stream_writer

        name = state["proposal"]["name"]
        for p in payloads:
            p["label"] = name
        write = get_stream_writer()
        outcomes = executor.train(payloads, timeout_s=ctx.train_timeout_s, on_progress=(
            lambda label, seed, step, row: write({"verl_progress": {
                "candidate": label, "key": _key(state), "seed": seed, "step": step,
                "metrics": row}})))
    else:
        outcomes = executor.train(payloads, timeout_s=ctx.train_timeout_s)
    errors = [f"seed {seed}: {o.result.kind}: {o.result.error}"
              for seed, o in enumerate(outcomes) if not o.result.ok]
    if errors:
        return {"status": FAILED_TRAINING, "error": "training failed: " + "; ".join(errors)}
    return {"results": [{**o.result.value, "span": list(o.span), "backend": executor.backend}
                        for o in outcomes]}


@guarded
def evaluate(state: CandidateState, runtime: Runtime[Context]) -> dict:
    """Fitness per seed from the held-out (val) evaluation under the run's objective."""
    spec = ObjectiveSpec.model_validate(state["objective"])  # the run state's JSON
    reference = state.get("reference") or (  # round 0: the seed baseline is the reference
        mean_final([r["final"] for r in state["results"]]) if state["round"] == 0 else None)
    fits = candidate_fitnesses(spec, reference, [r["final"] for r in state["results"]])
    for r, f in zip(state["results"], fits):
        r["fitness"] = f
    return {"fitness": sum(fits) / len(fits), "status": EVALUATED}


def candidate_fitnesses(spec: ObjectiveSpec, reference: dict | None,
                        finals: list[dict]) -> list[float]:
    """The fitness of each of a candidate's seeds (their final val evaluations) under
    the run's objective; their mean is the fitness of the seeds' means
    (evals.objective.seed_fitnesses)."""
    ref = (reference["overall"], reference["length"]) if reference else None
    return seed_fitnesses(spec, [(f["overall"], f["length"]) for f in finals], ref)


def analyst(state: CandidateState, runtime: Runtime[Context]) -> dict:
    """A mechanism-level diagnosis of every seed's curves against the parent and GRPO,
    or of why the candidate failed (what failed, the likely cause, what to try)."""
    ctx = runtime.context
    raw = state.get("proposal")
    # no proposal when select_parent, retrieve_evidence or the scientist failed
    prop = Proposal.of(raw) if raw else None
    model = None if prop is None or prop.kind == "seed" else model_for("analyst", ctx)
    budget = None if model is None else budget_for("analyst", ctx, model)
    if state.get("error"):
        status = state.get("status") or FAILED_VERIFICATION
        with llm_scope(state, ctx, "analyst"):
            diag = diagnose_failure(model, prop, status, state["error"],
                                    state.get("feedback") or [], state.get("code"),
                                    budget=budget)
        return {"status": status, "diagnosis": {"text": diag.text, "tags": list(diag.tags)}}
    ref = state.get("reference")
    parent = None
    if state.get("parent_ids"):
        arch = archive_for(ctx.home)
        finals = [e.metrics.get("val") for e in arch.evaluations(state["parent_ids"][0])
                  if isinstance(e.metrics.get("val"), dict)]
        parent = {"name": arch.candidate(state["parent_ids"][0]).name,
                  **mean_final(finals)} if finals else None
    grpo = {k: ref.get(k) for k in ("overall", "length", "entropy_ratio")} if ref else None
    try:
        with llm_scope(state, ctx, "analyst"):
            diag = diagnose_with(model, prop, state["results"],
                                 ref.get("final") if ref else None, parent=parent,
                                 baseline=grpo, budget=budget)
        return {"diagnosis": {"text": diag.text, "tags": list(diag.tags)}}
    except Exception as e:  # noqa: BLE001 - the candidate trained; keep it
        return {"diagnosis": {"text": f"analyst failed: {e}", "tags": ["analyst-error"]}}


def archive(state: CandidateState, runtime: Runtime[Context]) -> dict:
    """Write the candidate, its evaluations and its reflection (once per slot, in one
    transaction), then log its seeds to the run's trackers (Context.loggers)."""
    ctx = runtime.context
    arch = archive_for(ctx.home)
    key = _key(state)
    existing = [c for c in arch.candidates(state["run_id"])
                if c.info.key == key]
    if existing:
        cand = existing[0]
    else:
        # no proposal when select_parent, retrieve_evidence or the scientist failed
        prop = Proposal.of(state.get("proposal") or {"name": f"candidate-r{state['round']}"})
        status = state.get("status") or FAILED_VERIFICATION
        genome = prop.signature
        details = CandidateDetails(
            key=key, round=state["round"], slot=state["slot"], signature=genome,
            genes=genome.split(";") if genome else None, kind=prop.kind,
            feedback=state.get("feedback") or [], changes=prop.changes,
            rationale=prop.rationale, verify_spans=state.get("verify_spans", []),
            evidence=prop.evidence_shown or [], references=prop.references_shown or [],
            crossover_with=prop.crossover_with, judge=state.get("judge") or [],
            smoke_spans=state.get("smoke_spans", []),
            train_spans=[r["span"] for r in state.get("results") or [] if r]).model_dump()
        diag = state.get("diagnosis") or {}
        # One transaction: a run killed mid-write leaves the candidate whole or absent
        # (a resumed run finds it by its key and does not write it again).
        cid = arch.add_candidate(
            state["run_id"], arch.unique_name(prop.name), state["round"],
            prop.text(), state.get("code"), parents=state.get("parent_ids", []),
            status=status, error=state.get("error"), details=details,
            evaluations=_evaluations(state.get("results") or []),
            reflection=(diag["text"], diag.get("tags", [])) if diag.get("text") else None,
            rename_on_conflict=True)
        cand = arch.candidate(cid)
    if ctx.loggers and state.get("results"):  # after the write: tracking cannot lose it
        _track(ctx, state, cand)
    return {"finished": [{"id": cand.id, "name": cand.name, "parents": arch.parents(cand.id),
                          "status": cand.status, "fitness": cand.fitness,
                          **val_means(arch.evaluations(cand.id)),
                          "round": state["round"], "slot": state["slot"],
                          "error": cand.error}]}


def _evaluations(results: list[dict | None]) -> list[dict]:
    """Per-seed training results as ``Archive.add_evaluation`` keyword dicts."""
    return [{"seed": seed, "backend": r.get("backend", "local"),
             "metrics": {"val": r["final"], **({"test": r["test"]} if r.get("test") else {}),
                         **({"cpu_seconds": r["phase_cpu_seconds"]}  # where its CPU went
                            if r.get("phase_cpu_seconds") else {})},
             "fitness": r.get("fitness"), "wall_time": r.get("cpu_seconds"),
             "objectives": {"overall": r["final"]["overall"],
                            "neg_length": -r["final"]["length"]},
             "curves": {k: [[row["step"], row[k]] for row in r["curve"]]
                        for k in ("reward", "accuracy", "entropy", "response_length",
                                  "validity", "kl_to_start")}}
            for seed, r in enumerate(results) if r is not None]


def _track(ctx: Context, state: CandidateState, cand) -> None:
    """Each seed to the run's --logger backends (trainers/tracking.py), idempotent by
    run name (a resumed run that replays this node logs nothing twice); a failure is a
    warning on stderr."""
    from trainers.tracking import run_trackers

    run_trackers(ctx.home, state["run_id"], ctx.loggers, ctx.tracking_uri).log_candidate(
        cand.name, state["results"], tags={
            "candidate_id": cand.id, "status": cand.status, "round": state["round"],
            "slot": state["slot"], "parents": ",".join(map(str, state.get("parent_ids", [])))})


def _judge(prop: Proposal, ctx: Context):
    """The verifier's consistency judge for ``prop`` (agents.judge.consistency_judge):
    a verifier model is only looked up for proposals without a genome."""
    model = None if prop.genome is not None else model_for("verifier", ctx)
    return consistency_judge(model, prop, None if model is None
                             else budget_for("verifier", ctx, model))


# ----------------------------------------------------------------------------- run nodes

def plan_round(state: RunState, runtime: Runtime[Context]) -> Command:
    ctx = runtime.context
    rnd = state.get("round", 0)
    done = len([c for c in state.get("finished", []) if c["round"] > 0])
    width = 1 if rnd == 0 else min(ctx.width, ctx.candidates - done)
    if rnd > 0 and (ctx.max_cost_usd is not None or ctx.max_llm_tokens is not None):
        width = calls.capped_width(calls.ledger_for(ctx.home), state["run_id"], width,
                                   max_cost_usd=ctx.max_cost_usd,
                                   max_tokens=ctx.max_llm_tokens)
    base = {k: state[k] for k in ("run_id", "directive", "objective")}
    steered = {"vetoed": state.get("vetoed") or [], "pinned": state.get("pinned")}
    return Command(goto=[Send("candidate", {**base, **steered, "round": rnd, "slot": slot,
                                            "reference": state.get("reference"),
                                            "attempts": 0})
                         for slot in range(width)],
                   update={"pinned": None} if state.get("pinned") else None)


def round_end(state: RunState, runtime: Runtime[Context]
              ) -> Command[Literal["plan_round", "steer", "__end__"]]:
    ctx = runtime.context
    rnd = state.get("round", 0)
    update: dict = {"round": rnd + 1}
    if rnd == 0:
        seed = [c for c in state.get("finished", []) if c["round"] == 0]
        if not seed or seed[0]["status"] != EVALUATED:
            why = seed[0]["error"] if seed else "no result"
            raise RuntimeError(f"the seed baseline failed, nothing to improve on: {why}")
        update["reference"] = imports.reference_of(archive_for(ctx.home), seed[0]["id"])
        if ctx.from_runs:  # on another budget or testbed: the copies follow the new seed
            imports.import_candidates(archive_for(ctx.home), state["run_id"], ctx.from_runs,
                                      ObjectiveSpec.model_validate(state["objective"]),
                                      update["reference"], seed_id=seed[0]["id"], rebase=True)
    if ctx.steer:
        return Command(goto="steer", update=update)
    done = len([c for c in state.get("finished", []) if c["round"] > 0])
    if done >= ctx.candidates:
        return Command(goto=END, update=update)
    return Command(goto="plan_round", update=update)


def steer(state: RunState, runtime: Runtime[Context]
          ) -> Command[Literal["plan_round", "__end__"]]:
    """A steering session's pause between rounds (graph/steering.py): interrupt() with
    the round's summary, apply each instruction the person sends and pause again, until
    one says go (N rounds before the next pause) or stop. Pauses also when the budget
    is spent, so the person may raise it."""
    ctx = runtime.context
    done = len([c for c in state.get("finished", []) if c["round"] > 0])
    quiet = state.get("quiet_rounds", 0)
    if not ctx.steer or (quiet > 0 and done < ctx.candidates):
        return Command(goto="plan_round" if done < ctx.candidates else END,
                       update={"quiet_rounds": max(0, quiet - 1)})
    arch = archive_for(ctx.home)
    budget = {k: getattr(ctx, k) for k in steering.BUDGET_KEYS}
    current, notes, applied = steering.Steering.of(state), [], []
    while True:  # on resume the node reruns: earlier answers replay from the checkpoint
        raw = interrupt(steering.pause_payload(arch, state, current, budget, notes, applied))
        instr, problem = steering.parse_resume(raw)
        if instr is None:
            notes = [problem]
            continue
        before = current
        current, notes = steering.apply_instruction(
            current, instr, arch.candidates(state["run_id"]))
        steering.record_instruction(arch, state["run_id"], before, current, instr,
                                    _saved_context(ctx), state.get("reference"))
        applied.append(instr)
        if instr.releases:
            break
    log = [{"round": state["round"] - 1, **i.model_dump(exclude_defaults=True)}
           for i in applied]
    update = {**current.update(), "steering": log,
              "quiet_rounds": (instr.go or 1) - 1}
    return Command(goto=END if instr.stop or done >= ctx.candidates else "plan_round",
                   update=update)


def _saved_context(ctx: Context) -> dict:
    """The Context as the archive's run config keeps it (as graph.run saves it)."""
    return {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx)
            if f.name not in ("home", "chat_models")}


# ----------------------------------------------------------------------------- builder

candidate_builder = StateGraph(CandidateState, context_schema=Context,
                               output_schema=CandidateOutput)
for _node in (select_parent, retrieve_evidence, scientist, coder, verifier, trainer,
              evaluate, analyst, archive):
    candidate_builder.add_node(_node.__name__, _node)
candidate_builder.add_edge(START, "select_parent")
candidate_builder.add_edge("select_parent", "retrieve_evidence")
candidate_builder.add_edge("retrieve_evidence", "scientist")
candidate_builder.add_edge("scientist", "coder")
candidate_builder.add_edge("coder", "verifier")
candidate_builder.add_edge("trainer", "evaluate")
candidate_builder.add_edge("evaluate", "analyst")
candidate_builder.add_edge("analyst", "archive")
candidate_builder.add_edge("archive", END)
candidate_graph = candidate_builder.compile()

builder = StateGraph(RunState, context_schema=Context)
builder.add_node("plan_round", plan_round)
builder.add_node("candidate", candidate_graph)
builder.add_node("round_end", round_end)
builder.add_node("steer", steer)
builder.add_edge(START, "plan_round")
builder.add_edge("candidate", "round_end")

graph = builder.compile()

__all__ = ["builder", "graph", "candidate_builder", "archive_for", "executor_for", "Context",
           "model_for"]
