"""The campaign's stages: search (the loop), promote and test (re-training candidates and
baselines as sandboxed jobs), rediscovery; and the state file that makes them resumable."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from evals.objective import ObjectiveSpec, fitness, seed_fitnesses, shortening, within_margin
from graph.campaign.screen import archived_fitness, screen_reliability

TEST_SEED_OFFSET = 2000      # fresh seeds of the test stage (search uses the run seed)
TRANSFER_SEED_OFFSET = 3000  # fresh seeds of the transfer stage
PROMOTE_SEED_OFFSET = 1000   # fresh seeds of the promotion stage


class CampaignError(Exception):
    """Bad input or an unusable state: one clear line, exit code 2."""


# ----------------------------------------------------------------------------- state

class State:
    """``OUT/state.json``: what finished, so a rerun resumes."""

    def __init__(self, out: Path):
        self.path = out / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, key, default=None):
        return self.data.get(key, default)

    def set(self, key, value) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


def load_config(args) -> dict:
    if args.config is None:
        return {}
    try:
        data = json.loads(args.config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CampaignError(f"cannot read --config {args.config}: {e}") from None
    return data




# ----------------------------------------------------------------------------- stages

def search(args, home: Path, state: State, console: Console) -> int:
    """Stage 1: the loop at the screening budget. Returns the run id; a killed search
    resumes its run (a run killed before its first checkpoint is started afresh)."""
    from graph import runner
    from memory.archive import Archive

    from graph.request import RunRequest

    run_id = state.get("run_id")
    if run_id is not None:
        with Archive(home) as a:
            if a.run(run_id).status == "done":
                console.print(f"search: run {run_id} already finished")
                return run_id
    began = time.time()
    try:
        if run_id is not None:
            try:
                runner.run(RunRequest(home=str(home), resume=run_id, quiet=args.quiet),
                              console)
            except runner.UsageError as e:
                if "no checkpoint" not in str(e):
                    raise
                with Archive(home) as a:
                    a.finish_run(run_id, status="abandoned")
                run_id = None
        if run_id is None:
            request = RunRequest(home=str(home), directive=args.directive,
                                 candidates=args.candidates, steps=args.screen_steps,
                                 seeds=args.screen_seeds,
                                 width=args.width, seed=args.seed, quiet=args.quiet,
                                 selection=args.selection, exclude_genes=args.exclude_genes,
                                 compose_rate=args.compose_rate,
                                 smoke=not args.no_smoke, config=args.config)
            holder = {}

            def remember(rid: int) -> None:
                holder["id"] = rid
                state.set("run_id", rid)

            runner.run(request, console, on_start=remember)
            run_id = holder["id"]
    except runner.UsageError as e:
        raise CampaignError(str(e)) from None
    state.set("search_wall_s", state.get("search_wall_s", 0.0) + time.time() - began)
    return run_id


def transfer_stage(args, home: Path, winner: tuple[str, str], cfg: dict,
                   console: Console) -> dict:
    """Stage 4: the winner, GRPO and every baseline of the test stage trained with RL on
    the transfer families (evals.tasks.TRANSFER_FAMILIES: in the warm start's corpus,
    never searched, selected or promoted on) and scored on their test split, paired
    seeds. An algorithm is what transfers."""
    from trainers.baselines import baseline_source
    from trainers.local.compare import summarize

    names = baseline_names(args)
    label = f"winner:{winner[0]}"
    entries = [(b, baseline_source(b)) for b in names] + [(label, winner[1])]
    seeds = list(range(TRANSFER_SEED_OFFSET, TRANSFER_SEED_OFFSET + args.seeds))
    train_config = {**_train_config(args, cfg, args.steps, "test"), "families": "transfer"}
    results = _run(_jobs(entries, seeds, home, train_config, cfg.get("warm_config")),
                   args, home, console, "transfer")
    rows = summarize(results, [e[0] for e in entries], seeds)  # deltas vs grpo
    best = _best_baseline(rows, names, "transfer")
    return {"rows": rows, "seeds": seeds, "winner_label": label, "best_baseline": best,
            "vs_best_baseline": _vs_best(results, best, label, seeds),
            "cpu_seconds": _cpu(results), "phase_cpu_seconds": _phases(results)}


def _train_config(args, cfg: dict, steps: int | None, split: str) -> dict:
    from trainers.local.trainer import TrainConfig, train_config_from_dict

    tc = train_config_from_dict(cfg.get("train_overrides", {})) if cfg.get(
        "train_overrides") else TrainConfig()
    d = tc.as_dict()
    if steps is not None:
        d["steps"] = steps
    d["final_eval"] = {**d["final_eval"], "split": split}
    return d


def full_steps(args, cfg: dict) -> int:
    """The full training budget of promotion and test: ``--steps``, else the config's
    train overrides', else the trainer's default."""
    return _train_config(args, cfg, args.steps, "val")["steps"]


def _jobs(entries: list[tuple[str, str]], seeds: list[int], home: Path, train_config: dict,
          warm: dict | None):
    from trainers.local.jobs import Job

    return [Job(label, source, seed, str(home), train_config, warm)
            for label, source in entries for seed in seeds]


def _run(jobs, args, home: Path, console: Console, stage: str) -> list[dict]:
    from trainers.local.jobs import run_jobs

    console.rule(f"{stage}: {len(jobs)} training runs")
    results = run_jobs(jobs, args.workers, home / "campaign-cache", quiet=args.quiet,
                       timeout_s=args.job_timeout)
    bad = [r for r in results if r["status"] != "ok"]
    for r in bad:
        console.print(f"[red]{stage}: {r['algorithm']} seed {r['seed']} {r['status']}:[/red] "
                      f"{r.get('error')}")
    return results


def promote(args, home: Path, run_id: int, spec: ObjectiveSpec, cfg: dict,
            console: Console) -> dict:
    """Stage 2: the best distinct candidates and GRPO at the full budget on val, plus a
    fixed random sample of the other screened candidates (not eligible to win) for the
    rank correlation between screening and promotion fitness."""
    import random

    from memory.archive import Archive
    from trainers.baselines import baseline_source
    from trainers.source import code_hash

    with Archive(home) as a:
        reliability = screen_reliability(archived_fitness(a, run_id))
        board = a.leaderboard(run_id)
        distinct, seen = [], {code_hash(baseline_source("grpo"))}
        for s in board:  # best first; one entry per distinct code
            c = a.candidate(s.candidate_id)
            h = code_hash(c.code or "")
            if c.generation == 0 or h in seen:
                continue
            seen.add(h)
            distinct.append((c.name, c.code, s.fitness, s.seeds))
    picked = [(n, code) for n, code, _, _ in distinct[:args.promote]]
    if not picked:
        raise CampaignError(f"run {run_id} has no evaluated candidate to promote")
    rest = distinct[args.promote:]
    k = min(args.rank_sample, len(rest))
    sampled = [(n, code) for n, code, _, _ in
               sorted(random.Random(f"rank-sample:{run_id}").sample(rest, k),
                      key=lambda d: -d[2])]
    screen = {n: {"fitness": f, "seeds": seeds} for n, _, f, seeds in distinct}
    entries = [("grpo", baseline_source("grpo"))] + picked + sampled
    seeds = list(range(PROMOTE_SEED_OFFSET, PROMOTE_SEED_OFFSET + args.promote_seeds))
    results = _run(_jobs(entries, seeds, home, _train_config(args, cfg, args.steps, "val"),
                         cfg.get("warm_config")), args, home, console, "promote")
    by = _by_label(results)
    if "grpo" not in by:
        raise CampaignError("GRPO failed in the promotion stage; nothing to compare with")
    ref = (_mean(by["grpo"], "overall"), _mean(by["grpo"], "length"))
    rows, sample_rows = [], []
    for group, out in ((picked, rows), (sampled, sample_rows)):
        for label, _ in group:
            runs = by.get(label, [])
            if not runs:
                continue
            fits = seed_fitnesses(spec, [(r["final"]["overall"], r["final"]["length"])
                                         for r in runs], ref)
            overall, length = _mean(runs, "overall"), _mean(runs, "length")
            out.append({"name": label, "fitness": float(np.mean(fits)),
                        "overall": overall, "length": length,
                        "delta_overall": overall - ref[0],
                        "shorter_pct": shortening(length, ref[1]),
                        "within_margin": within_margin(spec, overall - ref[0]),
                        "seeds": len(runs), "screen_fitness": screen[label]["fitness"],
                        "screen_seeds": screen[label]["seeds"],
                        "by_step": step_deltas(runs, by["grpo"])})
    if not rows:
        raise CampaignError("every promoted candidate failed to train")
    rows.sort(key=lambda r: -r["fitness"])
    winner, rule = pick_winner(rows, spec)
    source = dict(picked)[winner["name"]]
    return {"rows": rows, "winner": winner["name"], "winner_source": source,
            "winner_rule": rule,
            "reference": {"overall": ref[0], "length": ref[1]}, "seeds": seeds,
            "sampled_rows": sample_rows,
            "screen_vs_promotion": rank_correlation(rows + sample_rows),
            "screen_reliability": reliability,
            "cpu_seconds": _cpu(results), "phase_cpu_seconds": _phases(results)}


def step_deltas(runs: list[dict], ref_runs: list[dict]) -> list[dict]:
    """A candidate's paired difference from GRPO at each evaluation of training (the
    curve evaluations and the final one), over the seeds both trained: where along the
    budget a mechanism's cost or gain shows, e.g. whether the screen's shorter budget
    could have seen it."""
    ref = {r["seed"]: r for r in ref_runs}

    def at(run: dict) -> dict[int, dict]:
        return {**{e["step"]: e for e in run.get("evals", [])},
                run.get("steps_done", 0): run["final"]}

    pairs = [(at(r), at(ref[r["seed"]])) for r in runs if r["seed"] in ref]
    steps = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs))) if pairs else []
    out = []
    for step in steps:
        d = [a[step]["overall"] - b[step]["overall"] for a, b in pairs]
        length = float(np.mean([a[step]["length"] for a, _ in pairs]))
        ref_length = float(np.mean([b[step]["length"] for _, b in pairs]))
        out.append({"step": step, "delta_overall": float(np.mean(d)), "seeds": len(d),
                    "shorter_pct": shortening(length, ref_length)})
    return out


def pick_winner(rows: list[dict], spec: ObjectiveSpec) -> tuple[dict, str]:
    """The promotion's winner and the rule that chose it, in words. Accuracy: the best
    mean fitness (Overall). A length directive is a contract: the shortest candidate
    whose mean Overall over the promotion seeds is within the margin of GRPO's on the
    same seeds; when none is, the best fitness, and the rule says so."""
    if not spec.minimizes_length:
        return rows[0], "the best mean fitness (Overall) over the promotion seeds"
    kept = [r for r in rows if r["within_margin"]]
    if kept:
        best = max(kept, key=lambda r: r["shorter_pct"])
        return best, (f"the shortest of the {len(kept)} candidate(s) whose mean Overall is "
                      f"within {spec.margin:g} point(s) of GRPO's on the same seeds")
    return rows[0], (f"no promoted candidate kept Overall within {spec.margin:g} point(s) "
                     "of GRPO's: the best mean fitness")


def rank_correlation(rows: list[dict]) -> dict:
    """Spearman's rho between screening and promotion fitness over ``rows`` (the promoted
    candidates and the random sample): how well the cheap screen ranks what the full
    budget finds. Undefined (None, with the reason) under 3 candidates or when either
    side is constant."""
    from scipy.stats import spearmanr

    screen = [r["screen_fitness"] for r in rows]
    promo = [r["fitness"] for r in rows]
    out = {"n": len(rows), "names": [r["name"] for r in rows], "rho": None, "p": None}
    if len(rows) < 3:
        return {**out, "note": f"undefined: {len(rows)} candidate(s), need 3"}
    if len(set(screen)) < 2 or len(set(promo)) < 2:
        return {**out, "note": "undefined: a constant fitness on one side"}
    res = spearmanr(screen, promo)
    p = float(res.pvalue)
    if len(rows) <= EXACT_RANK_P_MAX_N:
        p = _exact_spearman_p(screen, promo, float(res.statistic))
    return {**out, "rho": float(res.statistic), "p": p}


# Spearman's p from the t approximation is 0 for a perfect order of 3 (t is infinite),
# where only 3! orderings exist (an exact two-sided p of 1/3); up to this many
# candidates the p is exact, over every ordering of one side (8! = 40,320).
EXACT_RANK_P_MAX_N = 8


def _exact_spearman_p(x: list[float], y: list[float], rho: float) -> float:
    """Two-sided permutation p of Spearman's rho: the share of orderings of ``y``'s ranks
    whose |rho| is at least the observed one's (ties keep their average ranks)."""
    import itertools

    import numpy as np
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    rx = (rx - rx.mean()) / np.sqrt(((rx - rx.mean()) ** 2).sum())
    ry = ry - ry.mean()
    norm = np.sqrt((ry ** 2).sum())
    perms = np.array(list(itertools.permutations(ry)))
    rhos = perms @ rx / norm
    return float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12))


def test_stage(args, home: Path, winner: tuple[str, str], cfg: dict,
               console: Console) -> dict:
    """Stage 3: the winner and every shipped baseline on the test split, paired seeds."""
    from trainers.baselines import BASELINES, baseline_source
    from trainers.local.compare import summarize

    names = baseline_names(args)
    unknown = [b for b in names if b not in BASELINES]
    if unknown or "grpo" not in names:
        raise CampaignError(f"--baselines must name shipped baselines including grpo; "
                            f"unknown: {unknown}; shipped: {', '.join(BASELINES)}")
    label = f"winner:{winner[0]}"
    entries = [(b, baseline_source(b)) for b in names] + [(label, winner[1])]
    seeds = list(range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + args.seeds))
    train_config = _train_config(args, cfg, args.steps, "test")
    results = _run(_jobs(entries, seeds, home, train_config, cfg.get("warm_config")),
                   args, home, console, "test")
    labels = [e[0] for e in entries]
    rows = summarize(results, labels, seeds)  # deltas vs the first label: grpo
    best = _best_baseline(rows, names)
    confirm = []
    if args.confirm_seeds:
        # more paired seeds for the three algorithms the verdicts compare
        confirm = list(range(seeds[-1] + 1, TEST_SEED_OFFSET + args.confirm_seeds))
        trio = [e for e in entries if e[0] in ("grpo", best, label)]
        results = results + _run(_jobs(trio, confirm, home, train_config,
                                       cfg.get("warm_config")), args, home, console, "confirm")
        trio_rows = {r["algorithm"]: r for r in
                     summarize(results, [e[0] for e in trio], seeds + confirm)}
        rows = [trio_rows.get(r["algorithm"], r) for r in rows]
    return {"rows": rows, "seeds": seeds, "confirm_seeds": confirm, "winner_label": label,
            "best_baseline": best,
            "vs_best_baseline": _vs_best(results, best, label, seeds + confirm),
            "cpu_seconds": _cpu(results), "phase_cpu_seconds": _phases(results)}


def baseline_names(args) -> list[str]:
    """The shipped baselines the test and transfer stages train (``--baselines``, default
    all of them)."""
    from trainers.baselines import BASELINES

    return list(BASELINES) if args.baselines is None else \
        [b.strip() for b in args.baselines.split(",") if b.strip()]


def _vs_best(results: list[dict], best: str, label: str, seeds: list[int]) -> dict:
    """The winner's paired CIs (Overall, length) against the best baseline, as
    ``summarize`` gives them against its first label."""
    from trainers.local.compare import summarize

    vs = summarize(results, [best, label], seeds)[1]
    return {key: vs[field] for key, field in (("overall", "delta_vs_baseline_ci95"),
                                              ("length", "length_delta_vs_baseline_ci95"))
            if field in vs}


def _best_baseline(rows: list[dict], names: list[str], stage: str = "test") -> str:
    """The shipped baseline with the best mean Overall of a stage, GRPO included."""
    ok = [r for r in rows if r["algorithm"] in names and "overall_mean" in r]
    if not ok:
        raise CampaignError(f"every baseline failed in the {stage} stage")
    return max(ok, key=lambda r: r["overall_mean"])["algorithm"]


def rediscovery(args, home: Path, run_id: int, spec: ObjectiveSpec, cfg: dict,
                console: Console) -> dict:
    """When did the search reach the score of the known mechanisms it was not seeded
    with? Trained at the search's own budget and seed, scored like the candidates."""
    from agents.builtin.genes import BASELINE_GENOMES, SLOTS, Genome
    from memory.archive import Archive

    with Archive(home) as a:
        cands = [c for c in a.candidates(run_id) if c.generation > 0]
        seed_cand = [c for c in a.candidates(run_id) if c.generation == 0][0]
        ev = a.evaluations(seed_cand.id)
        ref = (float(np.mean([e.metrics["val"]["overall"] for e in ev])),
               float(np.mean([e.metrics["val"]["length"] for e in ev])))
    targets = {k: BASELINE_GENOMES[k] for k in ("dapo", "dr_grpo")}
    entries = [(f"rediscover:{k}", g.render(name=k)) for k, g in targets.items()]
    results = _run(_jobs(entries, [args.seed], home,
                         _train_config(args, cfg, args.screen_steps, "val"),
                         cfg.get("warm_config")), args, home, console, "rediscovery")
    out = {}
    best = best_so_far_curve(cands)
    trained = _by_label(results)
    grpo = dict(zip(SLOTS, Genome.grpo().signature().split(";")))
    for (label, _), (k, genome) in zip(entries, targets.items()):
        runs = trained.get(label)
        if not runs:
            out[k] = {"error": "failed to train"}
            continue
        score = fitness(spec, runs[0]["final"]["overall"], runs[0]["final"]["length"], ref)
        reached = next((i + 1 for i, v in enumerate(best) if v >= score), None)
        target = dict(zip(SLOTS, genome.signature().split(";")))
        known = [s for s in SLOTS if target[s] != grpo[s]]  # the genes GRPO lacks
        shared = []
        for i, c in enumerate(cands):
            sig = c.info.signature
            if not sig:
                continue
            genes = dict(zip(SLOTS, sig.split(";")))
            # the same kind of gene (clip_higher, token_mean, ...), parameters may differ
            diff = [s for s in known
                    if genes.get(s, "").split("(")[0] == target[s].split("(")[0]]
            shared.append((len(diff), i + 1, c.name, diff))
        shared.sort(key=lambda t: (-t[0], t[1]))
        out[k] = {"score": score, "reached_after": reached,
                  "known_genes": len(known),
                  "closest": [{"index": i, "name": n, "shared_genes": d}
                              for _, i, n, d in shared[:3]]}
    out["cpu_seconds"] = _cpu(results)
    return out


# ----------------------------------------------------------------------------- helpers

def _by_label(results: list[dict]) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in results:
        if r.get("status") == "ok":
            by.setdefault(r["algorithm"], []).append(r)
    return by


def _mean(runs: list[dict], key: str) -> float:
    return float(np.mean([r["final"][key] for r in runs]))


def _cpu(results: list[dict]) -> float:
    return float(sum(r.get("cpu_seconds", 0.0) for r in results))


def _phases(results: list[dict]) -> dict[str, float] | None:
    """The runs' CPU summed by trainer phase (None unless every run has its split)."""
    from trainers.local.trainer import phase_totals  # torch: only once runs exist

    return phase_totals([r.get("phase_cpu_seconds") for r in results])


def best_so_far_curve(cands) -> list[float]:
    best, out = -math.inf, []
    for c in cands:
        if c.fitness is not None:
            best = max(best, c.fitness)
        out.append(best)
    return out


def lineage(home: Path, run_id: int, name: str) -> list[dict]:
    from memory.archive import Archive

    with Archive(home) as a:
        cand = next(c for c in a.candidates(run_id) if c.name == name)
        path = a.lineage_path(cand.id)
        if path and path[0].id == cand.id:  # root first
            path = path[::-1]
        return [{"id": c.id, "name": c.name, "generation": c.generation,
                 "fitness": c.fitness} for c in path]


def composed(home: Path, run_id: int, names: list[str]) -> dict:
    """How many of the run's candidates carry a gene the builtin scientist composed from
    primitives, and for each of ``names`` (the promoted and sampled ones) that does: its
    composed genes' math, whether a catalog gene computes the same signal, and its code."""
    from agents.builtin.genes import Genome, catalog_match
    from memory.archive import Archive

    with Archive(home) as a:
        cands = a.candidates(run_id)
    total, shown = 0, []
    for cand in cands:
        sig = cand.info.signature
        genes = [g for g in Genome.from_signature(sig).genes() if g.composed] if sig else []
        total += bool(genes)
        if genes and cand.name in names:
            match = [catalog_match(g) for g in genes]
            shown.append({"name": cand.name, "code": cand.code or "",
                          "genes": [{"slot": g.slot, "expression": g["f"], "math": g.math(),
                                     "catalog_match": m.label() if m else None}
                                    for g, m in zip(genes, match)]})
    return {"candidates": len(cands), "with_composed": total, "promoted": shown}


def mechanism(home: Path, run_id: int, name: str) -> dict:
    from agents.builtin.genes import Genome
    from memory.archive import Archive

    with Archive(home) as a:
        cand = next(c for c in a.candidates(run_id) if c.name == name)
        sig = cand.info.signature
        if sig:
            g = Genome.from_signature(sig)
            return {"signature": sig, "words": g.describe(), "math": g.math()}
        return {"signature": None, "words": cand.proposal, "math": ""}
