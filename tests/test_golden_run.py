"""A seeded tiny run gives the same archive as the code it was recorded with.

The record (tests/data/golden_run.json) was first written by the code before the round-2
redesign (commit 81afd18's loop, recorded with ``python tests/test_golden_run.py``) and
re-recorded three times: when testbed v2 changed the task vocabulary and corpus (so every tiny
warm start changed; docs/testbed.md), and when testbed v3 changed the corpus defaults
and the response budget (curves, reflections, lengths and validity changed; every name,
status, parent, code hash and fitness stayed the same), and when the builtin catalog gained
the solved_length reward gene (the scientist's draws among reward kinds changed, so the
three proposed candidates changed; the GRPO seed's entry and the compare part stayed the
same), and when the scientist began steering the length coefficient under a length
contract (one proposal's hypothesis gained that reason; every genome stayed the same),
and when the directive began to weigh as much as the most repeated reflection tag, with
the tags capped (two of the three proposals now carry the length term solved_length; the
GRPO seed's entry and the compare part stayed the same):
a loop run on the builtin agents and a
``trainers.local.compare`` of two baselines, both on the tiny testbed. A refactor that keeps behaviour keeps every name, status, parent,
code hash, fitness, curve and reflection. Training is deterministic for one torch build
on one CPU kernel family; where this machine's torch or CPU capability differs from the
record's, the numbers may differ in the last bits and the test says so and skips.

The record is of the round-1 engine, which the trainer keeps as
``TrainConfig(engine="reference")``: this test runs the tiny config with that engine
(tests/data/tiny_context_reference.json), so the kept reference path stays the code it
was. The fast engine (trainers/local/engine.py, the default) samples differently; it is
held to the reference by tests/test_engine.py and by ``bench --engines``.
"""
from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from run_checks import candidates, run_to_end

TINY = Path(__file__).parent / "data" / "tiny_context_reference.json"

GOLDEN = Path(__file__).parent / "data" / "golden_run.json"
RUN_ARGS = ["--directive", "accurate and concise", "--candidates", "3", "--width", "2",
            "--seed", "5", "--config", str(TINY), "--no-smoke"]
COMPARE_ALGORITHMS = "grpo,dr_grpo"


def _platform() -> dict:
    import torch

    return {"torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _loop_record(home: Path) -> list[dict]:
    proc = run_to_end(home, *RUN_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    con = sqlite3.connect(home / "archive.db")
    try:
        code = {cid: hashlib.sha256((c or "").encode()).hexdigest()[:16]
                for cid, c in con.execute("select id, code from candidate")}
        proposal = {cid: p for cid, p in con.execute("select id, proposal from candidate")}
        reflection = {cid: (t, tags) for cid, t, tags in con.execute(
            "select candidate_id, text, tags from reflection")}
    finally:
        con.close()
    return [{"name": r["name"], "generation": r["generation"], "slot": r["slot"],
             "status": r["status"], "error": r["error"], "parents": r["parents"],
             "fitness": r["fitness"], "code": code[r["id"]], "proposal": proposal[r["id"]],
             "curves": [e["curves"] for e in r["evaluations"]],
             "reflection": reflection.get(r["id"])}
            for r in sorted(candidates(home), key=lambda r: (r["generation"], r["slot"]))]


def _compare_record(tmp: Path) -> list[dict]:
    script = (
        "import json, sys\n"
        "from trainers.local.compare import main\n"
        "from trainers.local.trainer import train_config_from_dict\n"
        "from trainers.local.warmstart import warm_config_from_dict\n"
        "from evals.tasks import VOCAB_SIZE\n"
        f"ctx = json.load(open({str(TINY)!r}))\n"
        "warm = dict(ctx['warm_config']); warm['model'] = {'vocab_size': VOCAB_SIZE, "
        "**warm['model']}\n"
        "rows = main(sys.argv[1:], train_config=train_config_from_dict("
        "ctx['train_overrides']), warm_config=warm_config_from_dict(warm))\n")
    out = tmp / "cmp"
    proc = subprocess.run([sys.executable, "-c", script, "--algorithms", COMPARE_ALGORITHMS,
                           "--seeds", "2", "--out", str(out), "--home", str(tmp / "home"),
                           "--quiet", "--workers", "2"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "compare.json").read_text())["results"]
    keep = ("algorithm", "seeds", "overall_mean", "families", "mean_length", "validity",
            "validity_auc")
    return [{k: r.get(k) for k in keep} for r in rows]


def record(tmp: Path) -> dict:
    """The record, as JSON reads it back."""
    return json.loads(json.dumps({"platform": _platform(), "loop": _loop_record(tmp / "loop"),
                                  "compare": _compare_record(tmp)}))


@pytest.mark.reliability
def test_a_seeded_tiny_run_gives_the_recorded_archive(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    if golden["platform"] != _platform():
        pytest.skip(f"recorded on {golden['platform']}, this machine is {_platform()}: "
                    "training numbers may differ in the last bits")
    now = record(tmp_path)
    for mine, theirs in zip(now["loop"], golden["loop"]):
        assert _differences(mine, theirs) == [], mine["name"]
    assert len(now["loop"]) == len(golden["loop"])
    assert _differences(now["compare"], golden["compare"]) == []


def _differences(a, b, path: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ: exactly, except floats within the last bits of a
    float32 sum (rel 1e-6, abs 1e-7). Two CPUs of one capability (AMD and Intel AVX512)
    vectorise exp/log reductions differently: entropy and kl_to_start then differ in
    their last bits (seen: 2.2516315 vs 2.2516317), while every sample, reward and
    fitness is identical."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


if __name__ == "__main__":  # record: python tests/test_golden_run.py
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        GOLDEN.write_text(json.dumps(record(Path(d)), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
