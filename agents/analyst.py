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
from agents.prompts import messages, quote_data, quote_text
from agents.proposal import Proposal
from agents.scientist import MAX_CODE_CHARS, cut, proposal_view
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


def diagnose_with(model: Any | None, proposal: Proposal, results: Sequence[dict],
                  baseline_final: dict | None, *, parent: dict | None = None,
                  baseline: dict | None = None, budget: Any = None) -> Diagnosis:
    """The diagnosis of ``proposal``'s runs (``results``: one TrainResult dict per seed,
    with curve, evals and final); see the module docstring for whose. ``parent`` and
    ``baseline``: mean final numbers of the parent and of GRPO, for the side-by-side."""
    first = results[0]
    if model is not None and proposal.kind != "seed":
        return diagnose_llm(model, proposal, results, baseline_final, parent=parent,
                            baseline=baseline, budget=budget)
    return diagnose(first["curve"], first["evals"], first["final"], baseline_final,
                    proposal.genome, (baseline or {}).get("entropy_ratio"))


def diagnose_llm(model: Any, proposal: Any, results: Sequence[dict],
                 baseline_final: dict | None, *, parent: dict | None = None,
                 baseline: dict | None = None, max_repairs: int = 2,
                 budget: Any = None) -> LLMDiagnosis:
    """Diagnose a candidate's runs, every seed. Raises ``AgentOutputError`` when no
    valid reply comes back."""
    from agents.budget import ask

    first = results[0]
    rules = diagnose(first["curve"], first["evals"], first["final"], baseline_final,
                     baseline_entropy_ratio=(baseline or {}).get("entropy_ratio"))
    mean = mean_final([r["final"] for r in results])
    compare = [{"candidate": _numbers(mean), "seeds": len(results)}]
    if parent:
        compare.append({"parent": _numbers(parent)})
    compare.append({"grpo": _numbers(baseline or baseline_final or {})})

    def build(level: int) -> list:
        buckets = (CURVE_BUCKETS, 6, 4, 2)[level]
        return messages(
            "analyst", tags=", ".join(TAGS),
            proposal=quote_data("proposal", [proposal_view(proposal)]),
            curve="\n".join(quote_data(f"curve_seed_{seed}",
                                        summarize_curve(r["curve"], buckets))
                             for seed, r in enumerate(results)),
            evals=quote_data("evals", _downsample([_numbers(e) for e in first["evals"]],
                                                  (MAX_EVAL_ROWS, 4, 3, 2)[level])),
            seeds=quote_data("seeds", [{"seed": seed, **_numbers(r["final"])}
                                       for seed, r in enumerate(results)]),
            compare=quote_data("compare", compare),
            measurements=quote_data("measurements", [
                {k: _round(v) for k, v in rules.metrics.items()},
                {"rule_flags": rules.tags}]))

    reply = ask(build, 4, budget, "analyst", lambda prompt, b: invoke_structured(
        model, prompt, DiagnosisReply, max_repairs=max_repairs, budget=b))
    tags, dropped = normalize_tags(reply.tags)
    return LLMDiagnosis(text=reply.text.strip(), tags=tags, metrics=rules.metrics,
                        dropped_tags=dropped)


def mean_final(finals: Sequence[dict]) -> dict:
    """The per-key mean of the seeds' final metrics (finite numbers only)."""
    keys = [k for k in (finals[0] if finals else {}) if _finite(finals[0][k])
            and not isinstance(finals[0][k], bool)]
    out = {}
    for k in keys:
        xs = [float(f[k]) for f in finals if _finite(f.get(k))]
        if xs:
            out[k] = sum(xs) / len(xs)
    return out


# ----------------------------------------------------------------------------- failures

# (pattern in the error, likely cause, what to try)
FAILURE_RULES = (
    (r"over the budget|context window|ContextOverflow|context length",
     "the prompt did not fit the model's context window",
     "set context_tokens to the model's real window or use a model with a larger one"),
    (r"AgentOutputError|no usable reply",
     "the model's replies did not follow the required format",
     "use a stronger model, or check the server's chat template"),
    (r"ModelCallError|model call failed|Connection|timed out waiting for the model",
     "the model server failed or could not be reached",
     "check the server and OPENAI_BASE_URL; the next round retries"),
    (r"no genome to render and no coder model",
     "a free-form proposal met the builtin coder, which only renders genomes",
     "configure a coder model (POISE_MODEL_CODER or --model)"),
    (r"timed out|TimeoutError|timeout",
     "a hook loops or is far too slow (the sandbox's time limit stopped it)",
     "remove loops over samples or tokens; use vectorized tensor operations"),
    (r"not finite|nan|inf\b|non-finite",
     "a division or log without a guard produced NaN/inf on some batch",
     "clamp denominators (clamp_min) and handle zero-variance and all-fail groups"),
    (r"KeyError|AttributeError|has no attribute",
     "the code reads a batch field or attribute the contract does not provide",
     "use only the fields the contract lists (correct, valid, length, group, ...)"),
    (r"shape|size mismatch|must match the size|broadcast",
     "a tensor has the wrong shape for the hook's contract",
     "return (N,) rewards, (N,) or (N, T) advantages, and a scalar loss"),
    (r"does not do what the proposal says|not the rendered genome|consistency",
     "the code departs from the proposal's math",
     "make the code follow the stated formula, or restate the proposal"),
    (r"near-duplicate",
     "the mechanism is too close to a candidate already in the archive",
     "change what the mechanism does, not only its constants or wording"),
    (r"forbidden|not allowed|import",
     "the module uses a construct the sandbox forbids",
     "import only torch, math and numpy; no files, network or global state"),
    (r"MemoryError|memory",
     "the job ran out of memory", "avoid (N, N) or (N, T, T) intermediates"),
)


def failure_rules(status: str, error: str) -> dict:
    """The builtin reading of a failure: the stage, the likely cause, what to try."""
    import re

    stage = status.replace("failed_", "").replace("_", " ")
    for pattern, cause, advice in FAILURE_RULES:
        if re.search(pattern, error or "", re.IGNORECASE):
            return {"stage": stage, "cause": cause, "next": advice}
    return {"stage": stage, "cause": "not recognized by the builtin rules",
            "next": "read the error; simplify the mechanism to its core change"}


def diagnose_failure(model: Any | None, proposal: Proposal | None, status: str,
                     error: str, feedback: Sequence[str] = (), code: str | None = None,
                     *, budget: Any = None) -> Diagnosis:
    """A failed candidate's diagnosis: what failed, the likely cause, what to try. The
    LLM analyst's when a model is configured (the builtin rules' if it fails too)."""
    rules = failure_rules(status, error)
    name = proposal.name if proposal is not None else "the candidate"
    tags = [status.replace("_", "-")]
    builtin_text = (f"What failed: {name} stopped at {rules['stage']}: {cut(error, 600)}\n"
                    f"Likely cause: {rules['cause']}.\nNext: {rules['next']}.")
    if model is None or proposal is None:
        return Diagnosis(text=builtin_text, tags=tags, metrics={})
    from agents.budget import ask

    def build(level: int) -> list:
        code_chars, fb = ((MAX_CODE_CHARS, 8), (4000, 4), (1500, 2), (400, 1))[level]
        return messages(
            "analyst_failure", proposal=quote_data("proposal", [proposal_view(proposal)]),
            code=quote_text("code", cut(code or "(none)", code_chars), lang="python"),
            failure=quote_data("failure", [{"status": status, "error": cut(error, 1500)}]
                               + [{"feedback": cut(f, 800)} for f in list(feedback)[:fb]]),
            rules=quote_data("rules", [rules]))

    try:
        reply = ask(build, 4, budget, "analyst", lambda prompt, b: invoke_structured(
            model, prompt, DiagnosisReply, max_repairs=1, budget=b))
    except Exception as e:  # noqa: BLE001 - the failure is still diagnosed, by the rules
        return Diagnosis(text=builtin_text + f"\n(The LLM analyst failed too: "
                         f"{type(e).__name__}.)", tags=tags + ["analyst-error"], metrics={})
    return Diagnosis(text=reply.text.strip(), tags=tags, metrics={})


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


__all__ = ["diagnose_with", "diagnose_llm", "diagnose_failure", "failure_rules", "mean_final",
           "LLMDiagnosis", "DiagnosisReply", "normalize_tags",
           "summarize_curve", "TAGS"]
