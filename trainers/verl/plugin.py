"""Write the plugin module that puts one candidate into verl, on every Ray worker.

The plugin is one generated, self-contained file ``<dir>/poise_<slug>_<hash8>.py``: the
text of trainers/verl/runtime.py (standard library, numpy, torch and verl only: no POISE
import), then a tail that embeds the candidate's source (unchanged: the text the local
trainer runs) and GRPO's as the fallback for omitted hooks, registers both hooks with
verl's registries under that name, and exposes ``compute_score``. verl imports it by
module name in every process that imports verl when ``VERL_USE_EXTERNAL_MODULES=<module>``
is set (verl/__init__.py in 0.9.1), and loads it again by path as
``reward.custom_reward_function.path``; that second copy hands everything to the first
(the module imported by name), so a candidate is registered once per process. Workers
need only ``<dir>`` on ``PYTHONPATH`` (the launcher sets it, or ships it as the Ray job's
working_dir); ``python -m memory.export CANDIDATE --verl DIR`` writes the same file for a
person who runs plain verl.

Before writing, ``analyze`` reads the candidate statically (nothing runs): the same
static rules as the sandbox, which ``batch`` fields its ``policy_loss`` reads (functions
it calls included), and whether it uses ``ref_logp`` (then the launcher has verl compute
reference log-probs, with verl's own KL term at coefficient 0: the candidate's KL is the
one that trains).
"""
from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field
from pathlib import Path

from trainers.source import CandidateError, code_hash, load_module, parse_source
from trainers.verl.adapter import Settings, registered_name

GROUP_FIELDS_IN_LOSS = ("group", "group_size", "num_groups", "select")


class PluginError(ValueError):
    """The candidate cannot be trained by verl; the message says why."""


@dataclass
class Analysis:
    name: str                       # the candidate's NAME
    registered: str                 # poise_<slug>_<hash8>
    loss_reads: list[str]           # batch fields its policy_loss reads
    uses_ref: bool                  # its policy_loss (or GRPO's, when omitted) reads ref_logp
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
    if "policy_loss" in functions:
        reads = sorted(_loss_reads(functions))
        uses_ref = _uses_name(functions, "ref_logp")
    else:  # GRPO's loss, with its KL term
        reads, uses_ref = [], True
    out = Analysis(name=name, registered=registered_name(name, source), loss_reads=reads,
                   uses_ref=uses_ref)
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


INLINE_MARK = "from trainers.verl.grading import *"


def _without_docstring(module) -> str:
    text = inspect.getsource(module)
    doc = parse_source(text).body[0]  # under the parse lock: launches run in threads
    return "".join(text.splitlines(keepends=True)[doc.end_lineno:]).lstrip("\n")


def runtime_text() -> str:
    """trainers/verl/runtime.py without its docstring (the plugin has its own), with
    trainers/verl/grading.py inlined where runtime imports it: no POISE import left."""
    from trainers.verl import grading, runtime

    grading_text = _without_docstring(grading)
    grading_text = grading_text[:grading_text.rindex("__all__ = [")].rstrip() + "\n"
    lines = _without_docstring(runtime).splitlines(keepends=True)
    marked = [i for i, line in enumerate(lines) if line.startswith(INLINE_MARK)]
    if len(marked) != 1:
        raise RuntimeError("trainers/verl/runtime.py must import grading exactly once")
    lines[marked[0]] = grading_text
    return "".join(lines)


def runtime_contract() -> str:
    """The hook contract part of runtime.py's docstring, as written in the source (escapes
    kept), for the plugin's own docstring: a reader of the plugin has no POISE."""
    from trainers.verl import runtime

    text = inspect.getsource(runtime)
    doc = parse_source(text).body[0]  # under the parse lock: launches run in threads
    raw = "".join(text.splitlines(keepends=True)[doc.lineno - 1:doc.end_lineno])
    body = raw.strip()[3:-3]
    start = body.find("The hook contract under verl")
    return body[start:].strip() if start >= 0 else body.strip()


def plugin_text(source: str, analysis: Analysis, settings: Settings) -> str:
    from trainers.baselines import baseline_source

    return f'''"""POISE plugin for verl 0.9.1: candidate {analysis.name!r} (code {code_hash(source)}).

Generated by POISE (trainers/verl/plugin.py); self-contained: it imports the standard
library, numpy, torch and verl only. It registers the candidate's advantage estimator
and policy loss as {analysis.registered!r} in verl's registries and exposes
``compute_score`` for ``reward.custom_reward_function``. Load it in every verl process
with ``VERL_USE_EXTERNAL_MODULES={analysis.registered}`` (its directory on PYTHONPATH).

{runtime_contract()}
"""
{runtime_text()}

# ----------------------------------------------------------------------------- the candidate

import importlib as _importlib

NAME = {analysis.registered!r}
SETTINGS = Settings(max_length={settings.max_length!r}, total_steps={settings.total_steps!r},
                    run_token={settings.run_token!r}, step_log={settings.step_log!r},
                    group_size={settings.group_size!r})
CANDIDATE_SOURCE = {source!r}
FALLBACK_SOURCE = {baseline_source("grpo")!r}


def _canonical():
    """This file as imported by its module name, when this copy was loaded under another
    name (verl's reward loader loads it by path): that copy registers and grades."""
    if __name__ == NAME:
        return None
    try:
        return _importlib.import_module(NAME)
    except ImportError:
        return None


_CANONICAL = _canonical()
if _CANONICAL is not None:
    CANDIDATE = _CANONICAL.CANDIDATE
    compute_score = _CANONICAL.compute_score  # noqa: F811
else:
    CANDIDATE = register_candidate(CANDIDATE_SOURCE, SETTINGS, NAME, FALLBACK_SOURCE)
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
