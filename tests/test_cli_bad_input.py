"""Bad user input for every command, as a person types it: one clear line on stderr,
exit code 2, no traceback, and nothing written half-way (the files under the case's
directory are byte-for-byte what they were; no run row is added).

Commands: graph.run, memory.query, memory.show, memory.export, memory.reindex, trainers.local.compare,
trainers.verl.launcher, trainers.verl.data. A missing optional extra is simulated by
tests/hide_modules/sitecustomize.py, which makes the extra's modules unimportable.
Each case is a subprocess in its own directory; the module fixture runs them three at
a time (each is mostly interpreter start-up and imports) and the tests read the results.
No network: the "unreachable" servers are closed ports on 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fakes import closed_port

ROOT = Path(__file__).resolve().parents[1]
SCRUB = ("POISE_HOME", "POISE_DB_URL", "POISE_MODEL", "CHROMA_HOST", "CHROMA_PORT",
         "OPENAI_API_KEY", "OPENAI_BASE_URL", "LANGSMITH_TRACING")
ROOT_USER = os.geteuid() == 0
TIMEOUT_S = 300


@dataclass
class Case:
    module: str
    args: list[str]                      # "{home}" / "{dir}" are filled in per case
    message: str                         # a fragment of the one line on stderr
    home: str = "missing"                # missing | file | under_file | readonly |
    #                                      archive | corrupt
    env: dict = field(default_factory=dict)


DIRECTIVE = ["--directive", "accurate"]
CLOSED = str(closed_port())
NO_CHROMA = {"CHROMA_HOST": "127.0.0.1", "CHROMA_PORT": CLOSED}
NO_VERL = {"POISE_TEST_HIDE_MODULES": "verl,omegaconf,hydra,pyarrow"}
NO_RAY = {"POISE_TEST_HIDE_MODULES": "ray"}
VERL_EXTRA = "needs the 'verl' extra (missing verl, omegaconf, hydra, pyarrow): " \
    "pip install -c constraints.txt -e \".[verl]\""
CASES = {
    # graph.run
    "run-unknown-flag": Case("graph.run", [*DIRECTIVE, "--bogus"], "unrecognized arguments"),
    "run-empty-directive": Case("graph.run", ["--directive", "  \t "], "directive is empty"),
    "run-home-is-a-file": Case("graph.run", DIRECTIVE, "is not a directory", "file"),
    "run-home-under-a-file": Case("graph.run", DIRECTIVE, "is a file", "under_file"),
    "run-home-read-only": Case("graph.run", DIRECTIVE, "cannot create", "readonly"),
    "run-unknown-run-id": Case("graph.run", ["--resume", "42"], "no run 42", "archive"),
    "run-resume-no-home": Case("graph.run", ["--resume", "1"], "no run 1", "missing"),
    "run-corrupt-archive": Case("graph.run", DIRECTIVE, "cannot read the archive", "corrupt"),
    "run-unknown-gene": Case("graph.run", [*DIRECTIVE, "--without-genes", "validity=bogus"],
                             "unknown gene 'validity=bogus'"),
    "run-genes-with-llm": Case("graph.run", [*DIRECTIVE, "--without-genes", "paper",
                                             "--model", "openai:gpt-4.1-mini"],
                               "--without-genes removes genes from the builtin",
                               env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL":
                                    f"http://127.0.0.1:{CLOSED}/v1"}),
    "run-compose-rate": Case("graph.run", [*DIRECTIVE, "--compose-rate", "1.5"],
                             "'1.5' is not a probability in [0, 1]"),
    "run-compose-rate-config": Case("graph.run", [*DIRECTIVE, "--config", "{dir}/rate.json"],
                                    "compose_rate must be a probability in [0, 1], got 3"),
    "run-selection-setting": Case("graph.run", [*DIRECTIVE, "--config", "{dir}/sel.json"],
                                  "not settings of the 'gpucb' rule"),
    "run-model-no-key": Case("graph.run", [*DIRECTIVE, "--model", "openai:gpt-4.1-mini"],
                             "needs OPENAI_API_KEY"),
    "run-model-server-down": Case(
        "graph.run", [*DIRECTIVE, "--model", "openai:gpt-4.1-mini"],
        "cannot reach the model server", "archive",
        {"OPENAI_BASE_URL": f"http://127.0.0.1:{CLOSED}/v1"}),
    "run-chroma-down": Case("graph.run", DIRECTIVE, "cannot reach the Chroma server",
                            "archive", NO_CHROMA),
    "run-config-unknown-key": Case("graph.run", [*DIRECTIVE, "--config", "{dir}/cfg.json"],
                                   "unknown keys ['bogus']"),
    "run-no-verl-extra": Case("graph.run", [*DIRECTIVE, "--trainer", "verl"],
                              f"--trainer verl {VERL_EXTRA}", env=NO_VERL),
    "run-dry-run-no-verl-extra": Case("graph.run", [*DIRECTIVE, "--trainer", "verl",
                                                    "--dry-run"],
                                      f"--trainer verl {VERL_EXTRA}", "archive", NO_VERL),
    "run-no-ray-extra": Case("graph.run", [*DIRECTIVE, "--executor", "ray"],
                             "--executor ray needs the 'ray' extra (missing ray): "
                             "pip install -c constraints.txt -e \".[ray]\"", env=NO_RAY),
    # trainers.verl.launcher / trainers.verl.data without the verl extra
    "launcher-no-verl-extra": Case("trainers.verl.launcher", ["--dry-run"],
                                   f"python -m trainers.verl.launcher {VERL_EXTRA}",
                                   env=NO_VERL),
    "data-no-verl-extra": Case("trainers.verl.data",
                               ["--input", "{dir}/cfg.json", "--out", "{dir}/out"],
                               f"python -m trainers.verl.data {VERL_EXTRA}", env=NO_VERL),
    # memory.query
    "query-unknown-flag": Case("memory.query", ["entropy", "--bogus"],
                               "unrecognized arguments", "archive"),
    "query-empty": Case("memory.query", ["   "], "empty query", "archive"),
    "query-no-home": Case("memory.query", ["entropy"], "no archive at"),
    "query-home-is-a-file": Case("memory.query", ["entropy"], "no archive at", "file"),
    "query-unknown-run-id": Case("memory.query", ["entropy", "--run", "42"],
                                 "no run with id 42", "archive"),
    "query-corrupt-archive": Case("memory.query", ["entropy"], "cannot read the archive",
                                  "corrupt"),
    "query-chroma-down": Case("memory.query", ["entropy"], "cannot reach the Chroma server",
                              "archive", NO_CHROMA),
    # memory.show
    "show-unknown-flag": Case("memory.show", ["1", "--bogus"], "unrecognized arguments",
                              "archive"),
    "show-empty": Case("memory.show", ["  "], "empty candidate", "archive"),
    "show-no-home": Case("memory.show", ["1"], "no archive at"),
    "show-unknown-candidate": Case("memory.show", ["999"], "no candidate '999'", "archive"),
    "show-corrupt-archive": Case("memory.show", ["1"], "cannot read the archive", "corrupt"),
    # memory.export
    "export-unknown-flag": Case("memory.export", ["grpo", "--verl", "{dir}/x", "--bogus"],
                                "unrecognized arguments"),
    "export-no-dir": Case("memory.export", ["grpo"], "the following arguments are required"),
    "export-no-home": Case("memory.export", ["1", "--verl", "{dir}/x"], "no archive at"),
    "export-unknown-candidate": Case("memory.export", ["999", "--verl", "{dir}/x"],
                                     "no candidate '999'", "archive"),
    "export-no-verl-extra": Case("memory.export", ["grpo", "--verl", "{dir}/x"],
                                 f"python -m memory.export --verl {VERL_EXTRA}",
                                 env=NO_VERL),
    # memory.reindex
    "reindex-unknown-flag": Case("memory.reindex", ["--bogus"], "unrecognized arguments",
                                 "archive"),
    "reindex-no-home": Case("memory.reindex", [], "no archive at"),
    "reindex-home-is-a-file": Case("memory.reindex", [], "no archive at", "file"),
    "reindex-corrupt-archive": Case("memory.reindex", [], "cannot read the archive",
                                    "corrupt"),
    "reindex-chroma-down": Case("memory.reindex", [], "cannot reach the Chroma server",
                                "archive", NO_CHROMA),
    # trainers.local.compare (its --home is the warm-start cache, --out its output)
    "compare-unknown-flag": Case("trainers.local.compare",
                                 ["--algorithms", "grpo", "--out", "{dir}/out", "--bogus"],
                                 "unrecognized arguments"),
    "compare-empty-algorithms": Case("trainers.local.compare",
                                     ["--algorithms", " , ", "--out", "{dir}/out"],
                                     "--algorithms is empty"),
    "compare-out-is-a-file": Case("trainers.local.compare",
                                  ["--algorithms", "grpo", "--out", "{home}"],
                                  "a file is in its place", "file"),
    "compare-home-under-a-file": Case(
        "trainers.local.compare", ["--algorithms", "grpo", "--out", "{dir}/out"],
        "Not a directory", "under_file"),
    # trainers.local.bench: its modes' flags, and the TRL anchor without the trl extra
    "bench-trl-no-extra": Case("trainers.local.bench", ["--out", "{dir}/out", "--trl"],
                               "needs the optional trl extra",
                               env={"POISE_TEST_HIDE_MODULES": "trl"}),
    "bench-trl-not-grpo": Case("trainers.local.bench",
                               ["--out", "{dir}/out", "--trl", "--algorithm", "dr_grpo"],
                               "--trl compares GRPO"),
    "bench-engines-no-seeds": Case("trainers.local.bench",
                                   ["--out", "{dir}/out", "--engines", "--paired-seeds", "0"],
                                   "--paired-seeds and --workers must be >= 1"),
}


def _readonly_home(case_dir: Path) -> Path:
    """A home that cannot be created: under a read-only directory, or (root ignores
    permissions) under /sys, which refuses new entries even to root."""
    if ROOT_USER:
        return Path("/sys") / f"poise-test-home-{os.getpid()}"
    ro = case_dir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro / "home"


def _make_archive(home: Path) -> None:
    """An archive with one run, two candidates and a reflection (SQL only: the rows wait
    un-indexed, so building it loads no embedding model)."""
    from memory.archive import Archive

    with Archive(home, index=False) as a:
        run = a.start_run("accurate", {"context": {}})
        seed = a.add_candidate(run, "grpo", 0, "GRPO.", "NAME = 'grpo'\n", status="evaluated")
        a.add_evaluation(seed, 0, fitness=0.5)
        a.add_reflection(seed, "Entropy collapsed within ten steps.", ["entropy-collapse"])


def _setup(name: str, case: Case, base: Path) -> tuple[Path, Path, list[str]]:
    case_dir = base / name
    case_dir.mkdir()
    home = case_dir / "home"
    if case.home == "file":
        home.write_text("not a directory\n")
    elif case.home == "under_file":
        (case_dir / "plain").write_text("a file\n")
        home = case_dir / "plain" / "home"
    elif case.home == "readonly":
        home = _readonly_home(case_dir)
    elif case.home == "archive":
        _make_archive(home)
    elif case.home == "corrupt":
        home.mkdir()
        (home / "archive.db").write_bytes(b"\x00garbage, not SQLite\xff" * 500)
    (case_dir / "cfg.json").write_text('{"bogus": 1}')
    (case_dir / "sel.json").write_text('{"selection_config": {"bogus": 1}}')
    (case_dir / "rate.json").write_text('{"compose_rate": 3}')
    args = [a.format(home=home, dir=case_dir) for a in case.args]
    if case.module == "trainers.local.compare":
        args += ["--home", str(home)] if case.home == "under_file" else []
    elif case.module == "trainers.verl.data":
        pass
    else:
        args += ["--home", str(home)]
    return case_dir, home, args


def snapshot(path: Path) -> dict[str, str]:
    """Every file and directory under ``path``: relative path -> content hash."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(module: str, args: list[str], env_extra: dict) -> tuple[subprocess.CompletedProcess,
                                                                  float]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    hide = [str(ROOT / "tests" / "hide_modules")] * ("POISE_TEST_HIDE_MODULES" in env_extra)
    env.update(env_extra, COLUMNS="80", PYTHONPATH=os.pathsep.join([*hide, str(ROOT)]))
    began = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:  # reported by the case's test, not the fixture
        proc = subprocess.CompletedProcess(e.cmd, -1, "", f"timed out after {TIMEOUT_S} s")
    return proc, time.monotonic() - began


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_input")
    prepared = {name: _setup(name, case, base) for name, case in CASES.items()}
    before = {name: snapshot(d) for name, (d, _, _) in prepared.items()}

    def one(name):
        case = CASES[name]
        return _run(case.module, prepared[name][2], case.env)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(CASES, pool.map(one, CASES)))
    out = {name: (results[name], before[name], snapshot(prepared[name][0]), prepared[name][1])
           for name in CASES}
    for d, _, _ in prepared.values():  # read-only dirs must be removable by tmp cleanup
        for p in d.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
    return out


@pytest.mark.reliability
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line_exit_2_and_writes_nothing(outcomes, name):
    (proc, seconds), before, after, home = outcomes[name]
    err = proc.stderr.strip()
    assert proc.returncode == 2, (name, proc.returncode, err[-2000:], proc.stdout[-500:])
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert CASES[name].message in err, err
    assert after == before, f"{name} wrote: {set(after.items()) ^ set(before.items())}"
    if CASES[name].home == "readonly":
        assert not home.exists()
    if CASES[name].home == "archive":
        import sqlite3

        con = sqlite3.connect(home / "archive.db")
        assert con.execute("select count(*) from run").fetchone() == (1,)  # no new run
        con.close()
    if "server" in CASES[name].message:  # checked up front, once, quickly
        assert seconds < 60, seconds


@pytest.mark.reliability
def test_show_needs_no_vector_store(tmp_path):
    """memory.show reads SQL only: an unreachable Chroma server does not stop it."""
    _make_archive(tmp_path / "home")
    proc, _ = _run("memory.show", ["grpo", "--json", "--home", str(tmp_path / "home")],
                   NO_CHROMA)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"name": "grpo"' in proc.stdout
