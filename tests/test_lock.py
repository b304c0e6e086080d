"""The lock (constraints.txt) pins the whole tree that pyproject.toml asks for."""
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import lock  # noqa: E402


def _pyproject():
    return (REPO / "pyproject.toml").read_text()


def _lock():
    return (REPO / "constraints.txt").read_text()


def test_the_committed_lock_matches_pyproject():
    assert lock.drift(_pyproject(), _lock()) == []


def test_every_extra_is_locked_and_torch_is_the_cpu_build():
    import tomllib

    pins = lock.read_lock(_lock())
    extras = tomllib.loads(_pyproject())["project"]["optional-dependencies"]
    assert {"dev", "verl", "ray"} <= set(extras)
    for reqs in extras.values():
        for r in reqs:
            assert canonicalize_name(Requirement(r).name) in pins, r
    assert str(pins["torch"].version) == "2.13.0+cpu"
    assert not any(name.startswith("nvidia-") for name in pins)   # no CUDA build's deps
    # transitive pins are there too, with who needs them
    assert pins["langgraph-checkpoint-sqlite"].via == [lock.SELF]
    assert "langgraph" in pins["langgraph-checkpoint"].via


def test_a_dependency_added_to_pyproject_but_not_the_lock_is_drift():
    text = _pyproject().replace('"rich>=13.7",', '"rich>=13.7",\n    "tabulate>=0.9",')
    assert "tabulate" in text
    problems = lock.drift(text, _lock())
    assert len(problems) == 1 and "needs tabulate>=0.9" in problems[0] \
        and "does not pin tabulate" in problems[0]


def test_a_dependency_in_an_extra_out_of_the_locked_range_is_drift():
    text = _pyproject().replace('"pexpect>=4.8"', '"pexpect>=99"')
    problems = lock.drift(text, _lock())
    assert len(problems) == 1 and "extra 'dev'" in problems[0] and "pexpect>=99" in problems[0]


def test_a_direct_pin_pyproject_dropped_is_drift():
    text = _pyproject().replace('    "rich>=13.7",\n', "")
    problems = lock.drift(text, _lock())
    assert any("pins rich==" in p and "no longer lists it" in p for p in problems), problems


def test_the_check_command_fails_with_the_refresh_command(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "lock.py").write_text((REPO / "tools" / "lock.py").read_text())
    (tmp_path / "constraints.txt").write_text(_lock())
    (tmp_path / "pyproject.toml").write_text(
        _pyproject().replace('"rich>=13.7",', '"rich>=13.7",\n    "tabulate>=0.9",'))
    out = subprocess.run([sys.executable, "tools/lock.py", "--check"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "lock drift: pyproject.toml (dependencies) needs tabulate>=0.9" in out.stderr
    assert "refresh the lock with: python tools/lock.py" in out.stderr
    (tmp_path / "pyproject.toml").write_text(_pyproject())
    out = subprocess.run([sys.executable, "tools/lock.py", "--check"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "matches" in out.stdout
