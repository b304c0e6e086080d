"""Where the trainer node's sandboxed training jobs run: local processes or Ray tasks.

    executor = get_executor("ray", address=None)          # cached per process
    outcomes = executor.train(payloads, timeout_s=1200)   # one per payload, in order
    close_executors()                                     # at the end of the run

A payload is the ``train`` task's payload of ``trainers.sandbox.run_in_sandbox``
(``source``, ``seed``, ``home``, ``train_config``, ``warm_config``). Both executors run
each job through ``run_in_sandbox``, so the candidate always executes in a sandbox child
with its timeout and limits, and a job's result is the same wherever it ran (training is
deterministic per seed).

- ``ProcessExecutor``: one thread per job on this machine, each starting a sandbox
  child; at most ``max_parallel_jobs`` at once (a semaphore shared by all of the run's
  concurrent trainer nodes).
- ``RayExecutor``: each job is a Ray task asking for ``num_cpus=1`` and a memory hint;
  Ray's scheduler places and queues them (no scheduler of ours). Without an address it
  starts a local Ray (all cores, no dashboard) and shuts it down at ``close``; with one
  (``auto``, ``host:port`` or ``ray://host:port``) it connects, after a quick TCP probe,
  and ships ``trainers`` and ``evals`` as ``py_modules`` so a remote node needs no
  checkout. The warm start is built once per configuration by a Ray task, saved in the
  run's home and put in the object store; a task whose node cannot see that home (no
  shared filesystem) writes the checkpoint into a node-local cache home first. A Ray
  failure (worker or node died, task error) is that job's failure, with the reason;
  never an exception out of ``train``.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import urlsplit

from trainers.sandbox import SandboxResult, run_in_sandbox

KINDS = ("process", "ray", "verl")
NODE_HOME = "poise-ray-home"  # a node's own warm-start cache, under its temp dir
PROBE_TIMEOUT_S = 5.0


class ExecutorUnavailable(RuntimeError):
    """The chosen executor cannot be used (e.g. the Ray address is unreachable)."""


@dataclass
class JobOutcome:
    result: SandboxResult
    span: tuple[float, float]  # wall-clock (epoch s) start and end of the sandboxed job


ProgressFn = Callable[[str, int, int, dict], None]   # (label, seed, step, metrics row)
DoneFn = Callable[[int, JobOutcome], None]           # (payload index, its outcome)


class Executor(Protocol):
    """Every executor takes the same arguments. ``on_progress`` gets each job's step
    metrics as they come (the Ray executor: once, at the job's end); ``on_done`` each
    job's outcome as it finishes. ``name`` is how the executor runs jobs (process, ray,
    verl); ``backend`` the trainer that produced a job's result, as archived with each
    evaluation (``local`` for the CPU trainer, on processes or Ray tasks; ``verl``);
    ``describe()`` the line the run header shows."""

    name: str
    backend: str

    def describe(self) -> str: ...

    def train(self, payloads: list[dict], *, timeout_s: float,
              on_progress: ProgressFn | None = None,
              on_done: DoneFn | None = None) -> list[JobOutcome]: ...

    def close(self) -> None: ...


def failed(error: str, began: float, ended: float | None = None) -> JobOutcome:
    """A job that never produced a sandbox result (the executor itself failed)."""
    ended = time.time() if ended is None else ended
    return JobOutcome(SandboxResult(False, {}, error, "executor", "", ended - began),
                      (began, ended))


# ----------------------------------------------------------------------------- processes

class ProcessExecutor:
    name = "process"
    backend = "local"

    def __init__(self, max_parallel_jobs: int):
        assert max_parallel_jobs >= 1, "max_parallel_jobs must be at least 1"
        self.max_parallel_jobs = max_parallel_jobs
        self.slots = threading.BoundedSemaphore(max_parallel_jobs)

    def describe(self) -> str:
        return f"local CPU, up to {self.max_parallel_jobs} sandboxed processes at once"

    def train(self, payloads: list[dict], *, timeout_s: float,
              on_progress: ProgressFn | None = None,
              on_done: DoneFn | None = None) -> list[JobOutcome]:
        outcomes: list[JobOutcome | None] = [None] * len(payloads)
        prebuild_compiled(payloads)

        def one(i: int) -> None:
            p = payloads[i]
            rows = None
            if on_progress is not None:
                rows = lambda row: on_progress(p.get("label", "candidate"),  # noqa: E731
                                               p["seed"], int(row["step"]), row)
            with self.slots:
                began = time.time()
                try:
                    res = run_in_sandbox("train", p, timeout_s=timeout_s, on_progress=rows)
                    outcomes[i] = JobOutcome(res, (began, time.time()))
                except Exception as e:  # noqa: BLE001 - e.g. no process could be started
                    outcomes[i] = failed(f"could not run the sandbox: {e}", began)
            if on_done is not None:
                on_done(i, outcomes[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return outcomes

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- Ray

def _node_home(home: str) -> Path:
    """The driver's home when this node can write it (same machine or a shared
    filesystem), else this node's own cache home."""
    path = Path(home)
    if path.is_dir() and os.access(path, os.W_OK):
        return path
    return Path(tempfile.gettempdir()) / NODE_HOME


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_warm_start(payload: dict) -> bytes:
    """Build (or load) the payload's warm start in this node's home; its checkpoint
    bytes. Trusted code only: no candidate is involved. (The build trains on one thread
    itself, so every node gets the same weights.)"""
    from trainers.local.warmstart import checkpoint_path, load_or_build
    from trainers.sandbox.tasks import warm_start_config

    warm = warm_start_config(payload)
    home = _node_home(payload["home"])
    load_or_build(warm, home)
    return checkpoint_path(warm, home).read_bytes()


def prebuild_compiled(payloads: list[dict]) -> dict[str, str | None]:
    """Build (once per machine) and load here, in the trusted parent, the compiled
    engine's decode step for every CPU payload that trains with it, so that no job's
    clock pays for the build and a job's sandboxed setup only loads it. Package key ->
    None, or why it is not available (those jobs decode eagerly and say so)."""
    from trainers.sandbox.tasks import train_config, warm_start_config

    wanted = {}
    for p in payloads:
        if p.get("device", "cpu") == "cpu" and train_config(p).engine == "compiled":
            model = warm_start_config(p).model
            wanted.setdefault(repr(model), model)
    if not wanted:
        return {}
    from trainers.local import compiled
    return {compiled.package_key(m): compiled.prepare(m) for m in wanted.values()}


def train_job(payload: dict, timeout_s: float, warm_blob: bytes | None) -> dict:
    """One sandboxed training job, on a Ray worker: the sandbox result and its span."""
    from trainers.local.warmstart import checkpoint_path
    from trainers.sandbox.tasks import warm_start_config

    home = _node_home(payload["home"])
    ckpt = checkpoint_path(warm_start_config(payload), home)
    if warm_blob is not None and not ckpt.is_file():
        _write_atomic(ckpt, warm_blob)
    prebuild_compiled([payload])
    began = time.time()
    res = run_in_sandbox("train", {**payload, "home": str(home)}, timeout_s=timeout_s)
    return {"result": res.as_dict(), "span": (began, time.time()),
            "node": os.uname().nodename}


def check_address(address: str) -> None:
    """Raise ExecutorUnavailable at once if ``host:port`` / ``ray://host:port`` does not
    accept a TCP connection (Ray itself would retry for minutes)."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    if not parts.hostname or not parts.port:
        raise ExecutorUnavailable(f"--ray-address {address!r}: expected auto, HOST:PORT or "
                                  "ray://HOST:PORT")
    try:
        socket.create_connection((parts.hostname, parts.port), PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise ExecutorUnavailable(f"cannot reach the Ray cluster at {address}: "
                                  f"{e.strerror or e}") from None


class RayExecutor:
    name = "ray"
    backend = "local"

    def __init__(self, address: str | None = None, *, task_memory_mb: int = 1536,
                 max_retries: int = 1, num_cpus: int | None = None):
        import ray

        self.address = address
        self.task_memory_mb = task_memory_mb
        self.max_retries = max_retries
        self.started = address is None
        self._warm: dict[str, object] = {}  # warm-start key -> ObjectRef of its bytes
        self._warm_lock = threading.Lock()
        if ray.is_initialized():
            raise ExecutorUnavailable("Ray is already initialized in this process; close "
                                      "the other executor first")
        options = dict(log_to_driver=False, logging_level=logging.WARNING)
        if address is None:  # "local": a new Ray even where RAY_ADDRESS is set
            try:
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                         include_dashboard=False, **options)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ExecutorUnavailable(f"cannot start a local Ray: {_first_line(e)}"
                                          ) from None
        else:
            check_address(address)
            import evals
            import trainers
            try:
                ray.init(address=address, runtime_env={"py_modules": [trainers, evals]},
                         **options)
            except (ConnectionError, RuntimeError, ValueError) as e:
                reason = _first_line(e).split(". ")[0].rstrip(".")
                if address != "auto" and not os.environ.get("RAY_AUTH_MODE"):
                    # Ray sends its token to an explicit address only when told to.
                    reason += (" (a cluster with token authentication needs "
                               "RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or "
                               "~/.ray/auth_token)")
                raise ExecutorUnavailable(f"cannot connect to the Ray cluster at {address}: "
                                          f"{reason}") from None
        self._build = ray.remote(num_cpus=1, memory=task_memory_mb << 20,
                                 max_retries=max_retries)(build_warm_start)
        self._train = ray.remote(num_cpus=1, memory=task_memory_mb << 20,
                                 max_retries=max_retries)(train_job)

    def describe(self) -> str:
        import ray

        cpus = ray.cluster_resources().get("CPU", 0)
        where = "a local Ray" if self.started else f"the Ray cluster at {self.address}"
        return f"local CPU, Ray tasks on {where} ({cpus:g} CPUs)"

    def _warm_ref(self, payload: dict):
        """The ObjectRef of the payload's warm-start bytes, built once by a Ray task and
        also saved in the driver's home."""
        import ray

        from trainers.local.warmstart import checkpoint_path
        from trainers.sandbox.tasks import warm_start_config

        warm = warm_start_config(payload)
        with self._warm_lock:  # concurrent trainer nodes wait for one build
            if warm.key() not in self._warm:
                path = checkpoint_path(warm, Path(payload["home"]))
                if path.is_file():
                    blob = path.read_bytes()
                else:
                    trusted = {k: payload[k] for k in ("home", "warm_config") if k in payload}
                    blob = ray.get(self._build.remote(trusted))  # no candidate code
                    if not path.is_file():  # a remote node built it
                        _write_atomic(path, blob)
                self._warm[warm.key()] = ray.put(blob)
            return self._warm[warm.key()]

    def train(self, payloads: list[dict], *, timeout_s: float,
              on_progress: ProgressFn | None = None,
              on_done: DoneFn | None = None) -> list[JobOutcome]:
        import ray

        began = time.time()
        payloads = [{**p, "home": str(Path(p["home"]).resolve())} for p in payloads]
        try:
            warm = self._warm_ref(payloads[0]) if payloads else None
        except ray.exceptions.RayError as e:
            outcomes = [failed(f"building the warm start on Ray failed: {ray_reason(e)}",
                               began) for _ in payloads]
            for i, o in enumerate(outcomes):
                if on_done is not None:
                    on_done(i, o)
            return outcomes
        refs = [self._train.remote(p, timeout_s, warm) for p in payloads]
        index = {ref: i for i, ref in enumerate(refs)}
        outcomes: list[JobOutcome | None] = [None] * len(refs)
        waiting = list(refs)
        while waiting:  # as they finish, not in submission order
            (ref,), waiting = ray.wait(waiting, num_returns=1)
            i = index[ref]
            try:
                out = ray.get(ref)
                outcomes[i] = JobOutcome(SandboxResult(**out["result"]), tuple(out["span"]))
            except ray.exceptions.RayError as e:
                outcomes[i] = failed(ray_reason(e), began)
            curve = outcomes[i].result.value.get("curve") if outcomes[i].result.ok else None
            if on_progress is not None and curve:  # a Ray task reports once, at its end
                p = payloads[i]
                on_progress(p.get("label", "candidate"), p["seed"], int(curve[-1]["step"]),
                            curve[-1])
            if on_done is not None:
                on_done(i, outcomes[i])
        return outcomes

    def close(self) -> None:
        import ray

        ray.shutdown()  # stops the local Ray we started; only disconnects from a cluster


def ray_reason(e: Exception) -> str:
    """One line saying what went wrong on Ray."""
    import ray

    if isinstance(e, ray.exceptions.RayTaskError):
        cause = e.cause if isinstance(e.cause, BaseException) else None
        what = f"{type(cause).__name__}: {cause}" if cause else str(e).splitlines()[0]
        return f"the Ray task failed: {what}"[:600]
    if isinstance(e, ray.exceptions.WorkerCrashedError):
        return ("the Ray worker died while training (killed, or it crashed; the sandbox "
                "child died with it)")
    if isinstance(e, (ray.exceptions.NodeDiedError, ray.exceptions.LocalRayletDiedError)):
        return "the Ray node running the job died"
    if isinstance(e, ray.exceptions.TaskCancelledError):
        return "the Ray task was cancelled"
    return f"Ray error: {type(e).__name__}: {_first_line(e)}"[:600]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ----------------------------------------------------------------------------- verl

class VerlExecutor:
    """Each job is a verl GRPO run of the candidate (trainers/verl/backend.py), up to
    ``max_parallel_jobs`` (the loop's ``--width``) at once, one thread each (a semaphore
    shared by all of the run's concurrent trainer nodes); outcomes keep payload order and
    ``on_done`` is called as each job ends.

    One node (no ``ray_address``): the node's GPUs are a pool (trainers/verl/pool.py; the
    config's ``gpus``, else every GPU visible here). A job waits, first come first served,
    for ``n_gpus_per_node`` free GPUs and runs with ``CUDA_VISIBLE_DEVICES`` set to them,
    so the Ray instance it starts sees only those: width N runs
    ``min(N, pool size // n_gpus_per_node)`` jobs at once, the others queue, and no two
    share a GPU. A job that needs more GPUs than the pool holds fails at once. This
    assumes no Ray cluster runs on the node (``ray start``, ``$RAY_ADDRESS``): verl's
    ``ray.init()`` would join it and its GPUs would not be ours to pin; set
    ``ray_address`` then. With no GPU visible and no ``gpus`` there is nothing to pin and
    jobs run unpinned (a CPU stand-in entrypoint; real verl reports that it has no GPU).

    Ray cluster (``ray_address``): no local pool; width N has up to N ``ray job submit``
    jobs on the cluster at once. Their entrypoint, verl's driver, needs no GPU (it starts
    a 1-CPU TaskRunner; the workers' placement groups hold the GPUs), so no
    ``--entrypoint-num-gpus``: it would reserve GPUs on top of the placement groups'.
    Hence Ray's job manager starts every submitted job, and verl 0.9.1 does not wait for
    GPUs either: its ResourcePoolManager compares the cluster's *available* GPUs with the
    job's ``n_gpus_per_node * nnodes`` before creating placement groups and raises when
    too few are free ("Total available GPUs ... is less than total desired GPUs"). So set
    ``cluster_gpus`` (the GPUs POISE may use on the cluster): a job is submitted only when
    its ``n_gpus_per_node * nnodes`` fit in what the run's running jobs leave, the others
    wait here, first come first served. Without it every job up to ``--width`` is
    submitted at once and one that does not fit fails.

    The payload's ``train_config`` / ``warm_config`` belong to the local trainer and are
    ignored: the verl trainer config file decides the budget. The candidate runs in
    verl's processes, not in the sandbox: the verifier has already run its hooks in the
    sandbox, and verl's workers are the cluster's isolation. Progress is reported to
    ``on_progress(label, seed, step, metrics)`` after each metrics poll. The poll interval
    is ``$POISE_VERL_POLL_S`` (default 10 s). An interrupted ``train`` (Ctrl-C) stops each
    running job at its next metrics line."""

    name = "verl"
    backend = "verl"

    def __init__(self, trainer_config: str | None = None, poll_s: float = 10.0,
                 max_parallel_jobs: int = 1):
        from trainers.verl.config import ConfigError, load_verl_config
        from trainers.verl.pool import GpuPoolError, node_pool, visible_gpus

        assert max_parallel_jobs >= 1, "max_parallel_jobs must be at least 1"
        try:
            self.config = load_verl_config(trainer_config)  # a bad config fails here
        except ConfigError as e:
            raise ExecutorUnavailable(f"verl trainer config: {e}") from None
        self.trainer_config = trainer_config
        self.poll_s = poll_s
        self.max_parallel_jobs = max_parallel_jobs
        self.slots = threading.BoundedSemaphore(max_parallel_jobs)
        self.pool = None
        self.cluster = None  # on a Ray cluster: GPU slots for the jobs' sizes, not pinned
        if self.config.ray_address and self.config.cluster_gpus:
            from trainers.verl.pool import GpuPool

            self.cluster = GpuPool(list(range(self.config.cluster_gpus)))
        if not self.config.ray_address:
            gpus = self.config.gpus or visible_gpus()
            try:
                self.pool = node_pool(gpus) if gpus else None
            except GpuPoolError as e:
                raise ExecutorUnavailable(f"verl GPUs: {e}") from None

    def describe(self) -> str:
        runs = f"verl GRPO runs of {self.config.model}, up to {self.max_parallel_jobs} at once"
        if self.config.ray_address:
            budget = (f", as many as fit its {self.config.cluster_gpus} GPUs (the others "
                      f"wait)" if self.cluster is not None else "")
            return f"{runs}, submitted to the Ray cluster at {self.config.ray_address}{budget}"
        if self.pool is None:
            return f"{runs} on this node (no GPU visible: jobs are not pinned to GPUs)"
        return (f"{runs} on this node, {self.config.n_gpus_per_node} of GPUs "
                f"{list(self.pool.gpus)} each")

    def train(self, payloads: list[dict], *, timeout_s: float,
              on_progress: ProgressFn | None = None,
              on_done: DoneFn | None = None) -> list[JobOutcome]:
        # timeout_s is the CPU testbed's limit (Context.train_timeout_s): a verl job's
        # limits are its trainer config's timeout_s / stall_timeout_s.
        outcomes: list[JobOutcome | None] = [None] * len(payloads)
        stop = threading.Event()

        def one(i: int) -> None:
            with self.slots:
                outcomes[i] = self._job(payloads[i], on_progress, stop)
            if on_done is not None:
                on_done(i, outcomes[i])

        # each thread runs in a copy of the caller's context: the callbacks may read
        # context variables (LangGraph's runnable config, tracing)
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(one, i),
                                    name=f"verl-job-{i}") for i in range(len(payloads))]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            stop.set()
            raise
        return outcomes

    def _job(self, p: dict, on_progress: ProgressFn | None,
             stop: threading.Event) -> JobOutcome:
        """One payload's verl run, on GPUs leased from the pool for its whole length."""
        from trainers.verl.backend import VerlTrainingError, train_candidate
        from trainers.verl.pool import GpuPoolError

        label, seed = p.get("label", "candidate"), p["seed"]

        def progress(step: int, row: dict) -> None:
            if stop.is_set():
                raise _Stopped("the executor was interrupted")  # launch stops the job
            if on_progress is not None:
                on_progress(label, seed, step, row)

        began = time.time()
        try:
            if self.pool is not None:
                lease = self.pool.lease(self.config.n_gpus_per_node)
            elif self.cluster is not None:  # a share of the cluster's GPUs, placed by Ray
                lease = _unpinned(self.cluster.lease(self.config.n_gpus_per_node
                                                     * self.config.nnodes))
            else:
                lease = contextlib.nullcontext(None)
            with lease as gpus:
                if stop.is_set():
                    raise _Stopped("not started: the executor was interrupted")
                began = time.time()  # the job's span starts once it has its GPUs
                value = train_candidate(p["source"], label, seed, p["home"],
                                        self.trainer_config, on_progress=progress,
                                        poll_s=self.poll_s, visible_devices=gpus)
            return JobOutcome(SandboxResult(True, value, "", "ok", "", time.time() - began),
                              (began, time.time()))
        except (GpuPoolError, _Stopped) as e:
            return failed(str(e), began)
        except VerlTrainingError as e:
            return JobOutcome(SandboxResult(False, {}, str(e)[:1000], "crash", "",
                                            time.time() - began), (began, time.time()))
        except Exception as e:  # noqa: BLE001 - e.g. the plugin refused the candidate
            return failed(f"verl launch failed: {type(e).__name__}: "
                          f"{_first_line(e)}"[:1000], began)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _unpinned(lease):
    """A cluster lease: it holds GPU slots but names no device (Ray places the job)."""
    with lease:
        yield None


class _Stopped(Exception):
    """Raised from a job's progress callback so that ``launch`` stops its process."""


# ----------------------------------------------------------------------------- the registry

_executors: dict[tuple, Executor] = {}
_lock = threading.Lock()


def get_executor(kind: str, *, address: str | None = None, max_parallel_jobs: int = 1,
                 task_memory_mb: int = 1536, max_retries: int = 1,
                 trainer_config: str | None = None) -> Executor:
    """The process-wide executor of ``kind`` (created on first use; raises
    ExecutorUnavailable when it cannot be)."""
    if kind not in KINDS:
        raise ExecutorUnavailable(f"unknown executor {kind!r}; choose one of {KINDS}")
    key = (kind, max_parallel_jobs) if kind == "process" else \
        (kind, trainer_config, max_parallel_jobs) if kind == "verl" else \
        (kind, address, task_memory_mb, max_retries)
    with _lock:
        if key not in _executors:
            if kind == "verl":
                _executors[key] = VerlExecutor(
                    trainer_config, poll_s=float(os.environ.get("POISE_VERL_POLL_S", "10")),
                    max_parallel_jobs=max_parallel_jobs)
            elif kind == "process":
                _executors[key] = ProcessExecutor(max_parallel_jobs)
            else:
                _executors[key] = RayExecutor(address, task_memory_mb=task_memory_mb,
                                              max_retries=max_retries)
        return _executors[key]


def close_executors() -> None:
    with _lock:
        for executor in _executors.values():
            executor.close()
        _executors.clear()


__all__ = ["Executor", "ExecutorUnavailable", "JobOutcome", "ProcessExecutor",
           "RayExecutor", "VerlExecutor", "get_executor", "close_executors", "check_address",
           "KINDS"]
