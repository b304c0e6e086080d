"""Training executors on a real local Ray (no mocks): Ray tasks give the same results as
local sandboxed processes; a crashing candidate and a killed Ray worker become failed
training with a reason; an unreachable cluster is one line, exit 2; and the loop's
archive is the same on both executors (reliability: two full runs)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from graph.context import Context  # noqa: E402
from memory.schema import FAILED_TRAINING  # noqa: E402

TINY = Path(__file__).parent / "data" / "tiny_context.json"
REPO = Path(__file__).resolve().parents[1]
GRPO_LIKE = "NAME = 'grpo-like'\n"  # every hook falls back to GRPO's
CRASHER = """NAME = "alloc-bomb"
import torch

def compute_advantages(batch, rewards):
    return torch.ones(1 << 40)  # 4 TB: past the sandbox's address-space limit
"""


def _tiny(**over) -> dict:
    data = json.loads(TINY.read_text())
    data["train_overrides"] = {**data["train_overrides"], **over}
    return data


def _context(home: Path, **over) -> Context:
    tiny = _tiny(**over.pop("train", {}))
    fields = dict(home=str(home), seeds=2, executor="ray", ray_task_memory_mb=256,
                  ray_max_retries=0, train_timeout_s=300, max_parallel_jobs=2,
                  train_overrides=tiny["train_overrides"], warm_config=tiny["warm_config"])
    return Context(**{**fields, **over})


@pytest.fixture(scope="module")
def ray_home(tmp_path_factory):
    """A local Ray (the executor the trainer node will get) and a home for it."""
    from graph.graph import executor_for
    from trainers.executors import close_executors

    home = tmp_path_factory.mktemp("ray_home")
    executor = executor_for(_context(home))
    assert executor.name == "ray" and executor.started
    yield home
    close_executors()
    import ray
    assert not ray.is_initialized()


def _trainer(ctx: Context, code: str) -> dict:
    from langgraph.runtime import Runtime

    from graph.graph import trainer
    return trainer({"code": code, "run_id": 1, "round": 1, "slot": 0},
                   Runtime(context=ctx))


def _without_cpu_times(value: dict) -> dict:
    value = {k: v for k, v in value.items() if "cpu_seconds" not in k}
    value["curve"] = [{k: v for k, v in row.items() if k != "cpu_seconds"}
                      for row in value["curve"]]
    return value


def test_ray_tasks_train_exactly_like_local_processes(ray_home, tmp_path):
    from trainers.executors import get_executor

    ctx = _context(ray_home)
    ray_out = _trainer(ctx, GRPO_LIKE)
    assert "error" not in ray_out, ray_out
    process_ctx = _context(tmp_path / "process_home", executor="process")
    (tmp_path / "process_home").mkdir()
    proc_out = _trainer(process_ctx, GRPO_LIKE)
    assert "error" not in proc_out, proc_out
    assert get_executor("process", max_parallel_jobs=2).name == "process"
    for seed, (r, p) in enumerate(zip(ray_out["results"], proc_out["results"])):
        assert r["seed"] == p["seed"] == seed
        assert _without_cpu_times(r) | {"span": None} == _without_cpu_times(p) | {"span": None}
        assert r["span"][0] < r["span"][1]
    # the two seeds differ, so equality above is not trivially true
    assert ray_out["results"][0]["curve"] != ray_out["results"][1]["curve"]


def test_a_crashing_candidate_is_failed_training_with_its_reason(ray_home):
    out = _trainer(_context(ray_home), CRASHER)
    assert out["status"] == FAILED_TRAINING
    assert out["error"].startswith("training failed: seed 0: memory: ")
    assert "seed 1: memory: " in out["error"]


def _sandbox_children(home: Path) -> list[int]:
    """Sandbox children training for ``home`` (found through their request files)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"trainers.sandbox.child" not in argv:
                continue
            request = json.loads(Path(argv[argv.index(b"trainers.sandbox.child") + 1]
                                      .decode()).read_text())
        except (OSError, ValueError, IndexError):
            continue
        if request["payload"].get("home") == str(home.resolve()):
            found.append(int(pid))
    return found


def _parent(pid: int) -> tuple[int, str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    ppid = int(stat[stat.rindex(")") + 2:].split()[1])
    return ppid, Path(f"/proc/{ppid}/cmdline").read_bytes().decode(errors="replace")


def test_a_killed_ray_worker_is_failed_training_with_a_reason(ray_home):
    ctx = _context(ray_home, seeds=1, train={"steps": 400})  # long enough to be caught
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(_trainer(ctx, GRPO_LIKE)))
    worker.start()
    deadline, child = time.time() + 120, None
    while child is None and time.time() < deadline and worker.is_alive():
        children = _sandbox_children(ray_home)
        child = children[0] if children else None
        time.sleep(0.2)
    assert child is not None, f"no sandbox child appeared: {out}"
    ray_worker, cmdline = _parent(child)
    assert cmdline.startswith("ray::"), cmdline  # the Ray worker running train_job
    os.kill(ray_worker, signal.SIGKILL)
    worker.join(120)
    assert not worker.is_alive()
    assert out["status"] == FAILED_TRAINING
    assert "seed 0: executor: the Ray worker died while training" in out["error"]
    for _ in range(100):  # the sandbox child dies with its parent (PR_SET_PDEATHSIG)
        if not Path(f"/proc/{child}").exists() or "Z" in Path(
                f"/proc/{child}/stat").read_text().split(")")[-1].split()[0]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the sandbox child outlived its Ray worker")


def test_a_node_without_the_drivers_home_trains_from_the_shipped_warm_start(
        tmp_path, monkeypatch):
    """On a cluster without a shared filesystem the task writes the warm start it was
    sent into the node's own cache home (the task function itself, run here)."""
    import tempfile

    from trainers.executors import NODE_HOME, build_warm_start, train_job
    from trainers.local.warmstart import checkpoint_path
    from trainers.sandbox.tasks import warm_start_config

    tiny = _tiny()
    (tmp_path / "driver").mkdir()
    payload = {"source": GRPO_LIKE, "seed": 0, "home": str(tmp_path / "driver"),
               "train_config": tiny["train_overrides"], "warm_config": tiny["warm_config"]}
    blob = build_warm_start(payload)
    node_tmp = tmp_path / "node-tmp"
    node_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(node_tmp))  # this "node's" temp dir
    elsewhere = {**payload, "home": str(tmp_path / "not-on-this-node")}
    out = train_job(elsewhere, 300, blob)
    assert out["result"]["ok"], out["result"]["error"]
    assert out["result"]["value"]["steps_done"] == tiny["train_overrides"]["steps"]
    node_ckpt = checkpoint_path(warm_start_config(payload), node_tmp / NODE_HOME)
    assert node_ckpt.read_bytes() == blob
    assert not (tmp_path / "not-on-this-node").exists()


def test_an_unreachable_ray_address_is_one_line_and_exit_2(tmp_path):
    home = tmp_path / "home"
    r = subprocess.run([sys.executable, "-m", "graph.run", "--home", str(home),
                        "--directive", "accurate", "--executor", "ray", "--ray-address",
                        "127.0.0.1:1", "--quiet"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == ["error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"]
    from memory.archive import Archive
    with Archive(home) as archive:
        assert archive.runs() == []  # nothing recorded for a run that could not start


@pytest.mark.reliability
def test_a_run_on_ray_archives_what_the_process_run_archives(tmp_path):
    """4 candidates x 2 seeds on each executor, fresh homes: identical archives."""
    from graph.executor_bench import compare
    from memory.archive import Archive

    report = compare(tmp_path, ["process", "ray"], directive="accurate and concise",
                     candidates=4, seeds=2, config=TINY)
    walls = {e: r["wall_s"] for e, r in report["runs"].items()}
    print(f"\nwall seconds, 4 candidates x 2 seeds: process {walls['process']:.1f}, "
          f"ray {walls['ray']:.1f} (the JSON: {tmp_path / 'executors.json'})")
    assert report["differences"]["ray"] == []
    assert report["identical"]
    assert report["runs"]["ray"]["candidates"] == 5  # the seed + 4
    assert json.loads((tmp_path / "executors.json").read_text())["runs"]["ray"]["wall_s"] > 0
    with Archive(tmp_path / "ray") as archive:
        assert archive.run(1).config["context"]["executor"] == "ray"
    with Archive(tmp_path / "process") as archive:
        assert archive.run(1).config["context"]["executor"] == "process"
    # --resume takes the executor from the run's config
    r = subprocess.run([sys.executable, "-m", "graph.run", "--home", str(tmp_path / "ray"),
                        "--resume", "1", "--quiet"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trainer: local CPU, Ray tasks on a local Ray" in " ".join(r.stdout.split())
