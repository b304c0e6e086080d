"""kill -9 of ``python -m graph.run`` at targeted and at random points, then
``--resume RUN_ID``, again and again; the result must be the uninterrupted run's.

Targeted points: while a sandbox training child is alive; inside the archive's
candidate transaction and between its SQL commit and its vectors (the archive's
test-only fault points, ``memory.archive._fault_point``); during an LLM call (a scripted
OpenAI-compatible server on 127.0.0.1 that is slow to answer, tests/fakes.py).
Random points: seeded delays after a (re)start.

After every kill: no sandbox child outlives the run, no (round, slot) is archived
twice, and SQL and Chroma agree (an indexed row has exactly one vector; no orphan
vector). At the end: every candidate once, with its evaluation and reflection, every
row indexed, and the leaderboard (names, statuses, parents, fitness, training curves)
equal to an uninterrupted run's with the same seed in a fresh home.
"""
from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from fakes import OpenAIServer
from run_checks import (TINY, candidates, duplicate_keys, kill9, leaderboard,
                        no_children_left, run_to_end, sandbox_children, start_run,
                        vector_problems, wait_until)

pytestmark = pytest.mark.reliability

ARGS = ["--directive", "accurate and concise", "--candidates", "3", "--width", "2",
        "--seed", "3", "--config", str(TINY), "--no-smoke"]
LLM_ARGS = ["--directive", "accurate and concise", "--candidates", "2", "--width", "1",
            "--model", "openai:test-model", "--config", str(TINY), "--no-smoke"]
# A longer soak: POISE_CRASH_KILLS=20 POISE_CRASH_SEED=7 pytest tests/test_crash_resume.py
RANDOM_KILLS = int(os.environ.get("POISE_CRASH_KILLS", "3"))
SEED = int(os.environ.get("POISE_CRASH_SEED", "20240607"))


class Tally:
    """Kills tried, and whether the run then resumed to the right end."""

    def __init__(self):
        self.kills: list[str] = []

    def note(self, what: str) -> None:
        self.kills.append(what)


def _after_kill(home: Path, proc, what: str, tally: Tally) -> None:
    tally.note(what)
    assert no_children_left(proc.pid), f"after {what}: sandbox children outlived the run"
    rows = candidates(home)
    assert not duplicate_keys(rows), f"after {what}: {duplicate_keys(rows)}"
    for r in rows:  # a candidate is written whole or not at all
        assert r["reflections"] == 1, (what, r)
        assert (len(r["evaluations"]) == 1) == (r["status"] == "evaluated"), (what, r)
    if (home / "archive.db").exists() and rows:
        assert not vector_problems(home, all_indexed=False), (what, vector_problems(
            home, all_indexed=False))


def _resume(home: Path, log: Path, env: dict | None = None):
    return start_run(home, "--resume", "1", env=env, log=log)


def _in_training(pid: int) -> bool:
    return "train" in sandbox_children(pid).values()


def _reference(home: Path, args: list[str], env: dict | None, out: dict) -> None:
    out["proc"] = run_to_end(home, *args, env=env)


def test_kill_9_anywhere_then_resume_equals_an_uninterrupted_run(tmp_path):
    rng = random.Random(SEED)
    ref_home, home, log = tmp_path / "reference", tmp_path / "crashed", tmp_path / "run.log"
    ref: dict = {}
    reference = threading.Thread(target=_reference, args=(ref_home, ARGS, None, ref))
    reference.start()  # in parallel: a second core is idle while one run trains
    tally = Tally()
    pause = {"POISE_TEST_PAUSE_S": "60", "POISE_TEST_PAUSE_LOG": str(tmp_path / "pauses")}
    try:
        # 1. while a training job runs in its sandbox child
        proc = start_run(home, *ARGS, log=log)
        assert wait_until(lambda: _in_training(proc.pid), 300, proc), log.read_text()[-3000:]
        kill9(proc)
        _after_kill(home, proc, "during training (sandbox child alive)", tally)
        # 2./3. inside the candidate's SQL transaction, then after its commit and
        # before its vectors are written
        for n, point in enumerate(("candidate-before-commit", "candidate-before-index")):
            proc = _resume(home, log, {**pause, "POISE_TEST_PAUSE_AT": point})
            assert wait_until(lambda: _paused(tmp_path / "pauses", n + 1), 400, proc), \
                log.read_text()[-3000:]
            kill9(proc)
            _after_kill(home, proc, f"during an archive write ({point})", tally)
        # 4.. at seeded random moments
        for _ in range(RANDOM_KILLS):
            proc = _resume(home, log)
            delay = rng.uniform(3, 15)
            if wait_until(lambda: False, delay, proc) or proc.poll() is not None:
                break  # finished before the kill came
            kill9(proc)
            _after_kill(home, proc, f"random, {delay:.1f} s after a resume", tally)
        final = run_to_end(home, "--resume", "1")
        assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    finally:
        reference.join()
    assert ref["proc"].returncode == 0, ref["proc"].stderr[-3000:]

    got, want = candidates(home), candidates(ref_home)
    assert not duplicate_keys(got)
    assert len(got) == 4 and all(r["reflections"] == 1 for r in got)
    assert not vector_problems(home, all_indexed=True), vector_problems(home, all_indexed=True)
    print(f"\nkills tried: {len(tally.kills)}: " + "; ".join(tally.kills))
    assert [b[:5] for b in leaderboard(got)] == [b[:5] for b in leaderboard(want)]
    assert leaderboard(got) == leaderboard(want)  # ... and the same training curves
    assert len(tally.kills) >= 4


def _paused(log: Path, n: int) -> bool:
    return log.exists() and len(log.read_text().splitlines()) >= n


def test_kill_9_during_llm_calls_then_resume(tmp_path):
    """The LLM path: the run is killed while the model server holds a request, twice,
    and resumed; it ends as a run against the same scripted server that was never
    killed."""
    ref_home, home, log = tmp_path / "reference", tmp_path / "crashed", tmp_path / "run.log"
    slow = {"role": None}  # the role whose requests the server holds (for 10 minutes)

    def delay(role: str) -> float:
        return 600.0 if role == slow["role"] else 0.0

    with OpenAIServer.scripted() as ref_server, \
            OpenAIServer.scripted(delay_s=delay) as server:
        ref: dict = {}
        reference = threading.Thread(target=_reference, args=(
            ref_home, LLM_ARGS, {"OPENAI_BASE_URL": ref_server.base_url}, ref))
        reference.start()
        env = {"OPENAI_BASE_URL": server.base_url}
        tally = Tally()
        try:
            proc = start_run(home, *LLM_ARGS, env=env, log=log)
            for role in ("scientist", "analyst"):  # round 1's proposal, then its diagnosis
                slow["role"] = role
                assert wait_until(lambda: _holding(server, role), 400, proc), \
                    log.read_text()[-3000:]
                kill9(proc)
                slow["role"] = None
                _after_kill(home, proc, f"during an LLM call ({role})", tally)
                proc = _resume(home, log, env)
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        finally:
            reference.join()
    assert ref["proc"].returncode == 0, ref["proc"].stderr[-3000:]
    got, want = candidates(home), candidates(ref_home)
    assert len(got) == 3 and not duplicate_keys(got)
    assert [b[:5] for b in leaderboard(got)] == [b[:5] for b in leaderboard(want)]
    assert leaderboard(got) == leaderboard(want)
    assert not vector_problems(home, all_indexed=True)
    print(f"\nLLM kills tried: {len(tally.kills)}; resumed: {'; '.join(tally.kills)}")


def _holding(server: OpenAIServer, role: str) -> bool:
    """The server holds a request of ``role`` that it has not answered."""
    return any(r["role"] == role and "answered" not in r for r in server.requests)


def test_a_vector_store_torn_by_a_killed_writer_is_set_aside_and_rebuilt(tmp_path):
    """A writer killed inside a Chroma operation can leave a torn HNSW file (measured:
    a segfault on every later read, once in 21 kills of a writer). The lock file says
    the last holder never finished; the next one probes the store, moves it aside and
    the archive refills a fresh one from SQL."""
    import subprocess
    import sys

    import numpy as np

    from memory.archive import Archive
    from memory.vectors import HNSW, LocalChroma
    from run_checks import ROOT, env_for

    home = tmp_path / "home"
    with Archive(home) as a:
        run = a.start_run("accurate", {})
        cid = a.add_candidate(run, "grpo", 0, "GRPO as shipped.", status="evaluated")
        a.add_reflection(cid, "Entropy collapsed within ten steps.", ["entropy-collapse"])
        uid = a.uid
    # Enough vectors in the archive's own collection that Chroma persists its HNSW
    # files (>= 1000), then tear one, as a kill -9 mid-persist does.
    rng = np.random.default_rng(0)
    junk = rng.normal(size=(1100, 384)).astype(np.float32)
    junk /= np.linalg.norm(junk, axis=1, keepdims=True)
    with LocalChroma(home / "vectors").session() as client:
        col = client.get_or_create_collection(f"poise-reflections-{uid}",
                                              embedding_function=None,
                                              configuration={"hnsw": dict(HNSW)})
        for s in range(0, 1100, 100):
            col.upsert(ids=[f"reflection-{900_000 + i}" for i in range(s, s + 100)],
                       embeddings=junk[s:s + 100])
    [segment] = [p.parent for p in (home / "vectors").glob("*/index_metadata.pickle")]
    (segment / "header.bin").write_bytes(b"\xff" * 100)
    (home / "vectors.lock").write_bytes(b"busy")  # its last holder died mid-operation

    proc = subprocess.run([sys.executable, "-m", "memory.query", "entropy collapse",
                           "--json", "--home", str(home)], cwd=ROOT, env=env_for(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"candidate_name": "grpo"' in proc.stdout
    assert len(list(home.glob("vectors.damaged-*"))) == 1
    assert not vector_problems(home, all_indexed=True)
