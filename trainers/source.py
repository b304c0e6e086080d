"""Candidate source text, without torch: parsing, compiling, hashing, resolving a name or
file to source, the contract's error, and loading source into a module.

Parsing an LLM reply, the static check and the archive need these; none of them imports
torch (``trainers.algorithm``, the contract's tensors and checks, does). ``load_module``
executes the code: only trusted code (the shipped baselines) or inside the sandbox.
"""
from __future__ import annotations

import ast
import hashlib
import threading
import types
from pathlib import Path

HOOKS = ("shape_reward", "compute_advantages", "policy_loss")

# CPython 3.11's parser is not thread-safe: two threads parsing at once can fail with
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905), and
# the graph verifies candidates in parallel threads. Every parse in the process goes
# through this lock.
PARSE_LOCK = threading.Lock()


def parse_source(source: str, filename: str = "<candidate>") -> ast.Module:
    """``ast.parse`` under the process-wide parse lock."""
    with PARSE_LOCK:
        return ast.parse(source, filename)


def compile_source(source: str, filename: str = "<candidate>"):
    """``compile(..., "exec")`` under the process-wide parse lock."""
    with PARSE_LOCK:
        return compile(source, filename, "exec")


class CandidateError(Exception):
    """A candidate broke the contract. ``hook`` names the hook (or "load")."""

    def __init__(self, hook: str, message: str):
        super().__init__(f"{hook}: {message}")
        self.hook = hook
        self.message = message

    def __reduce__(self):  # picklable across process boundaries (sandbox, Ray)
        return (CandidateError, (self.hook, self.message))


# ----------------------------------------------------------------------------- loading

def load_module(source: str | Path, *, name: str | None = None) -> types.ModuleType:
    """Turn candidate source text, or the path of a .py file, into a module.

    The module is executed in a fresh namespace (not registered in ``sys.modules``).
    This runs the code in the calling process: use it on trusted code (the shipped
    baselines) or inside the sandbox, never on unverified LLM code in the agent.
    """
    text, origin = read_source(source)
    try:
        code = compile_source(text, origin)
    except SyntaxError as e:
        raise CandidateError("load", f"syntax error at line {e.lineno}: {e.msg}") from None
    module = types.ModuleType(name or "poise_candidate")
    module.__file__ = origin
    try:
        exec(code, module.__dict__)
    except Exception as e:  # the candidate's own top-level code failed
        raise CandidateError("load", f"module raised {type(e).__name__}: {e}") from None
    return module


def read_source(source: str | Path) -> tuple[str, str]:
    if isinstance(source, Path) or (isinstance(source, str) and source.endswith(".py")
                                    and "\n" not in source):
        path = Path(source)
        if not path.is_file():
            raise CandidateError("load", f"no such candidate file: {path}")
        return path.read_text(), str(path)
    return str(source), "<candidate>"


def code_hash(source: str) -> str:
    """Hash of the source with trailing whitespace and blank lines normalized away."""
    lines = [ln.rstrip() for ln in source.strip().splitlines()]
    return hashlib.sha256("\n".join(ln for ln in lines if ln).encode()).hexdigest()[:16]


def resolve_algorithm(spec: str | Path) -> tuple[str, str]:
    """A shipped baseline (module name ``dr_grpo`` or its slug ``dr-grpo``) or a candidate
    .py file -> (label, source text); the label is the module name or the file's stem."""
    from trainers.baselines import BASELINES, baseline_source

    key = str(spec).strip()
    if key.replace("-", "_") in BASELINES:
        key = key.replace("-", "_")
        return key, baseline_source(key)
    path = Path(key)
    if path.suffix == ".py":
        if not path.is_file():
            raise CandidateError("load", f"no such candidate file: {path}")
        return path.stem, path.read_text()
    raise CandidateError("load", f"unknown algorithm {key!r}: expected one of "
                         f"{', '.join(BASELINES)} or a path to a .py candidate file")


__all__ = ["HOOKS", "CandidateError", "parse_source", "compile_source", "load_module",
           "code_hash", "read_source", "resolve_algorithm"]
