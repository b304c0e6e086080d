"""The sandbox's static check: the candidate's AST, in the calling process, nothing
executed (see ``check_source``). The dynamic guard in the child holds even where this
check is skipped (``run_in_sandbox(static=False)``)."""
from __future__ import annotations

import ast
import re

from trainers.source import parse_source

ALLOWED_IMPORTS = ("torch", "math", "numpy")
MAX_SOURCE_CHARS = 200_000
FORBIDDEN_CALLS = {"__import__", "eval", "exec", "open", "compile", "globals", "locals",
                   "vars", "input", "breakpoint", "exit", "quit", "help", "setattr",
                   "delattr", "memoryview"}
# Modules (and exits) a candidate has no business naming, as a name or an attribute
# (``torch.os``). Common words (signal, io, resource) are left to the dynamic guard.
FORBIDDEN_NAMES = {"os", "sys", "subprocess", "socket", "shutil", "builtins", "importlib",
                   "ctypes", "multiprocessing", "threading", "SystemExit",
                   "KeyboardInterrupt", "GeneratorExit"}
# Attributes that read or write files, load native code, start processes or compile.
FORBIDDEN_ATTRS = FORBIDDEN_NAMES | {
    "pickle", "marshal", "pathlib", "tempfile", "gc", "pty", "urllib", "requests",
    "load", "save", "savez", "savez_compressed", "loadtxt", "savetxt", "genfromtxt",
    "fromfile", "tofile", "memmap", "from_file", "hub", "cpp_extension", "ctypeslib",
    "distributed", "compile", "library", "ops", "load_library", "system", "popen",
    "package", "f2py", "distutils"}
# Frame and traceback introspection reaches the trusted caller's globals.
INTROSPECTION_ATTRS = {"gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "ag_code",
                       "tb_frame", "tb_next", "f_back", "f_globals", "f_locals",
                       "f_builtins", "f_code"}
ALLOWED_DUNDERS = {"__init__", "__name__", "__doc__", "__all__"}
_DUNDER = re.compile(r"^__\w+__$")


def check_source(source: str) -> list[str]:
    """Every rule the source breaks, as "line N: what, and what to do" messages."""
    if not isinstance(source, str) or not source.strip():
        return ["the candidate source is empty"]
    if len(source) > MAX_SOURCE_CHARS:
        return [f"the candidate source is {len(source)} characters; the limit is "
                f"{MAX_SOURCE_CHARS}"]
    try:
        tree = parse_source(source)
    except SyntaxError as e:
        return [f"line {e.lineno}: syntax error: {e.msg}"]
    except (ValueError, RecursionError, MemoryError) as e:
        return [f"the candidate source does not parse: {type(e).__name__}"]
    checker = _StaticChecker()
    checker.visit(tree)
    return list(dict.fromkeys(checker.problems))


class _StaticChecker(ast.NodeVisitor):
    def __init__(self):
        self.problems: list[str] = []
        self.modules: set[str] = set()  # names bound to imported modules or their members

    def flag(self, node: ast.AST, message: str) -> None:
        self.problems.append(f"line {getattr(node, 'lineno', '?')}: {message}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)
            self.modules.add(alias.asname or alias.name.split(".")[0])
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.flag(node, "relative imports are not allowed: a candidate may import only "
                            f"{', '.join(ALLOWED_IMPORTS)}")
        else:
            self._check_module(node, node.module or "")
        for alias in node.names:
            if alias.name in FORBIDDEN_ATTRS or _DUNDER.match(alias.name):
                self.flag(node, f"`from {node.module} import {alias.name}` is not allowed")
            self.modules.add(alias.asname or alias.name)
        self.generic_visit(node)

    def _check_module(self, node: ast.AST, name: str) -> None:
        if name.split(".")[0] not in ALLOWED_IMPORTS:
            self.flag(node, f"imports {name!r}: a candidate may import only "
                            f"{', '.join(ALLOWED_IMPORTS)} (and their submodules)")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in FORBIDDEN_CALLS:
            self.flag(node, f"uses `{node.id}`, which candidate code may not use")
        elif node.id in FORBIDDEN_NAMES:
            self.flag(node, f"uses `{node.id}`: no system, process, file or network "
                            "access (and no exiting) in candidate code")
        elif _DUNDER.match(node.id) and node.id not in ALLOWED_DUNDERS:
            self.flag(node, f"uses `{node.id}`: dunder names are not allowed")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if _DUNDER.match(attr) and attr not in ALLOWED_DUNDERS:
            self.flag(node, f"accesses `.{attr}`: dunder attributes are not allowed")
        elif attr in INTROSPECTION_ATTRS:
            self.flag(node, f"accesses `.{attr}`: frame and traceback introspection is not "
                            "allowed in candidate code")
        elif attr in FORBIDDEN_ATTRS:
            self.flag(node, f"accesses `.{attr}`: no file, process, native-code or "
                            "compiler access in candidate code")
        elif attr.startswith("_") and self._root(node) in self.modules:
            self.flag(node, f"accesses `.{attr}` of a library module: private internals "
                            "are not allowed")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        fn = node.func
        if isinstance(fn, ast.Name) and fn.id in ("getattr", "hasattr") and len(node.args) >= 2:
            name = node.args[1]
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                self.flag(node, f"`{fn.id}` with a computed attribute name is not allowed; "
                                "use the attribute directly")
            elif name.value.startswith("_"):
                self.flag(node, f"`{fn.id}(..., {name.value!r})`: private and dunder "
                                "attributes are not allowed")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and _DUNDER.match(node.value) \
                and node.value not in ALLOWED_DUNDERS:
            self.flag(node, f"the string {node.value!r} names a dunder attribute, which "
                            "candidate code may not reach")

    def _check_targets(self, node: ast.AST, targets: list[ast.expr]) -> None:
        for target in targets:
            if isinstance(target, (ast.Tuple, ast.List)):
                self._check_targets(node, list(target.elts))
            elif isinstance(target, ast.Starred):
                self._check_targets(node, [target.value])
            elif isinstance(target, (ast.Attribute, ast.Subscript)) \
                    and self._root(target, through_calls=False) in self.modules:
                self.flag(node, f"assigns to `{ast.unparse(target)}`: modifying library "
                                "modules (monkeypatching) is not allowed")

    def visit_Assign(self, node: ast.Assign) -> None:
        self._check_targets(node, node.targets)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_targets(node, [node.target])
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_targets(node, [node.target])
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        self._check_targets(node, node.targets)
        self.generic_visit(node)

    @staticmethod
    def _root(node: ast.AST, through_calls: bool = True) -> str | None:
        """The name at the root of ``a.b[c].d`` (and of ``a.b().c`` with through_calls)."""
        chain = (ast.Attribute, ast.Subscript, ast.Call) if through_calls else (
            ast.Attribute, ast.Subscript)
        while isinstance(node, chain):
            node = node.func if isinstance(node, ast.Call) else node.value
        return node.id if isinstance(node, ast.Name) else None


__all__ = ["check_source", "ALLOWED_IMPORTS"]
