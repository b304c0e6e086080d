"""What the reliability tests check on a POISE home after a run (or a crash): starting
and killing ``python -m graph.run``, reading the archive straight from SQLite, the
vectors straight from Chroma (without the sync that opening an Archive does), and the
sandbox children a run left behind. Shared by test_crash_resume, test_concurrent_use
and test_hostile_loop; imported, not a conftest."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).parent / "data" / "tiny_context.json"
SCRUB = ("POISE_HOME", "POISE_DB_URL", "POISE_MODEL", "CHROMA_HOST", "CHROMA_PORT",
         "OPENAI_API_KEY", "OPENAI_BASE_URL", "LANGSMITH_TRACING")


def env_for(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in SCRUB and not k.startswith("POISE_MODEL_")}
    env.update(extra or {}, PYTHONPATH=str(ROOT), COLUMNS="200")
    return env


def start_run(home: Path, *args: str, env: dict | None = None, log: Path | None = None
              ) -> subprocess.Popen:
    """``python -m graph.run --home HOME ARGS`` in the background (its own session)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen([sys.executable, "-m", "graph.run", "--home", str(home),
                                 "--quiet", *args], cwd=ROOT, env=env_for(env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log:
            out.close()


def run_to_end(home: Path, *args: str, env: dict | None = None, timeout: float = 900
               ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graph.run", "--home", str(home), "--quiet",
                           *args], cwd=ROOT, env=env_for(env), capture_output=True,
                          text=True, timeout=timeout)


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process only (its sandbox children must die on their own)."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_until(predicate, timeout: float, proc: subprocess.Popen | None = None,
               poll: float = 0.2) -> bool:
    """True once ``predicate()`` holds; False on timeout or when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


# ----------------------------------------------------------------------------- processes

def sandbox_children(run_pid: int) -> dict[int, str]:
    """Live sandbox children started by process ``run_pid`` -> their task. The child's
    request file lives in ``/tmp/poise-sandbox-<parent pid>-*/``, which survives the
    parent's death, so this finds them after a kill -9 too."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"trainers.sandbox.child" not in cmd or state in ("Z", "X"):
            continue
        request = Path(cmd[-2].decode() if not cmd[-1] else cmd[-1].decode())
        if not request.parent.name.startswith(f"poise-sandbox-{run_pid}-"):
            continue
        try:
            found[int(entry)] = json.loads(request.read_text())["task"]
        except (OSError, ValueError, KeyError):
            found[int(entry)] = "?"
    return found


def no_children_left(run_pid: int, grace: float = 15.0) -> bool:
    return wait_until(lambda: not sandbox_children(run_pid), grace)


# ----------------------------------------------------------------------------- archive

def candidates(home: Path, run_id: int | None = None) -> list[dict]:
    """Every candidate row (with its key, parents by name, evaluations and reflection
    count), read with sqlite3 (no Archive: no sync, no schema work)."""
    if not (home / "archive.db").is_file():
        return []
    con = sqlite3.connect(f"file:{home / 'archive.db'}?mode=rw", uri=True, timeout=30)
    try:
        names = dict(con.execute("select id, name from candidate"))
        q = ("select id, run_id, name, status, fitness, generation, error, details "
             "from candidate" + (" where run_id = ?" if run_id else "") + " order by id")
        rows = []
        for cid, rid, name, status, fit, gen, err, details in con.execute(
                q, (run_id,) if run_id else ()):
            details = json.loads(details)
            rows.append({
                "id": cid, "run_id": rid, "name": name, "status": status, "fitness": fit,
                "generation": gen, "error": err, "key": details.get("key"),
                "slot": details.get("slot"),
                "parents": [names[p] for (p,) in con.execute(
                    "select parent_id from lineage where child_id = ? order by id", (cid,))],
                "evaluations": [{"seed": s, "fitness": f, "curves": json.loads(c)}
                                for s, f, c in con.execute(
                                    "select seed, fitness, curves from evaluation where "
                                    "candidate_id = ? order by seed", (cid,))],
                "reflections": con.execute("select count(*) from reflection where "
                                           "candidate_id = ?", (cid,)).fetchone()[0]})
        return rows
    finally:
        con.close()


def leaderboard(rows: list[dict]) -> list[tuple]:
    """What must not depend on crashes: per slot, the name, status, parents, fitness,
    and the training curves of every seed."""
    return sorted((r["generation"], r["slot"], r["name"], r["status"], tuple(r["parents"]),
                   r["fitness"], json.dumps([e["curves"] for e in r["evaluations"]]))
                  for r in rows)


def run_rows(home: Path) -> list[tuple]:
    con = sqlite3.connect(home / "archive.db", timeout=30)
    try:
        return con.execute("select id, directive, status from run order by id").fetchall()
    finally:
        con.close()


# ----------------------------------------------------------------------------- vectors

def vector_state(home: Path) -> dict:
    """SQL rows vs Chroma vectors, per kind, read without repairing anything."""
    from memory.vectors import LocalChroma

    con = sqlite3.connect(home / "archive.db", timeout=30)
    try:
        uid = con.execute("select value from poise_meta where key = 'archive_uid'"
                          ).fetchone()[0]
        sql = {kind: dict(con.execute(f"select id, indexed from {table}"))
               for kind, table in (("reflection", "reflection"), ("proposal", "candidate"))}
    finally:
        con.close()
    out = {}
    with LocalChroma(home / "vectors").session() as client:
        existing = {c.name for c in client.list_collections()}
        for kind in ("reflection", "proposal"):
            name = f"poise-{kind}s-{uid}"
            ids = client.get_collection(name).get(include=[])["ids"] if name in existing \
                else []
            out[kind] = {"sql": sql[kind], "vectors": ids}
    return out


def vector_problems(home: Path, *, all_indexed: bool) -> list[str]:
    """Disagreements between SQL and Chroma: an indexed row without exactly one vector,
    a vector without a row (orphan), and (``all_indexed``) a row not indexed yet."""
    problems = []
    for kind, st in vector_state(home).items():
        vectors = [int(v.rsplit("-", 1)[1]) for v in st["vectors"]]
        for rid, indexed in st["sql"].items():
            n = vectors.count(rid)
            if indexed and n != 1:
                problems.append(f"{kind} {rid} is flagged indexed but has {n} vectors")
            if all_indexed and not indexed:
                problems.append(f"{kind} {rid} is not indexed")
        orphans = sorted(set(vectors) - set(st["sql"]))
        if orphans:
            problems.append(f"orphan {kind} vectors {orphans}")
        if len(vectors) != len(set(vectors)):
            problems.append(f"duplicate {kind} vector ids")
    return problems


def duplicate_keys(rows: list[dict]) -> list[str]:
    keys = [r["key"] for r in rows]
    return sorted({k for k in keys if keys.count(k) > 1})
