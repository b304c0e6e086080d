"""The analyst: a mechanism-level diagnosis of a trained candidate, with tags.

``diagnose_with`` is the role: the LLM analyst's diagnosis when a model is configured
(not for the seed baseline, which the builtin rules describe), else the builtin rules'
(``agents.builtin.analyst.diagnose``, told the genome when the proposal has one).
``diagnose_llm`` mirrors the builtin ``agents.builtin.analyst.diagnose`` (same inputs,
with the proposal in place of the genome) and returns an ``LLMDiagnosis``, a builtin
``Diagnosis`` whose tags come only from the builtin vocabulary ``TAGS`` (others are
dropped and kept aside in ``dropped_tags``) and whose ``metrics`` are the builtin
analyst's measurements. The prompt shows the curve averaged over at most
``CURVE_BUCKETS`` step buckets, a few evaluations, the final numbers against the
baseline, and the builtin measurements and rule flags (which see the full curve, so
spikes lost to averaging still show).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from pydantic import BaseModel, Field

from agents.builtin.analyst import TAGS, Diagnosis, diagnose
from agents.prompts import messages, quote_data
from agents.proposal import Proposal
from agents.scientist import proposal_view
from agents.structured import NonBlank, invoke_structured

CURVE_BUCKETS = 10
MAX_EVAL_ROWS = 6
MAX_KEYS = 16
CURVE_KEYS = ("reward", "accuracy", "entropy", "response_length", "validity",
              "kl_to_start", "grad_norm", "clip_fraction", "all_fail_groups",
              "all_correct_groups")


class DiagnosisReply(BaseModel):
    """The fields the model writes."""
    text: NonBlank = Field(min_length=1, description="the diagnosis: 'What happened: ...', "
                      "'Why: ...', 'Next: ...'")
    tags: list[str] = Field(default=[], description="tags that apply, only from: "
                            + ", ".join(TAGS))


class LLMDiagnosis(Diagnosis):
    """A ``Diagnosis`` from the LLM analyst; ``dropped_tags`` are the model's tags that
    are not in the vocabulary."""
    dropped_tags: list[str] = []


def diagnose_with(model: Any | None, proposal: Proposal, curve: Sequence[dict],
                  evals: Sequence[dict], final: dict,
                  baseline_final: dict | None) -> Diagnosis:
    """The diagnosis of one run of ``proposal`` (see the module docstring for whose)."""
    if model is not None and proposal.kind != "seed":
        return diagnose_llm(model, proposal, curve, evals, final, baseline_final)
    return diagnose(curve, evals, final, baseline_final, proposal.genome)


def diagnose_llm(model: Any, proposal: Any, curve: Sequence[dict], evals: Sequence[dict],
                 final: dict, baseline_final: dict | None, *,
                 max_repairs: int = 2) -> LLMDiagnosis:
    """Diagnose one run. Raises ``AgentOutputError`` when no valid reply comes back."""
    rules = diagnose(curve, evals, final, baseline_final)
    prompt = messages(
        "analyst", tags=", ".join(TAGS),
        proposal=quote_data("proposal", [proposal_view(proposal)]),
        curve=quote_data("curve", summarize_curve(curve)),
        evals=quote_data("evals", _downsample([_numbers(e) for e in evals], MAX_EVAL_ROWS)),
        final=quote_data("final", [{"candidate": _numbers(final)},
                                   {"baseline": _numbers(baseline_final or {})}]),
        measurements=quote_data("measurements", [
            {k: _round(v) for k, v in rules.metrics.items()},
            {"rule_flags": rules.tags}]))
    reply = invoke_structured(model, prompt, DiagnosisReply, max_repairs=max_repairs)
    tags, dropped = normalize_tags(reply.tags)
    return LLMDiagnosis(text=reply.text.strip(), tags=tags, metrics=rules.metrics,
                        dropped_tags=dropped)


def normalize_tags(tags: Sequence[str]) -> tuple[list[str], list[str]]:
    """(known tags, in order, deduplicated; unknown ones). 'Entropy collapse' and
    'entropy_collapse' both read as 'entropy-collapse'."""
    kept, dropped = [], []
    for tag in tags:
        t = "-".join(str(tag).strip().lower().replace("_", " ").split())
        if t in TAGS:
            if t not in kept:
                kept.append(t)
        elif t:
            dropped.append(str(tag))
    return kept, dropped


def summarize_curve(curve: Sequence[dict], buckets: int = CURVE_BUCKETS) -> list[dict]:
    """The curve as at most ``buckets`` rows of per-bucket means over ``CURVE_KEYS``."""
    n = len(curve)
    if n == 0:
        return []
    keys = [k for k in CURVE_KEYS if any(_finite(row.get(k)) for row in curve)]
    rows = []
    for b in range(min(buckets, n)):
        lo, hi = b * n // min(buckets, n), (b + 1) * n // min(buckets, n)
        chunk = curve[lo:hi]
        first, last = chunk[0].get("step", lo), chunk[-1].get("step", hi - 1)
        row: dict[str, Any] = {"steps": f"{first}-{last}" if first != last else f"{first}"}
        for k in keys:
            xs = [float(r[k]) for r in chunk if _finite(r.get(k))]
            row[k] = _round(sum(xs) / len(xs)) if xs else None
        rows.append(row)
    return rows


def _downsample(rows: list, limit: int) -> list:
    if len(rows) <= limit:
        return rows
    idx = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
    return [rows[i] for i in idx]


def _numbers(d: dict) -> dict:
    """The finite numeric entries of a metrics dict, rounded, at most ``MAX_KEYS``."""
    out = {str(k): _round(v) for k, v in d.items() if _finite(v) and not isinstance(v, bool)}
    return dict(list(out.items())[:MAX_KEYS])


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _round(v: Any) -> Any:
    return float(f"{v:.3g}") if isinstance(v, float) else v


__all__ = ["diagnose_with", "diagnose_llm", "LLMDiagnosis", "DiagnosisReply", "normalize_tags",
           "summarize_curve", "TAGS"]
