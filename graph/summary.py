"""What a finished (or stopped) run leaves behind and prints: ``summary.json`` with the
time shares of its wall clock, the LLM usage table and the leaderboard (graph.runner and
the steering session call these)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agents.analyst import mean_final


def write_summary(archive, app, config, run_id: int, directive: str, home: Path,
                  wall: float, stopped: str | None = None) -> dict:
    cands = archive.candidates(run_id)
    evals = {c.id: archive.evaluations(c.id) for c in cands}
    rows = [{"id": c.id, "name": c.name, "parents": archive.parents(c.id),
             "status": c.status, "fitness": c.fitness,
             **val_means(evals[c.id]), "generation": c.generation,
             "error": c.error}
            for c in cands]
    board = archive.leaderboard(run_id)
    end = time.time()

    def spans(*kinds):
        return [sp for c in cands for sp in c.info.spans(*kinds)]

    # Training and evaluation = the trainer's sandboxed jobs; the verifier's few-step
    # smoke training is reported apart, as is the rest of verification (static and
    # sandboxed hook checks), so each reading of "orchestration" can be taken.
    lo = end - wall
    train = _covered(spans("train"), lo, end)
    smoke = _covered(spans("train", "smoke"), lo, end) - train
    checks = _covered(spans("train", "verify"), lo, end) - train - smoke
    from trainers.local.trainer import phase_totals
    # the training jobs' CPU by trainer phase, summed over every archived seed (None
    # unless each has its split: a VERL run, an archive from before the split)
    by_phase = phase_totals([(e.metrics or {}).get("cpu_seconds") for c in cands
                             for e in evals[c.id]])
    summary = {"run_id": run_id, "directive": directive, "candidates": rows,
               "best": ({"id": board[0].candidate_id, "name": board[0].name,
                         "fitness": board[0].fitness} if board else None),
               "wall_seconds": wall,
               "time_shares": {"training_and_evaluation": train / wall,
                               "smoke_training": smoke / wall,
                               "verification_checks": checks / wall,
                               "orchestration": max(0.0, 1 - (train + smoke + checks) / wall)},
               "training_cpu_by_phase": by_phase,
               "llm": llm_usage(home, run_id), "stopped": stopped}
    out = home / "runs" / str(run_id)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "summary.json")
    return summary


def llm_usage(home: Path, run_id: int) -> dict:
    """The run's LLM calls summed (agents.calls.Ledger.totals), with the price table's
    date."""
    from agents import calls
    from agents.prices import PRICES_AS_OF

    return {**calls.ledger_for(home).totals(run_id), "prices_as_of": PRICES_AS_OF}


def print_llm_usage(usage: dict, console: Console) -> None:
    if not usage.get("calls"):
        return
    t = Table(title=f"LLM calls (cost at list prices of {usage['prices_as_of']})")
    for col in ("role", "calls", "cached", "input tok", "output tok", "USD"):
        t.add_column(col, justify="left" if col == "role" else "right")
    rows = list(usage["by_role"].items()) + [("total", usage)]
    for role, u in rows:
        t.add_row(role, str(u["calls"]), str(u["cached_calls"]), f"{u['input_tokens']:,}",
                  f"{u['output_tokens']:,}", f"{u['cost_usd']:.4f}")
    console.print(t)
    notes = []
    if usage["estimated_calls"]:
        notes.append(f"{usage['estimated_calls']} call(s) without usage metadata: their "
                     "tokens are estimated")
    if usage["unpriced_calls"]:
        notes.append(f"{usage['unpriced_calls']} call(s) to models not in the price "
                     "table cost 0 here (POISE_PRICES adds prices)")
    for n in notes:
        console.print(f"[dim]{n}[/dim]")


def _covered(spans: list, lo: float, hi: float) -> float:
    """Seconds of [lo, hi] covered by the union of ``spans`` ([start, end] pairs)."""
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in clipped:
        if cur_b is None or a > cur_b:
            total += 0.0 if cur_b is None else cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    return total + (0.0 if cur_b is None else cur_b - cur_a)


def val_means(evaluations) -> dict:
    """The mean val Overall and length over a candidate's evaluations (None without one)."""
    means = mean_final([e.metrics["val"] for e in evaluations
                        if isinstance((e.metrics or {}).get("val"), dict)])
    return {k: means.get(k) for k in ("overall", "length")}


def print_leaderboard(archive, run_id: int, console: Console) -> None:
    t = Table(title=f"run {run_id}: leaderboard (val split: fitness, Overall and length, "
                    "means over seeds)")
    for col in ("#", "candidate", "gen", "parents", "fitness", "sd", "Overall", "length",
                "seeds"):
        t.add_column(col, justify="left" if col == "candidate" else "right")
    for i, s in enumerate(archive.leaderboard(run_id), 1):
        m = val_means(archive.evaluations(s.candidate_id))
        t.add_row(str(i), s.name, str(s.generation), ",".join(map(str, s.parent_ids)) or "-",
                  f"{s.fitness:.2f}", f"{s.fitness_sd:.2f}" if s.seeds > 1 else "-",
                  _num(m["overall"]), _num(m["length"]), str(s.seeds))
    console.print(t)
    failed = [c for c in archive.candidates(run_id) if c.status != "evaluated"]
    for c in failed:
        console.print(f"[yellow]{c.name}[/yellow] {c.status}: {(c.error or '')[:160]}")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
