"""The loop end to end on a tiny testbed: real LangGraph (SQLite checkpointer), SQLite
archive, Chroma and the embedding model; builtin agents; sandboxed training."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = Path(__file__).parent / "data" / "tiny_context.json"
REPO = Path(__file__).resolve().parents[1]


def _run_cli(home, *args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "graph.run", "--home", str(home), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def _candidates(home):
    con = sqlite3.connect(home / "archive.db")
    try:
        return con.execute("select id, name, status, details from candidate order by id"
                           ).fetchall()
    finally:
        con.close()


def test_run_archives_every_candidate_with_lineage_and_reflection(tmp_path):
    home = tmp_path / "home"
    r = _run_cli(home, "--directive", "accurate and concise", "--candidates", "3",
                 "--config", str(TINY), "--no-smoke", "--quiet",
                 env={"COLUMNS": "240"})   # a wide terminal: rich keeps each log line whole
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((home / "runs" / "1" / "summary.json").read_text())
    assert summary["run_id"] == 1 and summary["directive"] == "accurate and concise"
    cands = summary["candidates"]
    assert len(cands) == 4  # the seed baseline + 3 proposals
    assert cands[0]["name"] == "grpo" and cands[0]["parents"] == []
    assert all(c["parents"] for c in cands[1:])  # every proposal has a parent
    for c in cands:
        assert {"id", "name", "parents", "status", "fitness"} <= set(c)
        if c["status"] != "evaluated":
            assert c["error"], c  # a failure carries its reason
    assert summary["best"] is not None
    shares = summary["time_shares"]
    assert shares["training_and_evaluation"] > 0 and shares["verification_checks"] > 0
    assert abs(sum(shares.values()) - 1) < 1e-6
    # the training jobs' CPU by phase: every archived seed's split, summed; printed
    from trainers.local.trainer import PHASES, phase_shares
    by_phase = summary["training_cpu_by_phase"]
    assert list(by_phase) == list(PHASES)
    from memory.archive import Archive
    with Archive(home) as a:
        cpu = sum(e.wall_time for c in cands for e in a.evaluations(c["id"]))
    assert sum(by_phase.values()) == pytest.approx(cpu, rel=1e-9)
    assert (f"training jobs' CPU ({sum(by_phase.values()):,.0f} CPU-s) by phase: "
            f"{phase_shares(by_phase)}") in " ".join(r.stdout.split())
    # the default engine's decode step, built (or found) before the first job
    assert "engine: compiled (decode step compiled ahead of time)" in r.stdout
    from evals.objective import objective_from_directive, fitness
    from memory.archive import Archive
    spec = objective_from_directive("accurate and concise")
    with Archive(home) as a:
        assert all(a.reflections(c["id"]) for c in cands)
        evaluated = [c for c in cands if c["status"] == "evaluated"]
        assert all(len(a.evaluations(c["id"])) == 1 for c in evaluated)
        assert {a.evaluations(c["id"])[0].backend for c in evaluated} == {"local"}
        vals = {c["id"]: a.evaluations(c["id"])[0].metrics["val"] for c in evaluated}
        # entropy-collapse is judged against GRPO's own fall on this testbed: the
        # reference carries the seed's late/early entropy, and a candidate is tagged
        # only when its own ratio is below both 0.5 and 0.8 x GRPO's
        from agents.builtin.analyst import entropy_ratio
        from graph.imports import reference_of
        grpo_ratio = reference_of(a, cands[0]["id"])["entropy_ratio"]
        assert 0 < grpo_ratio < 2
        for c in evaluated[1:]:
            ratio = entropy_ratio([a.evaluations(c["id"])[0].curves])
            tagged = "entropy-collapse" in a.reflections(c["id"])[-1].tags
            assert tagged == (ratio < 0.5 and ratio < 0.8 * grpo_ratio), (c, ratio, grpo_ratio)
    # Overall and length beside fitness in summary.json, the archive's val means
    for c in evaluated:
        assert (c["overall"], c["length"]) == (pytest.approx(vals[c["id"]]["overall"]),
                                               pytest.approx(vals[c["id"]]["length"]))
    # the contract's fitness: the seed GRPO is its own reference from the start (0%
    # shorter than itself), every candidate is scored against it
    seed = vals[cands[0]["id"]]
    ref = (seed["overall"], seed["length"])
    for c in evaluated:
        expected = fitness(spec, vals[c["id"]]["overall"], vals[c["id"]]["length"], ref)
        assert c["fitness"] == pytest.approx(expected)
    assert cands[0]["fitness"] == pytest.approx(0.0)
    assert "leaderboard" in r.stdout
    assert "Overall" in r.stdout and "length" in r.stdout  # the end table's columns
    # each candidate's live line says Overall and length beside its fitness
    said = " ".join(r.stdout.split())
    for c in evaluated:
        assert (f"#{c['id']} {c['name']}: evaluated fitness {c['fitness']:.2f} (Overall "
                f"{c['overall']:.1f}, length {c['length']:.1f})") in said, said[-3000:]
    # the header names the executor the run trains on, as the executor describes itself
    assert "trainer: local CPU, up to " in " ".join(r.stdout.split())


def test_kill_and_resume_redoes_nothing_and_loses_nothing(tmp_path):
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-m", "graph.run", "--home", str(home),
                             "--directive", "accurate", "--candidates", "4", "--config",
                             str(TINY), "--no-smoke", "--quiet"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 400
    try:
        while time.time() < deadline:  # kill -9 once two candidates are archived
            if (home / "archive.db").exists():
                try:
                    if len(_candidates(home)) >= 2:
                        break
                except sqlite3.Error:
                    pass
            time.sleep(0.5)
        else:
            pytest.fail("the run archived nothing in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {row[0]: row[1] for row in _candidates(home)}
    assert 2 <= len(before) < 5
    r = _run_cli(home, "--resume", "1", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    after = _candidates(home)
    assert len(after) == 5  # seed + 4, none lost
    keys = [json.loads(row[3])["key"] for row in after]
    assert len(set(keys)) == len(keys)  # no slot archived twice
    assert {row[0]: row[1] for row in after if row[0] in before} == before  # not redone


@pytest.mark.parametrize("args,message", [
    (["--directive", "   "], "directive is empty"),
    (["--resume", "42"], "no run 42"),
    (["--directive", "x", "--candidates", "0"], "at least 1"),
    (["--directive", "x", "--bogus"], "unrecognized arguments"),
])
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, args, message):
    r = _run_cli(tmp_path / "home", *args, timeout=120)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_time_shares_count_overlapping_spans_once():
    from graph.summary import _covered
    assert _covered([[0, 2], [1, 3], [5, 6]], 0, 10) == 4
    assert _covered([[0, 2], [8, 12]], 1, 10) == 3  # clipped to the window
    assert _covered([], 0, 1) == 0
