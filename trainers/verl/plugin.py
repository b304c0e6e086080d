"""Write the plugin module that puts one candidate into verl, on every Ray worker.

The plugin is a small generated file ``<dir>/poise_<slug>_<hash8>.py``: it embeds the
candidate's source (unchanged: the same text the local trainer runs), registers its
hooks under that name (trainers/verl/adapter.py) and re-exports ``compute_score``.
verl imports it by module name in every process that imports verl when
``VERL_USE_EXTERNAL_MODULES=<module>`` is set (verl/__init__.py in 0.9.1), and loads it
again by path as ``reward.custom_reward_function.path`` (registration is idempotent).
Workers need ``<dir>`` and the POISE checkout on ``PYTHONPATH`` (the launcher sets it,
or ships both as Ray ``py_modules`` to a cluster).

Before writing, ``analyze`` reads the candidate statically (nothing runs): the same
static rules as the sandbox, which ``batch`` fields its ``policy_loss`` reads (functions
it calls included), and its KL constant. A loss that reads ``batch.correct`` or
``batch.valid`` cannot run in verl (see the adapter) and is refused here, before a GPU
is spent; a loss that reads ``batch.group`` gets a warning.
"""
from __future__ import annotations

import ast
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from trainers.source import CandidateError, code_hash, load_module, parse_source
from trainers.verl.adapter import Settings, registered_name

UNAVAILABLE_IN_LOSS = ("correct", "valid")
APPROXIMATED_IN_LOSS = ("group", "group_size", "num_groups")


class PluginError(ValueError):
    """The candidate cannot be trained by verl; the message says why."""


@dataclass
class Analysis:
    name: str                       # the candidate's NAME
    registered: str                 # poise_<slug>_<hash8>
    loss_reads: list[str]           # batch fields its policy_loss reads
    kl_coef: float | None           # KL_COEF when its policy_loss uses ref_logp
    problems: list[str] = field(default_factory=list)   # blocking
    warnings: list[str] = field(default_factory=list)


@dataclass
class Plugin:
    analysis: Analysis
    module: str                     # import name = registered name
    path: Path                      # the generated file
    settings: Settings

    @property
    def name(self) -> str:
        return self.analysis.registered


def analyze(source: str) -> Analysis:
    """Static reading of a candidate for verl (see the module docstring)."""
    from trainers.sandbox import check_source

    problems = list(check_source(source))
    if problems:
        raise PluginError("the candidate fails the static check: " + "; ".join(problems))
    try:
        module = load_module(source)
    except CandidateError as e:
        raise PluginError(f"the candidate does not load: {e}") from None
    name = str(getattr(module, "NAME", "") or "candidate")
    tree = parse_source(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    reads = sorted(_loss_reads(functions)) if "policy_loss" in functions else []
    kl = getattr(module, "KL_COEF", None)
    uses_ref = "policy_loss" in functions and _uses_name(functions, "ref_logp")
    kl_coef = float(kl) if (uses_ref and isinstance(kl, numbers.Real)
                            and not isinstance(kl, bool) and kl > 0) else None
    if "policy_loss" not in functions:  # GRPO's loss, with its KL
        from trainers.baselines import grpo

        kl_coef = grpo.KL_COEF
    out = Analysis(name=name, registered=registered_name(name, source), loss_reads=reads,
                   kl_coef=kl_coef)
    for f in UNAVAILABLE_IN_LOSS:
        if f in reads:
            out.problems.append(
                f"policy_loss reads batch.{f}, which verl 0.9.1 does not pass to policy "
                f"losses; move what needs it into shape_reward or compute_advantages")
    if any(f in reads for f in APPROXIMATED_IN_LOSS):
        out.warnings.append("policy_loss reads batch.group: under verl each row of a "
                            "micro-batch is its own group (no group ids reach the loss)")
    if "step" in reads:
        out.warnings.append("policy_loss reads batch.step: published by the estimator "
                            "through Ray's internal KV")
    if uses_ref and kl_coef is None:
        out.warnings.append("policy_loss uses ref_logp but defines no positive KL_COEF: "
                            "verl passes no ref_logp to losses, so no KL term is trained")
    loss_text = ast.unparse(functions["policy_loss"]) if "policy_loss" in functions else ""
    if kl_coef is not None and "KL_COEF * _schedule(" in loss_text:
        out.warnings.append("a schedule on the KL coefficient does not carry over: verl's "
                            "KL term uses the constant KL_COEF")
    return out


def _loss_reads(functions: dict[str, ast.FunctionDef]) -> set[str]:
    """Attributes read on the ``batch`` argument by policy_loss and the module functions
    it calls (transitively), found by name."""
    seen, todo, reads = set(), ["policy_loss"], set()
    while todo:
        fn = functions.get(todo.pop())
        if fn is None or fn.name in seen:
            continue
        seen.add(fn.name)
        params = [a.arg for a in fn.args.args]
        batch_names = {"batch"} | ({params[4]} if fn.name == "policy_loss"
                                   and len(params) > 4 else set())
        for node in ast.walk(fn):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in batch_names):
                reads.add(node.attr)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                todo.append(node.func.id)
    return reads


def _uses_name(functions: dict[str, ast.FunctionDef], name: str) -> bool:
    fn = functions["policy_loss"]
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(fn))


def plugin_text(source: str, analysis: Analysis, settings: Settings) -> str:
    return f'''"""POISE plugin for verl: candidate {analysis.name!r} (code {code_hash(source)}).

Generated by trainers/verl/plugin.py; do not edit. Registers the candidate's hooks as
verl advantage estimator and policy loss {analysis.registered!r}, and exposes
compute_score for reward.custom_reward_function.
"""
from trainers.verl.adapter import Settings, register_candidate
from trainers.verl.reward import compute_score  # noqa: F401

NAME = {analysis.registered!r}
SETTINGS = Settings(max_length={settings.max_length!r}, total_steps={settings.total_steps!r},
                    run_token={settings.run_token!r}, step_log={settings.step_log!r})
CANDIDATE_SOURCE = {source!r}

CANDIDATE = register_candidate(CANDIDATE_SOURCE, SETTINGS, name=NAME)
'''


def write_plugin(source: str, settings: Settings, out_dir: str | Path) -> Plugin:
    """Analyze ``source`` and write its plugin into ``out_dir``; raises PluginError."""
    analysis = analyze(source)
    if analysis.problems:
        raise PluginError(f"candidate {analysis.name!r} cannot train in verl: "
                          + "; ".join(analysis.problems))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{analysis.registered}.py"
    tmp = path.with_suffix(".py.tmp")
    tmp.write_text(plugin_text(source, analysis, settings))
    tmp.replace(path)
    return Plugin(analysis=analysis, module=analysis.registered, path=path, settings=settings)
