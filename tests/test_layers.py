"""The import structure shows the architecture (DESIGN.md, "Layout").

Layers, top to bottom:
  graph/    entry points and the loop: run, steer, campaign, report
  agents/   the scientist, coder, verifier, analyst (LLM and builtin)
  memory/   the archive, vectors, parent selection
  trainers/ the candidate contract, the sandbox, the local and verl trainers, executors
  evals/    ground libraries: tasks, metrics, stats, objective
Imports only go down (agents and memory are one floor and may use each other); agents
use trainers only through the candidate contract's torch-free source helpers
(``trainers.source``), the sandbox that runs candidate code and the home resolver
(``trainers.home``). No import loops between
modules, apart from type-only imports under ``if TYPE_CHECKING:``. No module over ~600
lines.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("graph", "agents", "memory", "trainers", "evals")
FLOOR = {"graph": 3, "agents": 2, "memory": 2, "trainers": 1, "evals": 0}
AGENTS_MAY_USE = ("trainers.source", "trainers.sandbox", "trainers.baselines", "trainers.home")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, at any depth, except type-only imports."""
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
            else:
                visit(child)
                continue
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name:
                    found.add(name)
    visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def _package_chain(mod: str) -> set[str]:
    parts = mod.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_imports_only_go_down_the_floors():
    bad = []
    for mod, deps in _graph().items():
        floor = FLOOR[mod.split(".")[0]]
        for dep in deps:
            top = dep.split(".")[0]
            if FLOOR[top] > floor:
                bad.append(f"{mod} imports {dep} (a higher floor)")
            if mod.startswith("agents") and top == "trainers" and \
                    not dep.startswith(AGENTS_MAY_USE):
                bad.append(f"{mod} imports {dep} (agents use trainers only through "
                           f"{', '.join(AGENTS_MAY_USE)})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_loops():
    graph = _graph()
    index, low, stack, on, loops = {}, {}, [], set(), []

    def strong(v):  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w in _package_chain(v):  # a module importing its own package's __init__
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                loops.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    assert not loops, loops


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_parsing_candidate_source_and_llm_replies_imports_no_torch():
    reply = ("Here it is:\n```python\nimport torch\nNAME = 'x'\n\n"
             "def shape_reward(batch):\n    return batch.correct.float()\n```")
    code = ("import sys\n"
            "from agents.coder import _parse_module\n"
            "from trainers.source import code_hash, parse_source\n"
            "from trainers.sandbox import check_source\n"
            f"src = _parse_module({reply!r}, 'x')\n"
            "parse_source(src); code_hash(src); print(check_source(src))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_home_is_resolved_in_one_place(monkeypatch, tmp_path):
    from trainers.home import resolve_home

    readers = sorted(str(path.relative_to(ROOT)) for path in _modules().values()
                     if 'environ.get("POISE_HOME"' in path.read_text()
                     or "environ['POISE_HOME']" in path.read_text()
                     or 'environ["POISE_HOME"]' in path.read_text())
    assert readers == ["trainers/home.py"], readers
    monkeypatch.setenv("POISE_HOME", str(tmp_path / "env"))
    assert resolve_home(tmp_path / "given") == tmp_path / "given"
    assert resolve_home() == resolve_home("") == tmp_path / "env"
    monkeypatch.setenv("POISE_HOME", "")
    assert resolve_home() == resolve_home(None) == Path(".poise")


def test_every_parse_goes_through_the_parse_lock():
    """CPython 3.11's AST conversion is not thread-safe (python/cpython#106905: "AST
    constructor recursion depth mismatch", seen in CI when two verl launches wrote their
    plugins at once), so only trainers/source.py may call ``ast.parse`` (under its lock);
    everything else calls ``parse_source``."""
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "trainers" / "source.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "parse" and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == "ast"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], offenders
