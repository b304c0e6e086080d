"""The same run on each training executor, side by side:
``python -m graph.executor_bench --config tests/data/tiny_context.json --candidates 4
--seeds 2 --out out/executors``.

Each executor gets a fresh home and one ``python -m graph.run`` (builtin agents, same
``--seed``), timed from the outside (so a Ray start is counted). The archives are then
compared by slot (round, slot): names, statuses, errors, code, lineage, and per seed the
fitness, held-out metrics and learning curves; they must be identical, since training is
deterministic per seed. Prints a table and writes ``<out>/executors.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent


def run_loop(home: Path, executor: str, *, directive: str, candidates: int, seeds: int,
             config: Path | None, smoke: bool = False, width: int = 2,
             ray_address: str | None = None, timeout_s: float = 3600) -> dict:
    """One ``graph.run`` in a fresh ``home``; its outside wall time and summary."""
    shutil.rmtree(home, ignore_errors=True)
    cmd = [sys.executable, "-m", "graph.run", "--home", str(home), "--directive", directive,
           "--candidates", str(candidates), "--seeds", str(seeds), "--width", str(width),
           "--executor", executor, "--quiet"]
    cmd += ["--config", str(config)] if config else []
    cmd += [] if smoke else ["--no-smoke"]
    cmd += ["--ray-address", ray_address] if ray_address and executor == "ray" else []
    began = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    wall = time.time() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{executor} run failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    summary = json.loads((home / "runs" / "1" / "summary.json").read_text())
    return {"executor": executor, "home": str(home), "wall_s": wall,
            "loop_wall_s": summary["wall_seconds"], "stdout": proc.stdout,
            "summary": summary}


def snapshot(home: Path, run_id: int = 1) -> tuple[dict, list]:
    """The archive's content that must not depend on where training ran, keyed by
    "round:slot"; and the training jobs' wall-clock spans.

    Ids depend on which parallel branch finished first, and so does which of two
    siblings that proposed the same name keeps it (the later one becomes ``name-2``,
    Archive.unique_name): per slot the snapshot holds the proposed name, and per round
    the archived names as a sorted list."""
    from memory.archive import Archive

    with Archive(home) as archive:
        cands = archive.candidates(run_id)
        slot = {c.id: f"{c.info.round}:{c.info.slot}" for c in cands}
        out = {}
        spans = [sp for c in cands for sp in c.info.train_spans]
        for c in cands:
            evals = sorted(archive.evaluations(c.id), key=lambda e: e.seed)
            out[slot[c.id]] = {
                "proposed_name": _proposed_name(c.proposal) or c.name, "status": c.status,
                "generation": c.generation,
                "error": c.error, "code_hash": c.code_hash,
                "parents": sorted(slot[p] for p in archive.parents(c.id)),
                "fitness": c.fitness,
                "seeds": [{"seed": e.seed, "fitness": e.fitness, "val": e.metrics.get("val"),
                           "curves": e.curves} for e in evals]}
        names = {str(rnd): sorted(c.name for c in cands if c.generation == rnd)
                 for rnd in sorted({c.generation for c in cands})}
        return {"slots": out, "names_by_round": names}, spans


def _proposed_name(proposal: str) -> str | None:
    """The name the scientist proposed (the archived proposal text's ``name:`` line)."""
    first = (proposal or "").split("\n", 1)[0]
    return first[len("name: "):].strip() if first.startswith("name: ") else None


def differences(a: dict, b: dict, path: str = "") -> list[str]:
    """Where two snapshots differ, as "path: a != b" lines (empty: identical)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'second' if k not in a else 'first'}")
            else:
                out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:80]} != {str(b)[:80]}"]


def compare(out: Path, executors: list[str], **run_options) -> dict:
    """Run each executor in ``out/<executor>``, compare the archives with the first's,
    write ``out/executors.json``; the report."""
    out.mkdir(parents=True, exist_ok=True)
    runs = {e: run_loop(out / e, e, **run_options) for e in executors}
    snaps, spans = {}, {}
    for e in executors:
        snaps[e], spans[e] = snapshot(Path(runs[e]["home"]))
    first = executors[0]
    diffs = {e: differences(snaps[first], snaps[e]) for e in executors[1:]}
    report = {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in run_options.items()},
        "runs": {e: {"wall_s": round(r["wall_s"], 1), "loop_wall_s": round(r["loop_wall_s"], 1),
                     "candidates": len(snaps[e]["slots"]),
                     "evaluated": sum(c["status"] == "evaluated"
                                      for c in snaps[e]["slots"].values()),
                     "jobs": len(spans[e]),
                     "job_wall_s_mean": round(sum(b - a for a, b in spans[e])
                                              / max(1, len(spans[e])), 2),
                     "training_share": round(
                         r["summary"]["time_shares"]["training_and_evaluation"], 3)}
                 for e, r in runs.items()},
        "identical": all(not d for d in diffs.values()),
        "differences": {e: d[:50] for e, d in diffs.items()},
        "reference": first}
    (out / "executors.json").write_text(json.dumps(report, indent=2))
    return report


def print_report(report: dict, console: Console) -> None:
    t = Table(title="the same run on each executor")
    for col in ("executor", "wall s", "loop s", "evaluated", "jobs", "job s", "train %",
                "same"):
        t.add_column(col, justify="left" if col == "executor" else "right")
    for e, r in report["runs"].items():
        same = "-" if e == report["reference"] else (
            "yes" if not report["differences"][e] else
            f"no ({len(report['differences'][e])} differences)")
        t.add_row(e, f"{r['wall_s']:.1f}", f"{r['loop_wall_s']:.1f}",
                  f"{r['evaluated']}/{r['candidates']}", str(r["jobs"]),
                  f"{r['job_wall_s_mean']:.1f}",
                  f"{100 * r['training_share']:.0f}%", same)
    console.print(t)
    console.print("wall s: the whole command (a Ray start included); loop s: the loop "
                  "alone; job s: one sandboxed training job, mean wall seconds from its "
                  "start to its result; train %: the loop's share spent training; same: "
                  f"the archive is identical to the {report['reference']} run's")
    for e, d in report["differences"].items():
        for line in d[:10]:
            console.print(f"[yellow]{e}[/yellow] {line}", markup=True, highlight=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m graph.executor_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--directive", default="accurate and concise")
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--width", type=int, default=2)
    p.add_argument("--config", type=Path, default=None,
                   help="Context JSON for graph.run (e.g. tests/data/tiny_context.json)")
    p.add_argument("--smoke", action="store_true", help="keep the verifier's smoke run")
    p.add_argument("--executors", default="process,ray",
                   help="comma-separated; the first is the reference (default process,ray)")
    p.add_argument("--ray-address", default=None, help="a Ray cluster for the ray run")
    p.add_argument("--out", type=Path, default=Path("out/executors"))
    args = p.parse_args(argv)
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    if not executors or set(executors) - {"process", "ray"}:
        p.error("--executors: a comma-separated list of process and ray")
    console = Console()
    try:
        report = compare(args.out, executors, directive=args.directive,
                         candidates=args.candidates, seeds=args.seeds, width=args.width,
                         config=args.config, smoke=args.smoke, ray_address=args.ray_address)
    except RuntimeError as e:
        Console(stderr=True).print(f"error: {e}", soft_wrap=True, markup=False)
        return 1
    print_report(report, console)
    console.print(f"written: {args.out / 'executors.json'}")
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
