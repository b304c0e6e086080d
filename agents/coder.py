"""The coder: writes the candidate module for a proposal, and rewrites it with the
verifier's feedback on a retry.

``write_code`` is the role: the seed's code is its baseline's source; a proposal that
carries a genome is that genome rendered (the builtin coder, whether or not a model is
configured: re-rendering is exact); any other proposal is written by the LLM coder.
``write_code_llm`` mirrors the builtin ``agents.builtin.coder.write_code``: it returns the
module source. The reply must hold the module in one ```python fence; a module that does
not parse, does not set ``NAME`` to the proposal's name, or defines no hook goes back to
the model with what was wrong (bounded repairs, then ``AgentOutputError``). Whether the
code is safe and correct is the verifier's job, not this one's.
"""
from __future__ import annotations

import ast
from typing import Any, Sequence

from agents.prompts import messages, quote_data, quote_text
from agents.proposal import Proposal
from agents.scientist import MAX_CODE_CHARS, cut, proposal_view
from agents.structured import ReplyError, extract_python_code, invoke_parsed
from trainers.source import HOOKS, parse_source

MAX_FEEDBACK = 8             # verifier messages shown on a retry
MAX_FEEDBACK_CHARS = 2_000   # per message (tracebacks are long)

RETRY_HINT = ("Reply again with the complete module in one ```python fenced block, and "
              "nothing else.")


# Trim levels, most to least: (parent code, mate code, own failed code, feedback items)
LEVELS = ((MAX_CODE_CHARS, 8000, MAX_CODE_CHARS, MAX_FEEDBACK), (6000, 4000, 8000, 4),
          (3000, 2000, 6000, 2), (1200, 800, 4000, 1))


def write_code(model: Any | None, proposal: Proposal, parent_code: str,
               feedback: Sequence[str] | None = None, *, previous_code: str | None = None,
               mate: tuple[str, str] | None = None, budget: Any = None,
               backend: str = "") -> str:
    """The candidate module for ``proposal`` (see the module docstring for who writes
    it). A proposal without a genome and no coder model is a ``ValueError``."""
    if proposal.kind == "seed":
        from trainers.baselines import baseline_source

        return baseline_source(proposal.name)
    if proposal.genome is not None:
        from agents.builtin.coder import write_code as render

        return render(proposal)
    if model is None:
        raise ValueError(f"{proposal.name} has no genome to render and no coder model is "
                         "configured to write it")
    return write_code_llm(model, proposal, parent_code, feedback,
                          previous_code=previous_code, mate=mate, budget=budget,
                          backend=backend)


def write_code_llm(model: Any, proposal: Any, parent_code: str,
                   feedback: Sequence[str] | None = None, *, max_repairs: int = 2,
                   previous_code: str | None = None, mate: tuple[str, str] | None = None,
                   budget: Any = None, backend: str = "") -> str:
    """The candidate module implementing ``proposal`` (a ``Proposal`` or its state
    dict), starting from ``parent_code``.
    ``feedback``: the verifier's findings on the previous attempt, ``previous_code``
    that attempt's module (a repair fixes it); ``mate``: (name, code) of the reference a
    crossover combines with the parent."""
    from agents.backend import describe
    from agents.budget import ask

    view = proposal_view(proposal)
    name = str(view.get("name") or "")
    if not name:
        raise ValueError("write_code_llm: the proposal has no name")

    def build(level: int) -> list:
        parent_chars, mate_chars, own_chars, n_feedback = LEVELS[level]
        return messages(
            "coder", proposal=quote_data("proposal", [view]),
            backend=backend or describe(None),
            parent_code=quote_text("parent_code", cut(parent_code, parent_chars),
                                   lang="python"),
            mate_code=_mate_section(mate, mate_chars),
            feedback=_feedback_section(feedback, previous_code, own_chars, n_feedback))

    return ask(build, len(LEVELS), budget, f"coder({name})", lambda prompt, b: invoke_parsed(
        model, prompt, lambda text: _parse_module(text, name), what=f"coder({name})",
        retry_hint=RETRY_HINT, max_repairs=max_repairs, budget=b))


def _mate_section(mate: tuple[str, str] | None, limit: int) -> str:
    if not mate:
        return ""
    mate_name, code = mate
    return (f"The proposal is a crossover: it combines the parent with {mate_name}. "
            f"{mate_name}'s module (quoted data):\n"
            + quote_text("mate_code", cut(code, limit), lang="python"))


def _feedback_section(feedback: Sequence[str] | None, previous_code: str | None = None,
                      code_chars: int = MAX_CODE_CHARS, n: int = MAX_FEEDBACK) -> str:
    if not feedback:
        return ""
    items = [cut(str(f), MAX_FEEDBACK_CHARS) for f in list(feedback)[:n]]
    own = ("Your previous module, the one that failed (quoted data):\n"
           + quote_text("previous_code", cut(previous_code, code_chars), lang="python")
           + "\n\n") if previous_code else ""
    return (own + "It failed verification. The verifier's findings (quoted data) follow; "
            "fix every one and return the whole corrected module:\n"
            + quote_data("verifier_feedback", items))


def _parse_module(text: str, name: str) -> str:
    code = extract_python_code(text)
    tree = parse_source(code)
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    if not defined & set(HOOKS):
        raise ReplyError(f"the module defines none of the hooks ({', '.join(HOOKS)}); "
                         "define at least the ones the proposal changes")
    names = [_constant(n.value) for n in tree.body if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "NAME" for t in n.targets)]
    if not names:
        raise ReplyError(f'the module must set NAME = "{name}" at top level')
    if names[-1] != name:
        raise ReplyError(f'NAME is {_show(names[-1])}; it must be exactly "{name}"')
    return code


def _show(value: Any) -> str:
    try:
        return cut(repr(value), 200)
    except ValueError:  # an int too long for str() (sys.get_int_max_str_digits)
        return f"a {type(value).__name__} constant"


def _constant(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    try:
        return ast.unparse(node)
    except RecursionError:  # a deeply nested expression: it is not the name either way
        return "(a deeply nested expression)"


__all__ = ["write_code", "write_code_llm"]
