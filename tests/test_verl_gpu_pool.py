"""The GPU pool behind the verl executor's --width, on CPU (no real GPU is touched).

The pool hands each verl job ``n_gpus_per_node`` GPU ids no other job holds, first come
first served, and takes them back however the job ends; the executor runs up to
``max_parallel_jobs`` jobs at once, each launched with ``CUDA_VISIBLE_DEVICES`` set to its
ids. The end-to-end test runs the CPU stand-in for verl's main_ppo on a 2-"GPU" node and
reads back, from each job's ``standin_run.json``, the devices it was given and when it ran.
"""
import json
import threading
import time
from pathlib import Path

import pytest

from trainers.baselines import baseline_source
from trainers.executors import VerlExecutor, close_executors, get_executor
from trainers.verl import backend
from trainers.verl.config import ConfigError, VerlConfig, load_verl_config
from trainers.verl.launcher import LaunchError, plan_launch
from trainers.verl.pool import GpuPool, GpuPoolError, visible_gpus

from test_verl_backend import _config


def _until(predicate, timeout=5.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.01)


def _in_thread(fn):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("value", fn()), daemon=True)
    t.start()
    return t, box


# ----------------------------------------------------------------------------- the pool

def test_jobs_get_disjoint_gpus():
    pool = GpuPool([0, 1, 2, 3])
    a, b = pool.acquire(2), pool.acquire(2)
    assert a == [0, 1] and b == [2, 3] and pool.free() == []
    pool.release(a)
    assert pool.free() == [0, 1]
    pool.release(b)
    assert pool.free() == [0, 1, 2, 3]
    with pytest.raises(GpuPoolError, match="did not lend"):
        pool.release([1])


def test_a_job_waits_for_free_gpus_first_come_first_served():
    pool = GpuPool([0, 1])
    held = pool.acquire(2)
    big, big_box = _in_thread(lambda: pool.acquire(2, timeout=10))
    _until(lambda: pool.waiting() == 1)
    small, small_box = _in_thread(lambda: pool.acquire(1, timeout=10))
    _until(lambda: pool.waiting() == 2)
    pool.release([held[0]])
    time.sleep(0.2)
    # one GPU is free, but the earlier request for two is served first: no overtaking
    assert "value" not in small_box and "value" not in big_box
    pool.release([held[1]])
    big.join(5)
    assert sorted(big_box["value"]) == [0, 1]
    assert "value" not in small_box
    pool.release(big_box["value"])
    small.join(5)
    assert small_box["value"] == [0] and pool.waiting() == 0


def test_gpus_come_back_when_the_job_raises():
    pool = GpuPool([4, 5])
    with pytest.raises(RuntimeError, match="boom"):
        with pool.lease(2) as ids:
            assert ids == [4, 5] and pool.free() == []
            raise RuntimeError("boom")
    assert pool.free() == [4, 5]
    with pytest.raises(TimeoutError):
        with pool.lease(2):
            pool.acquire(1, timeout=0.05)
    assert pool.free() == [4, 5] and pool.waiting() == 0


def test_a_job_that_can_never_fit_fails_at_once():
    pool = GpuPool([0, 1])
    began = time.time()
    with pytest.raises(GpuPoolError) as e:
        pool.acquire(3)
    assert time.time() - began < 0.5
    message = str(e.value)
    assert "\n" not in message and "needs 3 GPUs" in message and "has 2" in message
    with pytest.raises(GpuPoolError, match="at least one"):
        pool.acquire(0)
    with pytest.raises(GpuPoolError, match="repeat"):
        GpuPool([0, 0])


def test_many_threads_never_share_a_gpu():
    pool = GpuPool([0, 1, 2])
    busy, peak, lock, clashes = set(), [0], threading.Lock(), []

    def job(k):
        with pool.lease(1 + k % 2) as ids:
            with lock:
                if busy & set(ids):
                    clashes.append(ids)
                busy.update(ids)
                peak[0] = max(peak[0], len(busy))
            time.sleep(0.01 * (k % 3))
            with lock:
                busy.difference_update(ids)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not clashes and peak[0] <= 3 and pool.free() == [0, 1, 2]


def test_visible_gpus_reads_cuda_visible_devices(monkeypatch):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == [2, 3]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,2"}) == [0]  # CUDA stops at -1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8a1f,GPU-77c0"}) == ["GPU-8a1f",
                                                                           "GPU-77c0"]
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert visible_gpus({}) == [0, 1, 2]


# ----------------------------------------------------------------------------- config, plan

def test_the_gpus_setting(tmp_path):
    path = tmp_path / "verl.yaml"
    path.write_text("verl: {gpus: [2, 3], n_gpus_per_node: 1}\n")
    assert load_verl_config(path, env={}).gpus == [2, 3]
    env = {"POISE_VERL_GPUS": "0,1", "POISE_VERL_N_GPUS_PER_NODE": "2"}
    assert load_verl_config(None, env=env).gpus == [0, 1]
    assert load_verl_config(None, env={}).gpus == []
    for text, message in [("verl: {gpus: [a], n_gpus_per_node: 1}", "list of GPU indices"),
                          ("verl: {gpus: [1, 1], n_gpus_per_node: 1}", "distinct"),
                          ("verl: {gpus: [0, 1]}", "n_gpus_per_node = 8"),
                          ("verl: {gpus: [0], n_gpus_per_node: 1, ray_address: "
                           "'http://h:8265'}", "for one node")]:
        path.write_text(text + "\n")
        with pytest.raises(ConfigError, match=message):
            load_verl_config(path, env={})


def test_the_plan_pins_a_single_node_job_to_its_gpus(tmp_path):
    cfg = VerlConfig(n_gpus_per_node=2, gpus=[0, 1, 2, 3])
    plan = plan_launch(baseline_source("grpo"), cfg, tmp_path, "grpo", 0,
                       visible_devices=[2, 3])
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    # not in the Ray runtime_env: it would override the device Ray gives each worker
    assert not [k for k in plan.values if "CUDA_VISIBLE_DEVICES" in k]
    assert "CUDA_VISIBLE_DEVICES" not in plan_launch(baseline_source("grpo"), cfg,
                                                     tmp_path, "grpo", 0).env
    cluster = VerlConfig(ray_address="http://head:8265")
    with pytest.raises(LaunchError, match="single-node"):
        plan_launch(baseline_source("grpo"), cluster, tmp_path, "grpo", 0,
                    visible_devices=[0])


# ----------------------------------------------------------------------------- executor

def _yaml(tmp_path, text, name="verl.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


class FakeVerl:
    """train_candidate without verl: records each job's devices and span."""

    def __init__(self, sleep_s=0.3, fail_seeds=()):
        self.sleep_s, self.fail_seeds = sleep_s, set(fail_seeds)
        self.runs, self.lock = [], threading.Lock()

    def __call__(self, source, label, seed, home, trainer_config=None, on_progress=None,
                 timeout_s=None, poll_s=10.0, visible_devices=None):
        start = time.time()
        if on_progress is not None:
            on_progress(1, {"step": 1, "reward": 0.5})
        time.sleep(self.sleep_s)
        with self.lock:
            self.runs.append({"seed": seed, "gpus": visible_devices, "start": start,
                              "end": time.time()})
        if seed in self.fail_seeds:
            raise RuntimeError("verl blew up")
        return {"final": {"overall": float(seed)}, "seed": seed}


def _payloads(n, tmp_path):
    return [{"source": "unused", "seed": s, "home": str(tmp_path), "label": f"c{s}"}
            for s in range(n)]


def _overlap(a, b) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def _peak(runs) -> int:
    """The most runs in flight at one instant."""
    return max(sum(b["start"] <= a["start"] < b["end"] for b in runs) for a in runs)


def test_width_runs_jobs_at_once_on_disjoint_gpus_in_payload_order(tmp_path, monkeypatch):
    fake = FakeVerl()
    monkeypatch.setattr(backend, "train_candidate", fake)
    cfg = _yaml(tmp_path, "verl: {gpus: [0, 1, 2, 3, 4], n_gpus_per_node: 2}\n")
    ex = VerlExecutor(cfg, poll_s=0.1, max_parallel_jobs=3)
    assert "up to 3 at once" in ex.describe() and "[0, 1, 2, 3, 4]" in ex.describe()
    done, progress = [], []
    outs = ex.train(_payloads(4, tmp_path), timeout_s=1,
                    on_progress=lambda *a: progress.append(a[:3]),
                    on_done=lambda i, o: done.append(i))
    assert [o.result.value["seed"] for o in outs] == [0, 1, 2, 3]
    assert all(o.result.ok for o in outs) and sorted(done) == [0, 1, 2, 3]
    assert sorted(progress) == [(f"c{s}", s, 1) for s in range(4)]
    runs = fake.runs
    assert all(len(r["gpus"]) == 2 for r in runs)
    for a in runs:
        for b in runs:
            if a is not b and _overlap(a, b):
                assert not set(a["gpus"]) & set(b["gpus"])
    # five GPUs, two per job: width 3 still runs only two at once
    assert _peak(runs) == 2
    assert ex.pool.free() == [0, 1, 2, 3, 4]


def test_width_one_runs_one_job_at_a_time(tmp_path, monkeypatch):
    fake = FakeVerl(sleep_s=0.1)
    monkeypatch.setattr(backend, "train_candidate", fake)
    ex = VerlExecutor(_yaml(tmp_path, "verl: {gpus: [0, 1], n_gpus_per_node: 1}\n"),
                      max_parallel_jobs=1)
    ex.train(_payloads(3, tmp_path), timeout_s=1)
    runs = sorted(fake.runs, key=lambda r: r["start"])
    assert all(a["end"] <= b["start"] for a, b in zip(runs, runs[1:]))
    assert [r["gpus"] for r in runs] == [[0], [0], [0]]


def test_a_failing_job_is_a_failed_outcome_and_frees_its_gpus(tmp_path, monkeypatch):
    monkeypatch.setattr(backend, "train_candidate", FakeVerl(sleep_s=0.05, fail_seeds={1}))
    ex = VerlExecutor(_yaml(tmp_path, "verl: {gpus: [0, 1], n_gpus_per_node: 1}\n"),
                      max_parallel_jobs=2)
    outs = ex.train(_payloads(3, tmp_path), timeout_s=1)
    assert [o.result.ok for o in outs] == [True, False, True]
    assert "verl launch failed: RuntimeError: verl blew up" in outs[1].result.error
    assert ex.pool.free() == [0, 1]


def test_a_job_bigger_than_the_node_fails_at_once(tmp_path, monkeypatch):
    fake = FakeVerl()
    monkeypatch.setattr(backend, "train_candidate", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    ex = VerlExecutor(_yaml(tmp_path, "verl: {n_gpus_per_node: 2}\n"), max_parallel_jobs=2)
    began = time.time()
    outs = ex.train(_payloads(2, tmp_path), timeout_s=1)
    assert time.time() - began < 2 and not fake.runs
    for o in outs:
        assert not o.result.ok and "\n" not in o.result.error
        assert "needs 2 GPUs" in o.result.error and "has 1" in o.result.error


def test_on_a_cluster_there_is_no_local_pool(tmp_path, monkeypatch):
    fake = FakeVerl(sleep_s=0.2)
    monkeypatch.setattr(backend, "train_candidate", fake)
    ex = VerlExecutor(_yaml(tmp_path, "verl: {ray_address: 'http://head:8265'}\n"),
                      max_parallel_jobs=2)
    assert ex.pool is None and "Ray cluster at http://head:8265" in ex.describe()
    ex.train(_payloads(3, tmp_path), timeout_s=1)
    runs = fake.runs
    assert all(r["gpus"] is None for r in runs)
    assert _peak(runs) == 2


def test_on_a_cluster_jobs_wait_for_the_cluster_gpus_they_need(tmp_path, monkeypatch):
    """cluster_gpus 16, jobs of 8 GPUs x 1 node, width 3: two are submitted at once, the
    third waits for one to end (verl would fail it rather than queue it)."""
    fake = FakeVerl(sleep_s=0.3)
    monkeypatch.setattr(backend, "train_candidate", fake)
    ex = VerlExecutor(_yaml(tmp_path, "verl: {ray_address: 'http://head:8265', "
                                      "cluster_gpus: 16, n_gpus_per_node: 8}\n"),
                      max_parallel_jobs=3)
    assert "as many as fit its 16 GPUs" in ex.describe()
    outs = ex.train(_payloads(3, tmp_path), timeout_s=1)
    assert all(o.result.ok for o in outs)
    assert all(r["gpus"] is None for r in fake.runs)   # Ray places them: nothing pinned
    assert _peak(fake.runs) == 2
    assert ex.cluster.free() == list(range(16))
    with pytest.raises(ConfigError, match="fewer than one job"):
        VerlConfig(ray_address="http://head:8265", cluster_gpus=4, n_gpus_per_node=8)
    with pytest.raises(ConfigError, match="for a Ray cluster"):
        VerlConfig(cluster_gpus=8)


def test_get_executor_keys_the_verl_executor_on_width(tmp_path):
    cfg = _yaml(tmp_path, "verl: {gpus: [0, 1], n_gpus_per_node: 1}\n")
    try:
        one = get_executor("verl", trainer_config=cfg, max_parallel_jobs=1)
        two = get_executor("verl", trainer_config=cfg, max_parallel_jobs=2)
        assert one is not two and (one.max_parallel_jobs, two.max_parallel_jobs) == (1, 2)
        assert get_executor("verl", trainer_config=cfg, max_parallel_jobs=2) is two
        assert one.pool is two.pool  # the same GPUs: one pool for the process
    finally:
        close_executors()


# ----------------------------------------------------------------------------- end to end

def test_width_on_a_two_gpu_node_with_the_verl_standin(tmp_path):
    """Three jobs, width 3, two 1-GPU slots: the stand-in for main_ppo records the
    CUDA_VISIBLE_DEVICES it was launched with and when it ran. The first two run at once
    on GPUs 0 and 1; the third waits for one of them and gets the GPU it freed."""
    cfg = _config(tmp_path, n_gpus_per_node=1, gpus=[0, 1],
                  overrides=["+standin.step_sleep_s=0.1"])
    ex = VerlExecutor(cfg, poll_s=0.1, max_parallel_jobs=3)
    payloads = [{"source": baseline_source("grpo"), "seed": s, "label": f"grpo-{s}",
                 "home": str(tmp_path / "home")} for s in range(3)]
    outs = ex.train(payloads, timeout_s=1)
    assert all(o.result.ok for o in outs), [o.result.error for o in outs]
    runs = [json.loads((Path(o.result.value["log"]).parent / "standin_run.json").read_text())
            for o in outs]
    order = sorted(range(3), key=lambda i: runs[i]["start"])
    first, second, third = (runs[i] for i in order)
    assert {first["cuda_visible_devices"], second["cuda_visible_devices"]} == {"0", "1"}
    assert _overlap(first, second)
    ended = min((first, second), key=lambda r: r["end"])
    assert third["start"] >= ended["end"]
    assert third["cuda_visible_devices"] == ended["cuda_visible_devices"] \
        or third["start"] >= max(first["end"], second["end"])
    assert ex.pool.free() == [0, 1]
