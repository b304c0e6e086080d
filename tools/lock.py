"""The project's lock: every package of the whole dependency tree pinned, in constraints.txt.

    python tools/lock.py              # refresh: re-resolve, keeping pins that still fit
    python tools/lock.py --upgrade    # refresh: newest versions pyproject.toml's ranges allow
    python tools/lock.py --check      # drift: does constraints.txt still match pyproject.toml?

The lock is made by `uv pip compile` from pyproject.toml's ranges, with every extra, for
CPython 3.11 (the machines' Python). Why uv rather than pip-tools or pip's own
`--dry-run --report`: both of those run pip's resolver, which backtracked for more than
25 minutes over this tree (verl, ray, langchain and their transitive pins) without
finishing; uv resolves it in seconds and writes the same requirements-file format that
pip reads, so the installs themselves stay plain pip. `/opt/wheels` is where these
machines keep the CPU build of torch 2.13.0, so the lock pins `torch==2.13.0+cpu`
(PyPI's `torch==2.13.0` is a CUDA build of several GB).

Installs use the lock as pip constraints, which pins every package that gets installed
and leaves out extras not asked for:

    pip install torch==2.13.0 && pip install -c constraints.txt -e ".[dev,verl,ray,tracking,trl]"

`--check` (also a test, tests/test_lock.py) fails when a dependency of pyproject.toml (main
or any extra) is not pinned in the lock, or pinned at a version outside its range, or when
the lock pins as a direct dependency a package that pyproject.toml no longer lists.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = "constraints.txt"
PYTHON = "3.11"
FIND_LINKS = "/opt/wheels"
SELF = "poise (pyproject.toml)"


@dataclass
class Pin:
    version: Version
    via: list[str] = field(default_factory=list)


def read_lock(text: str) -> dict[str, Pin]:
    """`name==version` lines and their `# via` annotations (uv / pip-tools format)."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
        if m:
            current = pins[canonicalize_name(m.group(1))] = Pin(Version(m.group(3)))
            continue
        if current is None:
            continue
        via = re.match(r"^\s+#\s+(?:via\s+)?(\S.*)$", line)
        if via and via.group(1) != "via":
            current.via.append(via.group(1).strip())
    return pins


def direct_requirements(pyproject: dict) -> list[tuple[str, Requirement]]:
    """(where, requirement) for the main dependencies and every optional extra."""
    project = pyproject["project"]
    out = [("dependencies", Requirement(r)) for r in project.get("dependencies", [])]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        out += [(f"extra '{extra}'", Requirement(r)) for r in reqs]
    return out


def drift(pyproject_text: str, lock_text: str) -> list[str]:
    """Each way the lock and pyproject.toml disagree, one line each; [] when they agree."""
    reqs = direct_requirements(tomllib.loads(pyproject_text))
    pins = read_lock(lock_text)
    problems = []
    direct = set()
    for where, req in reqs:
        name = canonicalize_name(req.name)
        direct.add(name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"pyproject.toml ({where}) needs {req} but {LOCK} does not pin "
                            f"{req.name}")
        elif req.specifier and not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"pyproject.toml ({where}) needs {req} but {LOCK} pins "
                            f"{req.name}=={pin.version}")
    for name, pin in sorted(pins.items()):
        if SELF in pin.via and name not in direct:
            problems.append(f"{LOCK} pins {name}=={pin.version} for pyproject.toml, which no "
                            f"longer lists it")
    return problems


def compile_lock(upgrade: bool) -> int:
    uv = shutil.which("uv")
    if uv is None:
        print("error: refreshing the lock needs uv: pip install -c constraints.txt uv",
              file=sys.stderr)
        return 2
    cmd = [uv, "pip", "compile", "pyproject.toml", "--all-extras",
           "--python-version", PYTHON, "--find-links", FIND_LINKS,
           "--custom-compile-command", "python tools/lock.py", "-o", LOCK]
    if upgrade:
        cmd.append("--upgrade")
    return subprocess.call(cmd, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/lock.py", description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="fail if the lock has drifted")
    g.add_argument("--upgrade", action="store_true", help="re-resolve to the newest versions")
    args = ap.parse_args(argv)
    if not args.check:
        return compile_lock(args.upgrade)
    problems = drift((ROOT / "pyproject.toml").read_text(), (ROOT / LOCK).read_text())
    for p in problems:
        print(f"lock drift: {p}", file=sys.stderr)
    if problems:
        print("refresh the lock with: python tools/lock.py", file=sys.stderr)
        return 1
    print(f"{LOCK} matches pyproject.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
