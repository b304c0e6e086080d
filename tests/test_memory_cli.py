"""The memory commands as a person runs them: subprocesses on a temporary home."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memory.archive import Archive
from memory.vectors import default_embedder

ROOT = Path(__file__).resolve().parents[1]


def poise(*args, home=None, timeout=300):
    env = {k: v for k, v in os.environ.items()
           if k not in ("POISE_HOME", "POISE_DB_URL", "CHROMA_HOST", "CHROMA_PORT")}
    env["COLUMNS"] = "160"                    # a wide terminal: table cells stay whole
    cmd = [sys.executable, "-m", *args] + (["--home", str(home)] if home else [])
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An archive with a seed, an improving child, a failed child and reflections."""
    path = tmp_path_factory.mktemp("cli_home")
    a = Archive(path, embedder=default_embedder())
    run = a.start_run("accurate and concise", {"budget": 4})
    seed = a.add_candidate(run, "grpo", 0, "GRPO baseline.", "NAME = 'grpo'\n",
                           status="evaluated")
    a.add_evaluation(seed, 0, fitness=0.41, metrics={"test": {"overall": 0.41}})
    child = a.add_candidate(run, "dace-grpo", 1, "Penalize length only on correct answers.",
                            "NAME = 'dace-grpo'\nALPHA = 0.1\n", parents=[seed],
                            status="evaluated")
    a.add_evaluation(child, 0, fitness=0.47, metrics={"test": {"overall": 0.47}},
                     wall_time=30.0)
    broken = a.add_candidate(run, "broken", 2, "Sign-flipped advantages.", "NAME = 'b'\n",
                             parents=[child], status="failed_verification",
                             error="compute_advantages: returned 3 non-finite values")
    a.add_reflection(child, "Length fell by 29% at equal accuracy; no sign of entropy "
                     "collapse.", ["length"])
    a.add_reflection(broken, "Entropy collapsed within ten steps before the loss became "
                     "NaN.", ["entropy-collapse", "nan"])
    a.close()
    return path


def test_query_prints_a_table_of_hits(home):
    proc = poise("memory.query", "entropy collapse", home=home)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "broken #3" in out and "failed_verification" in out
    assert "Entropy collapsed" in out and "dace-grpo #2" in out
    assert "Loading" not in proc.stdout + proc.stderr        # no model-loading noise


def test_query_json_with_filters(home):
    proc = poise("memory.query", "entropy collapse", "--status", "failed", "-k", "3",
                 "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert [h["candidate_id"] for h in hits] == [3]
    hit = hits[0]
    assert {"candidate_id", "similarity", "status", "reflection"} <= set(hit)
    assert hit["status"] == "failed_verification" and 0 < hit["similarity"] <= 1
    assert hit["parent_ids"] == [2] and hit["tags"] == ["entropy-collapse", "nan"]


def test_show_prints_the_whole_candidate(home):
    proc = poise("memory.show", "broken", home=home)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("broken", "failed_verification", "non-finite", "Sign-flipped",
                   "NAME = 'b'", "broken #3", "dace-grpo #2", "grpo #1",
                   "Entropy collapsed", "not evaluated"):
        assert needle in out, needle
    data = json.loads(poise("memory.show", "2", "--json", home=home).stdout)
    assert data["candidate"]["name"] == "dace-grpo"
    assert [p["name"] for p in data["lineage_path"]] == ["dace-grpo", "grpo"]
    assert data["evaluations"][0]["fitness"] == 0.47 and data["children"] == [3]


def test_reindex_rebuilds(home):
    proc = poise("memory.reindex", home=home)
    assert proc.returncode == 0, proc.stderr
    assert "2 reflections, 3 proposals" in " ".join(proc.stdout.split())


def test_newcomer_on_a_missing_or_empty_home_gets_a_message_and_no_files(tmp_path):
    missing = tmp_path / "never"
    one_line_error(poise("memory.query", "entropy collapse", home=missing),
                   "no archive at", "python -m graph.run")
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(poise("memory.query", "entropy collapse", home=empty), "no archive at")
    one_line_error(poise("memory.show", "1", home=empty), "no archive at")
    assert list(empty.iterdir()) == []


def test_empty_archive_says_there_is_nothing_yet(tmp_path):
    Archive(tmp_path).close()
    proc = poise("memory.query", "entropy", home=tmp_path)
    assert proc.returncode == 0 and "no reflections yet" in proc.stderr
    assert poise("memory.query", "entropy", "--json", home=tmp_path).stdout.strip() == "[]"


@pytest.mark.parametrize("args,needle", [
    (["memory.query", "entropy", "--bogus"], "unrecognized arguments"),
    (["memory.query", "   "], "empty query"),
    (["memory.query", "entropy", "-k", "0"], "-k must be >= 1"),
    (["memory.query", "entropy", "--status", "great"], "invalid choice"),
    (["memory.query"], "required"),
    (["memory.show", "no-such-candidate"], "no candidate 'no-such-candidate'"),
    (["memory.show"], "required"),
], ids=["flag", "empty", "k", "status", "no-query", "unknown-candidate", "no-candidate"])
def test_bad_input_is_one_line_and_exit_2(home, args, needle):
    one_line_error(poise(*args, home=home), needle)


def test_corrupt_archive_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "archive.db").write_bytes(b"\x00garbage" * 512)
    one_line_error(poise("memory.query", "entropy", home=tmp_path), "cannot read the archive")
    one_line_error(poise("memory.show", "1", home=tmp_path), "cannot read the archive")


def test_bench_writes_its_json(tmp_path):
    proc = poise("memory.bench", "--out", str(tmp_path), "--reflections", "200",
                 "--candidates", "5", "--queries", "30")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "memory_bench.json").read_text())
    for key in ("query_p50_ms", "query_p95_ms", "insert_per_second", "recall_at_5"):
        assert result[key] > 0, key
    assert result["reflections"] == 200 and result["recall_queries"] == 30
    assert "recall_at_5" in proc.stdout
