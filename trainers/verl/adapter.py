"""A candidate's hooks in verl's signatures, registered in verl's own registries.

The hooks' verl side is trainers/verl/runtime.py, a self-contained file (no POISE import)
that every plugin embeds; its docstring is the hook contract under verl. This module is
POISE's entry to it: the plugin's registered name, the run token, and
``register_candidate`` with GRPO as the fallback for omitted hooks, in this process (the
tests, the stand-in and a single-process verl run use it).
"""
from __future__ import annotations

import hashlib

from trainers.source import code_hash, load_module
from trainers.verl.runtime import (CODE_TOLERANCE, KV_NAMESPACE, OUTCOME_CORRECT,  # noqa: F401
                                   OUTCOME_INVALID, OUTCOME_WRONG, CandidateError, Hooks,
                                   Rollouts, Settings, StepClock, VerlCandidate,
                                   decode_outcomes, global_share, group_ids, install,
                                   outcome_code, verl_global_step)
from trainers.verl import runtime as _runtime


def registered_name(candidate_name: str, source: str) -> str:
    """``poise_<slug>_<codehash8>``: unique per candidate code, a valid identifier."""
    slug = "".join(c if c.isalnum() else "_" for c in candidate_name.lower()).strip("_")
    slug = "_".join(filter(None, slug.split("_")))[:40] or "candidate"
    return f"poise_{slug}_{code_hash(source)[:8]}"


def register_candidate(source: str, settings: Settings, name: str | None = None
                       ) -> VerlCandidate:
    """Register ``source``'s hooks with verl under ``name`` (default ``registered_name``),
    GRPO's for the hooks it omits (see runtime.register_candidate)."""
    from trainers.baselines import baseline_source

    name = name or registered_name(str(getattr(load_module(source), "NAME", "") or
                                       "candidate"), source)
    return _runtime.register_candidate(source, settings, name, baseline_source("grpo"))


def run_token(*parts: str) -> str:
    """A short token that tells one launch apart from another."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]
