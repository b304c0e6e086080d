"""The verifier: is a candidate module safe, well-formed and what its proposal says?

    report = verify(source, proposal_text, home=home)
    report.passed, report.stage, report.feedback   # feedback goes back to the coder

Four stages; the first that fails ends the run and names itself in ``report.stage``:
- ``static`` (this process, nothing executed): the source parses, defines at least one
  hook with the contract's signature, ``NAME`` is a slug, and it passes the sandbox's
  static check (imports only torch/math/numpy, no eval/exec/open/os/sys/subprocess/
  socket, no dunder access, no monkeypatching; ``trainers.sandbox.check_source``);
- ``dynamic`` (sandbox): every hook on edge-case batches (all-fail, all-correct and
  zero-variance groups, invalid samples, G=1, a single sample, ragged masks, responses
  at max length): shapes, finite values, a finite scalar loss, finite gradients w.r.t.
  logp, none on padding, non-zero where the batch has signal, inputs left unchanged;
- ``consistency``: the proposal's claims against the code, by a pluggable judge
  ``(proposal, source) -> (consistent, reason)`` (the LLM judge) or, by default, the
  builtin rule (``check_consistency``). Skipped when there is no proposal text;
- ``smoke`` (sandbox): a 5-step training run from a tiny warm start cached under
  ``home``: finite metrics and no contract error.
They run in the order static, dynamic, consistency, smoke: the consistency check is far
cheaper than a training run, so a proposal the code contradicts never costs one.
"""
from __future__ import annotations

import ast
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

from trainers.source import HOOKS, parse_source
from trainers.sandbox import SandboxResult, check_source, run_in_sandbox
from trainers.home import resolve_home

Stage = Literal["static", "dynamic", "smoke", "consistency"]
ConsistencyJudge = Callable[[str, str], tuple[bool, str]]
SLUG = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$")
MAX_NAME = 64
# hook -> (number of required positional arguments, how it must be declared)
SIGNATURES = {
    "shape_reward": (1, "def shape_reward(batch)"),
    "compute_advantages": (2, "def compute_advantages(batch, rewards)"),
    "policy_loss": (5, "def policy_loss(logp, old_logp, advantages, mask, batch, "
                       "ref_logp=None)"),
}


@dataclass
class VerifierReport:
    passed: bool
    stage: Stage | None                 # the stage that failed; None when passed
    feedback: list[str]                 # what was wrong, for the coder; empty when passed
    warnings: list[str] = field(default_factory=list)  # worth a look, not a failure
    metrics: dict = field(default_factory=dict)        # per stage: wall_s and findings

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.passed:
            return "passed" + (f" ({len(self.warnings)} warning(s))" if self.warnings else "")
        return f"failed at {self.stage}: {self.feedback[0] if self.feedback else '?'}"


def default_home() -> Path:
    return resolve_home()


def verify(source: str, proposal_text: str | None = None, *, smoke: bool = True,
           home: str | Path | None = None,
           consistency_judge: ConsistencyJudge | None = None,
           dynamic_timeout_s: float = 60.0, smoke_timeout_s: float = 300.0,
           memory_mb: int = 4096, smoke_steps: int = 5,
           warm_config: dict | None = None, device: str = "cpu") -> VerifierReport:
    """Run the stages in order, stopping at the first failure (see the module doc).

    ``home`` caches the smoke run's tiny warm start (default ``$POISE_HOME`` or
    ``./.poise``); ``warm_config`` overrides it (``WarmStartConfig`` fields as a dict).
    ``device`` is where the smoke run trains (the run's; the hook checks stay on CPU)."""
    metrics: dict = {}
    warnings: list[str] = []

    t0 = time.monotonic()
    problems, static_warnings = static_problems(source)
    warnings += static_warnings
    metrics["static"] = {"wall_s": time.monotonic() - t0}
    if problems:
        return VerifierReport(False, "static", problems, warnings, metrics)

    result = run_in_sandbox("check_hooks", {"source": source}, timeout_s=dynamic_timeout_s,
                            memory_mb=memory_mb)
    metrics["dynamic"] = _sandbox_metrics(result)
    if not result.ok:
        return VerifierReport(False, "dynamic", _sandbox_feedback(result, "dynamic"),
                              warnings, metrics)

    if proposal_text and proposal_text.strip():
        t0 = time.monotonic()
        problems, notes, judge_error = _judge_consistency(proposal_text, source,
                                                          consistency_judge)
        warnings += notes
        metrics["consistency"] = {"wall_s": time.monotonic() - t0,
                                  "judge": "builtin rule" if consistency_judge is None
                                  else getattr(consistency_judge, "__name__", "custom"),
                                  **({"judge_error": judge_error} if judge_error else {})}
        if problems:
            return VerifierReport(False, "consistency", problems, warnings, metrics)
    else:
        metrics["consistency"] = {"skipped": "no proposal text"}

    if smoke:
        payload = {"source": source, "home": str(Path(home or default_home()).resolve()),
                   "steps": smoke_steps}
        if warm_config is not None:
            payload["warm_config"] = warm_config
        if device != "cpu":
            payload["device"] = device
        result = run_in_sandbox("smoke_train", payload, timeout_s=smoke_timeout_s,
                                memory_mb=memory_mb)
        metrics["smoke"] = {**_sandbox_metrics(result), **_smoke_summary(result.value)}
        if not result.ok:
            return VerifierReport(False, "smoke", _sandbox_feedback(result, "smoke"),
                                  warnings, metrics)
    return VerifierReport(True, None, [], warnings, metrics)


# ----------------------------------------------------------------------------- static

def static_problems(source: str) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the source's form: the sandbox's safety rules, then the
    contract's: at least one hook, hook signatures, a NAME slug."""
    problems = check_source(source)
    if problems and (problems[0].startswith("the candidate source")
                     or "syntax error" in problems[0]):
        return problems, []
    tree = parse_source(source)
    warnings: list[str] = []
    defs: dict[str, list[ast.FunctionDef]] = {}
    assigned: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defs.setdefault(node.name, []).append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    assigned[target.id] = node
    hooks = [h for h in HOOKS if h in defs]
    if not hooks:
        problems.append(f"defines none of the hooks {', '.join(HOOKS)}: a candidate must "
                        "define at least one (omitted hooks fall back to GRPO's)")
    for hook in HOOKS:
        if hook in assigned and hook not in defs:
            problems.append(f"line {assigned[hook].lineno}: {hook} must be defined with "
                            f"`def` ({SIGNATURES[hook][1]})")
    for hook in hooks:
        node = defs[hook][-1]
        if isinstance(node, ast.AsyncFunctionDef):
            problems.append(f"line {node.lineno}: {hook} must be a plain function, not "
                            "async")
        elif (message := _signature_problem(hook, node)) is not None:
            problems.append(message)
        if len(defs[hook]) > 1:
            warnings.append(f"{hook} is defined {len(defs[hook])} times; the last one "
                            f"(line {node.lineno}) is used")
    problems += _name_problems(assigned.get("NAME"))
    return problems, warnings


def _signature_problem(hook: str, node: ast.FunctionDef) -> str | None:
    need, expected = SIGNATURES[hook]
    args = node.args
    positional = args.posonlyargs + args.args
    required = len(positional) - len(args.defaults)
    accepts = len(positional) >= need or args.vararg is not None
    bad = required > need or not accepts or args.kwonlyargs and any(
        d is None for d in args.kw_defaults)
    if hook == "policy_loss" and args.kwarg is None and "ref_logp" not in {
            a.arg for a in positional + args.kwonlyargs}:
        bad = True
    if not bad:
        return None
    return (f"line {node.lineno}: {hook} has the wrong signature; the trainer calls "
            f"`{expected}`")


def _name_problems(node: ast.AST | None) -> list[str]:
    example = 'NAME = "length-gated-grpo"'
    if node is None:
        return [f"NAME is missing: define a slug at the top level, e.g. {example}"]
    value = node.value
    if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
        return [f"line {node.lineno}: NAME must be a string literal, e.g. {example}"]
    name = value.value
    if not SLUG.match(name) or len(name) > MAX_NAME:
        return [f"line {node.lineno}: NAME must be a slug of at most {MAX_NAME} characters: "
                "lowercase letters and digits joined by single hyphens or underscores, "
                f"e.g. {example}; got {name!r}"]
    return []


# ----------------------------------------------------------------------------- sandbox stages

_KIND_HINTS = {
    "timeout": "did not finish in time: an infinite or very slow loop?",
    "memory": "ran out of memory: avoid huge tensors (everything here is (N,) or (N, T))",
    "blocked": "was refused by the sandbox: candidate code may only compute with torch, "
               "math and numpy",
    "crash": "crashed the sandbox process",
}


def _sandbox_feedback(result: SandboxResult, stage: str) -> list[str]:
    where = ("on edge-case batches" if stage == "dynamic"
             else "in a 5-step smoke training run")
    if result.kind == "contract":
        errors = result.value.get("errors") or [result.error]
        return [f"{e} ({where})" for e in errors]
    hint = _KIND_HINTS.get(result.kind, "failed")
    feedback = [f"the candidate {hint} ({where}): {result.error}"]
    tail = result.stdout_tail.strip()
    if result.kind == "crash" and tail:
        feedback.append("last output: " + tail.splitlines()[-1][:300])
    return feedback


def _sandbox_metrics(result: SandboxResult) -> dict:
    out = {"wall_s": result.wall_s, "kind": result.kind}
    if "defined" in result.value:
        out["defined"] = result.value["defined"]
    if "batches" in result.value:
        out["batches"] = len(result.value["batches"])
    return out


def _smoke_summary(value: dict) -> dict:
    curve = value.get("curve") or []
    if not curve:
        return {}
    keys = ("reward", "accuracy", "validity", "response_length", "entropy", "kl_to_start",
            "grad_norm", "clip_fraction")
    last = {k: curve[-1][k] for k in keys if k in curve[-1]}
    mean = {k: sum(r[k] for r in curve) / len(curve) for k in keys if k in curve[0]}
    final = value.get("final") or {}
    return {"steps_done": value.get("steps_done"), "last": last, "mean": mean,
            "final_overall": final.get("overall")}


# ----------------------------------------------------------------------------- consistency

# hook -> (what it changes, words that claim a change there)
COMPONENTS = {
    "shape_reward": ("the reward", re.compile(
        r"\breward|penalt|bonus|shaping|shaped", re.I)),
    "compute_advantages": ("the advantage", re.compile(
        r"advantage|baseline|normali[sz]|whiten|standardi[sz]|group (mean|std)", re.I)),
    "policy_loss": ("the loss", re.compile(
        r"\bclip|loss|aggregat|\bkl\b|kullback|\bratio|importance (weight|sampling)|"
        r"surrogate|trust region", re.I)),
}
# A sentence that says a part is left as it was claims nothing about it.
UNCHANGED = re.compile(
    r"\b(unchanged|untouched|(is|are|stays?|remains?) grpo'?s|as in grpo|same as( in)? grpo|"
    r"(kept|keeps?|retains?|reuses?) (grpo|the default|the parent|its|their|the same)|"
    r"(does|do) not (change|modify|touch)|no change)", re.I)
QUOTED = re.compile(r'"[^"]{0,300}"|\u201c[^\u201d]{0,300}\u201d')  # titles, names: not claims
SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n\s*\n|\n\s*[-*\u2022]\s+|\n(?=\s*\d+[.)]\s)")


def check_consistency(proposal: str, source: str) -> tuple[list[str], list[str]]:
    """The builtin rule: (problems, warnings). A sentence of the proposal that claims a
    change to the reward, the advantage or the loss needs one of the hooks it names;
    a hook the proposal never mentions is a warning."""
    defined = _defined_hooks(source)
    problems = []
    for sentence in SENTENCE.split(QUOTED.sub('""', proposal)):
        sentence = " ".join(sentence.split())
        if not sentence or UNCHANGED.search(sentence):
            continue
        claimed = [h for h, (_, words) in COMPONENTS.items() if words.search(sentence)]
        if claimed and not any(h in defined for h in claimed):
            parts = " or ".join(COMPONENTS[h][0] for h in claimed)
            hooks = " or ".join(claimed)
            problems.append(f'the proposal changes {parts} ("{_excerpt(sentence)}") but the '
                            f"code does not define {hooks}: implement it there, or correct "
                            "the proposal")
    warnings = [f"the code defines {h}, but the proposal never mentions {what}: is this "
                "change intended?"
                for h, (what, words) in COMPONENTS.items()
                if h in defined and not words.search(proposal)]
    return list(dict.fromkeys(problems)), warnings


def builtin_consistency_judge(proposal: str, source: str) -> tuple[bool, str]:
    """``check_consistency`` in the pluggable judge's shape."""
    problems, warnings = check_consistency(proposal, source)
    return (not problems, "; ".join(problems or warnings) or "consistent")


def _judge_consistency(proposal: str, source: str, judge: ConsistencyJudge | None
                       ) -> tuple[list[str], list[str], str | None]:
    """(problems, warnings, the judge's error if it failed)."""
    if judge is None:
        return (*check_consistency(proposal, source), None)
    try:
        consistent, reason = judge(proposal, source)
    except Exception as e:  # the judge's failure is not the candidate's
        problems, warnings = check_consistency(proposal, source)
        error = f"{type(e).__name__}: {str(e)[:300]}"
        note = f"the consistency judge failed ({error}); the builtin rule was used instead"
        return problems, [note] + warnings, error
    if consistent:
        return [], [], None
    return [f"the code does not do what the proposal says: {reason}"], [], None


def _defined_hooks(source: str) -> set[str]:
    tree = parse_source(source)
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in HOOKS}


def _excerpt(sentence: str, limit: int = 120) -> str:
    return sentence if len(sentence) <= limit else sentence[:limit - 3] + "..."


__all__ = ["verify", "VerifierReport", "static_problems", "check_consistency",
           "builtin_consistency_judge", "ConsistencyJudge", "Stage"]
