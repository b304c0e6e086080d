"""LangSmith tracing of a POISE run: readable run names, tags and metadata; no secrets.

Off unless LangSmith tracing is on in the environment (``LANGSMITH_TRACING=true`` with
``LANGSMITH_API_KEY``; ``LANGSMITH_PROJECT`` picks the project, default ``poise``;
``LANGSMITH_ENDPOINT`` a self-hosted server). Off, ``start`` returns None: no client, no
background thread, nothing sent.

On, ``graph.run`` traces each run as one trace. LangGraph names a node's run after the
node and knows nothing of candidates, so ``RunTracer`` (a LangChainTracer) labels each run
as it starts, from the run's own inputs and its parent's metadata:

- root ``poise run 3``: tags ``poise``; metadata ``run_id``, ``directive``;
- ``candidate r2.s1`` (one Send branch, round 2, slot 1): metadata ``candidate_key``
  (``3:2:1``, as in the archive), ``round`` = ``generation``, ``slot``; at its end
  ``candidate_id``, ``candidate_name``, ``status``, ``fitness``;
- each node (``scientist``, ``trainer``, ...): tags ``poise``, the node name and, for an
  agent, ``role:<role>``; metadata ``node``, ``role`` and the candidate's keys;
- each LLM call: ``scientist LLM`` etc., the same tags and metadata;
- the ``trainer`` node: its outputs gain ``metrics`` and its metadata the same flat
  numbers (``overall``, ``<family>_acc``, ``length``, ``validity``, ``fitness``: means
  over seeds, on the held-out evaluation, under the run's objective).

Secrets: the client's anonymizer replaces the exact values of secret-looking environment
variables (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``) and LangSmith's default
secret patterns in every run's inputs, outputs, metadata and error before upload.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Iterator

from langchain_core.tracers.langchain import LangChainTracer

ROLES = {"scientist": "scientist", "coder": "coder", "verifier": "verifier",
         "analyst": "analyst"}  # node -> agent role (its LLM calls are "<role> LLM")
CANDIDATE_KEYS = ("candidate_key", "round", "generation", "slot")
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
MIN_SECRET_CHARS = 8        # shorter values ("1", "true") are no secrets and match anywhere
REDACTED = "[redacted]"
ANONYMIZE_DEPTH = 64        # strings nested deeper are not scanned (LangSmith's default: 24)
DEFAULT_PROJECT = "poise"
FLUSH_TIMEOUT_S = 30.0      # a dead endpoint must not hang the CLI's exit

log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether LangSmith tracing is on (``LANGSMITH_TRACING``/``LANGCHAIN_TRACING_V2``)."""
    from langsmith.utils import tracing_is_enabled

    return tracing_is_enabled() is True


def start(secrets: tuple[str, ...] = ()) -> RunTracer | None:
    """A tracer with its own client, or None (nothing created) when tracing is off.
    ``secrets``: values to strip besides those found in the environment."""
    if not enabled():
        return None
    from langsmith import Client
    from langsmith.utils import get_tracer_project

    client = Client(anonymizer=anonymizer(secret_values() + tuple(secrets)))
    return RunTracer(client=client, project_name=get_tracer_project(False) or DEFAULT_PROJECT)


@contextlib.contextmanager
def session(tracer: RunTracer | None) -> Iterator[None]:
    """Route LangChain calls made outside the graph (the objective LLM call) through the
    tracer's client, so they are anonymized too; flush before leaving."""
    if tracer is None:
        yield
        return
    from langsmith import tracing_context

    try:
        with tracing_context(client=tracer.client, project_name=tracer.project_name,
                             tags=["poise"]):
            yield
    finally:
        flush(tracer)


def run_config(tracer: RunTracer | None, run_id: int, directive: str,
               resumed: bool = False) -> dict:
    """The graph's invoke config for run ``run_id``: run name, tags, metadata and the
    tracer. Harmless when tracing is off (no callback, nothing sent)."""
    config: dict[str, Any] = {"run_name": f"poise run {run_id}", "tags": ["poise"],
                              "metadata": {"run_id": run_id, "directive": directive,
                                           "resumed": resumed}}
    if tracer is not None:
        config["callbacks"] = [tracer]
    return config


def flush(tracer: RunTracer | None, timeout: float = FLUSH_TIMEOUT_S) -> None:
    """Send every queued trace (call before the process exits)."""
    if tracer is None:
        return
    try:
        tracer.client.flush(timeout=timeout)
    except Exception as e:  # noqa: BLE001 - tracing must never fail the run
        log.warning("LangSmith flush failed: %s", e)


# ----------------------------------------------------------------------------- secrets

def secret_values(environ: dict | None = None) -> tuple[str, ...]:
    """Values of secret-looking environment variables, longest first."""
    env = os.environ if environ is None else environ
    values = {v.strip() for k, v in env.items()
              if SECRET_NAME.search(k) and len(v.strip()) >= MIN_SECRET_CHARS}
    return tuple(sorted(values, key=len, reverse=True))


def anonymizer(secrets: tuple[str, ...]):
    """An exact-match rule for each value (first, so that no pattern rule cuts a known
    secret in two), then LangSmith's default secret patterns."""
    from langsmith.anonymizer import DEFAULT_SECRET_RULES, create_anonymizer

    exact = [{"pattern": re.compile(re.escape(s)), "replace": REDACTED}
             for s in dict.fromkeys(secrets) if s]
    return create_anonymizer(exact + list(DEFAULT_SECRET_RULES), max_depth=ANONYMIZE_DEPTH)


# ----------------------------------------------------------------------------- labels

def candidate_name(rnd: int, slot: int) -> str:
    return f"candidate r{rnd}.s{slot}"


def final_metrics(state: dict, results: list) -> dict:
    """Flat final metrics of a trained candidate: means over seeds of the held-out
    evaluation, and the fitness under the run's objective (as the evaluate node has it)."""
    from evals.objective import ObjectiveSpec
    from graph.graph import candidate_fitnesses

    spec = ObjectiveSpec.model_validate(state["objective"])  # the run state's JSON
    finals = [r["final"] for r in results if r]
    if not finals:
        return {}

    def mean(xs):
        return sum(xs) / len(xs)

    out = {"overall": mean([f["overall"] for f in finals])}
    for key in sorted(finals[0]):
        if key.endswith("/acc@1"):
            out[f"{key.split('/')[0]}_acc"] = mean([f[key] for f in finals])
    out["length"] = mean([f["length"] for f in finals])
    out["validity"] = mean([f["valid"] for f in finals])
    out["fitness"] = mean(candidate_fitnesses(spec, state.get("reference"), finals))
    out["seeds"] = len(finals)
    return out


def _label_start(run, parent) -> None:
    """Name, tags and metadata of a run about to be sent, from its inputs and parent.
    Replaces (never mutates) tags and metadata: LangChain shares those objects."""
    meta = dict(run.extra.get("metadata") or {})
    tags = list(run.tags or [])
    node = meta.get("langgraph_node")
    if parent is not None:
        inherited = parent.extra.get("metadata") or {}
        meta.update({k: inherited[k] for k in CANDIDATE_KEYS if k in inherited})
    inputs = run.inputs if isinstance(run.inputs, dict) else {}
    if run.run_type == "chain" and node == run.name:  # a graph node's own run
        meta["node"] = node
        tags += ["poise", node]
        if node == "candidate" and {"run_id", "round", "slot"} <= set(inputs):
            run.name = candidate_name(inputs["round"], inputs["slot"])
            meta.update(candidate_key=f"{inputs['run_id']}:{inputs['round']}:{inputs['slot']}",
                        round=inputs["round"], generation=inputs["round"],
                        slot=inputs["slot"])
        elif "round" in inputs and "round" not in meta:  # plan_round, round_end
            meta["round"] = inputs["round"]
        if node in ROLES:
            meta["role"] = ROLES[node]
            tags.append(f"role:{ROLES[node]}")
    elif run.run_type == "llm" and node in ROLES:
        run.name = f"{ROLES[node]} LLM"
        meta.update(node=node, role=ROLES[node])
        tags += ["poise", node, f"role:{ROLES[node]}"]
    run.extra["metadata"] = meta
    run.tags = list(dict.fromkeys(tags))


def _label_end(run) -> None:
    """A finished candidate gets its archive id and outcome; the trainer its metrics."""
    meta = run.extra.get("metadata") or {}
    outputs = run.outputs if isinstance(run.outputs, dict) else {}
    if meta.get("node") == "candidate" and outputs.get("finished"):
        c = outputs["finished"][-1]
        run.extra["metadata"] = {**meta, "candidate_id": c["id"], "candidate_name": c["name"],
                                 "status": c["status"], "fitness": c["fitness"]}
    elif meta.get("node") == "trainer" and outputs.get("results"):
        metrics = final_metrics(run.inputs, outputs["results"])
        run.outputs = {**outputs, "metrics": metrics}
        run.extra["metadata"] = {**meta, **metrics}


class RunTracer(LangChainTracer):
    """A LangChainTracer that labels POISE's runs (see the module docstring).

    Labels are set in ``_start_trace``, before the run is first sent, and in
    ``_on_chain_end``, before its update; a labelling bug is logged, never raised."""

    def _start_trace(self, run) -> None:
        try:
            _label_start(run, self.run_map.get(str(run.parent_run_id))
                         if run.parent_run_id else None)
        except Exception as e:  # noqa: BLE001 - tracing must never fail the run
            log.warning("trace labelling failed for %s: %s", run.name, e)
        super()._start_trace(run)

    def _on_chain_end(self, run) -> None:
        try:
            _label_end(run)
        except Exception as e:  # noqa: BLE001
            log.warning("trace labelling failed for %s: %s", run.name, e)
        super()._on_chain_end(run)
