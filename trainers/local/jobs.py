"""Run (algorithm, seed) training jobs for compare, bench and the campaign's stages.

There is one way to run candidate code: every job is a ``train`` task of
``trainers.sandbox.run_in_sandbox`` on the local ``ProcessExecutor`` (a sandbox child per
job, at most ``workers`` at once, each single-threaded with OMP_WAIT_POLICY=PASSIVE: on a
2-core machine two such processes give ~30% more throughput than one 2-thread process),
exactly as the loop's trainer node runs them. A hostile or crashing module is that job's
failure with the sandbox's reason; nothing it does outlives the job or lands outside its
scratch directory. The warm start is built once in the parent and read from its cache by
the children. Step progress flows back to one rich progress display.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from evals.tasks import OVERALL_WEIGHTS, TRANSFER_WEIGHTS

# A job's wall-clock bound: generous (a default-budget job takes ~100 s alone, ~2x that
# beside others), yet it stops a candidate that hangs or sleeps.
BASE_TIMEOUT_S = 600.0
TIMEOUT_S_PER_STEP = 20.0


@dataclass(frozen=True)
class Job:
    label: str           # display name of the algorithm
    source: str          # candidate source text
    seed: int
    home: str
    train_config: dict   # TrainConfig fields (nested EvalConfigs as dicts)
    warm_config: dict | None = None  # WarmStartConfig override (tests use a tiny one)
    device: str = "cpu"  # where the sandboxed job trains (trainers/local/device.py)

    def payload(self) -> dict:
        """The sandbox ``train`` task's payload (``device`` only when not the CPU, so a
        CPU job's payload is what it always was)."""
        return {"source": self.source, "seed": self.seed, "home": self.home,
                "label": self.label, "train_config": self.train_config,
                **({"warm_config": self.warm_config} if self.warm_config else {}),
                **({"device": self.device} if self.device != "cpu" else {})}


def job_timeout_s(job: Job) -> float:
    steps = int(job.train_config.get("steps", 100))
    budget = job.train_config.get("cpu_budget")
    return BASE_TIMEOUT_S + TIMEOUT_S_PER_STEP * steps + (2 * float(budget) if budget else 0)


def outcome_dict(job: Job, outcome) -> dict:
    """A sandboxed job's outcome as compare's result record (``status`` ok | failed)."""
    base = {"algorithm": job.label, "seed": job.seed}
    res = outcome.result
    if res.ok:
        return {**base, "status": "ok", **res.value, "algorithm": job.label,
                "peak_rss_mb": res.peak_rss_mb, "wall_s": res.wall_s}
    return {**base, "status": "failed", "kind": res.kind, "error": f"{res.kind}: {res.error}"}


def run_jobs(jobs: list[Job], workers: int, results_dir: Path | None = None,
             quiet: bool = False, timeout_s: float | None = None) -> list[dict]:
    """Run jobs in at most ``workers`` sandbox children at once; results already in
    ``results_dir`` are reused (a killed compare resumes), new ones are written there
    as they finish. One record per job, in order. ``timeout_s``: each job's wall-clock
    and CPU bound (default: ``job_timeout_s``, from the budget)."""
    from trainers.executors import ProcessExecutor

    results: dict[int, dict] = {}
    todo = []
    for i, job in enumerate(jobs):
        cached = _cached(results_dir, job)
        if cached is not None:
            results[i] = cached
        else:
            todo.append(i)
    if not todo:
        return [results[i] for i in range(len(jobs))]
    executor = ProcessExecutor(workers)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=quiet) as bar:
        total = sum(int(jobs[i].train_config.get("steps", 100)) for i in todo)
        overall = bar.add_task(f"{len(todo)} runs", total=total)
        done_steps: dict[tuple[str, int], int] = {}

        def progress(label, seed, step, row):
            prev = done_steps.get((label, seed), 0)
            done_steps[(label, seed)] = step
            bar.advance(overall, step - prev)

        def finished(k: int, outcome) -> None:
            i = todo[k]
            results[i] = outcome_dict(jobs[i], outcome)
            _store(results_dir, jobs[i], results[i])
            if not quiet:
                bar.console.log(escape(f"{jobs[i].label} seed {jobs[i].seed}: "
                                       f"{results[i]['status']}"
                                       + (f" ({results[i]['error'][:200]})"
                                          if results[i]["status"] != "ok" else "")))

        executor.train([jobs[i].payload() for i in todo],
                       timeout_s=timeout_s or max(job_timeout_s(jobs[i]) for i in todo),
                       on_progress=progress, on_done=finished)
    return [results[i] for i in range(len(jobs))]


def _result_path(results_dir: Path, job: Job) -> Path:
    # What the result's Overall means is part of its key: a cached result scored by an
    # older formula (testbed v2's greedy add5 accuracy) is never read as this one's.
    keyed = [job.source, job.train_config, job.warm_config,
             {"overall": OVERALL_WEIGHTS, "transfer": TRANSFER_WEIGHTS}]
    if job.device != "cpu":  # a GPU result is not a CPU result (CPU names unchanged)
        keyed.append(job.device)
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:10]
    return results_dir / f"{job.label}-seed{job.seed}-{key}.json"


def _cached(results_dir: Path | None, job: Job) -> dict | None:
    if results_dir is None:
        return None
    path = _result_path(results_dir, job)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if data.get("status") == "ok" else None


def _store(results_dir: Path | None, job: Job, result: dict) -> None:
    if results_dir is None:
        return
    results_dir.mkdir(parents=True, exist_ok=True)
    path = _result_path(results_dir, job)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)
