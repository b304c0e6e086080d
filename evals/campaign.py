"""A discovery campaign: search, promote, and test on held-out data.

    python -m evals.campaign --directive "accurate" --candidates 64 --seeds 5 --out out/campaign-acc

Multi-fidelity, three stages, each resumable (rerun the same command after a kill):

1. **search** — the POISE loop (builtin agents, ``graph.run``) proposes ``--candidates``
   candidates from GRPO, each trained once at a short budget (``--screen-steps``) and
   scored on the val split under the directive's objective.
2. **promote** — the ``--promote`` best distinct candidates and GRPO are retrained at the
   full budget with ``--promote-seeds`` fresh seeds, still on val; the best mean fitness
   is the campaign's winner. Selection never sees the test split.
3. **test** — the winner and every shipped baseline are retrained with ``--seeds`` fresh
   seeds (paired: the same seeds for all) and evaluated on the held-out test split.
   Reported: Overall, per family, pass@k, length, validity, paired 95% CIs vs GRPO and
   vs the best baseline, the winner's lineage and mechanism. ``--confirm-seeds K`` then
   trains GRPO, the winner and the best other baseline on more paired seeds (K in all),
   for narrower CIs where they matter.

``--rediscovery`` also trains the known algorithms the catalog can express but the seed
population lacks (DAPO, Dr. GRPO as genomes) at the screening budget and seed, and says
after how many candidates the search's best-so-far reached each one's score, and which
candidates share most of their genes.

Writes ``OUT/campaign.json``, ``OUT/campaign.md`` and ``OUT/best_so_far.png``; training
results are cached under ``<home>/campaign-cache`` (keyed by code, config and seed), so
two campaigns share their baseline test runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from evals.objective import ObjectiveSpec, fitness
from evals.tasks import FAMILIES, HARD_FAMILY, PASS_K

TEST_SEED_OFFSET = 2000      # fresh seeds of the test stage (search uses the run seed)
PROMOTE_SEED_OFFSET = 1000   # fresh seeds of the promotion stage


class CampaignError(Exception):
    """Bad input or an unusable state: one clear line, exit code 2."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evals.campaign", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--directive", required=True, help='e.g. "accurate" or "accurate and concise"')
    p.add_argument("--candidates", type=int, default=64, help="candidates to search (default 64)")
    p.add_argument("--seeds", type=int, default=5, help="fresh test seeds (default 5)")
    p.add_argument("--confirm-seeds", type=int, default=0,
                   help="after the test stage, train GRPO, the winner and the best other "
                        "baseline up to this many paired test seeds in all (default 0: off); "
                        "their CIs then use every seed")
    p.add_argument("--out", type=Path, required=True, help="campaign output directory")
    p.add_argument("--home", default=None, help="POISE home (default $POISE_HOME or ./.poise)")
    p.add_argument("--screen-steps", type=int, default=40,
                   help="training steps of the search stage (default 40)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of promotion and test (default: the trainer's)")
    p.add_argument("--promote", type=int, default=4,
                   help="candidates promoted to the full budget (default 4)")
    p.add_argument("--promote-seeds", type=int, default=3, help="seeds per promoted candidate")
    p.add_argument("--width", type=int, default=2, help="candidates per search round")
    p.add_argument("--seed", type=int, default=0, help="seed of the search (builtin agents)")
    p.add_argument("--baselines", default=None,
                   help="comma-separated shipped baselines to test (default: all)")
    p.add_argument("--rediscovery", action="store_true",
                   help="also report when the search reached DAPO's / Dr. GRPO's score")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="parallel training processes in promotion and test")
    p.add_argument("--config", type=Path, default=None,
                   help="JSON of Context fields (train_overrides, warm_config): tests use a "
                        "tiny testbed")
    p.add_argument("--margin", type=float, default=1.0,
                   help="non-inferiority margin in Overall points: 'not worse' means the "
                        "paired 95%% CI's lower bound is above -MARGIN (default 1.0)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-smoke", action="store_true", help="skip the verifier's smoke run")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("candidates", "seeds", "screen_steps", "promote", "promote_seeds", "width",
                 "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seeds < 2:
        p.error("--seeds must be at least 2 for a paired CI")
    if not args.margin >= 0:
        p.error("--margin must be a number >= 0")
    if args.confirm_seeds and args.confirm_seeds <= args.seeds:
        p.error(f"--confirm-seeds must exceed --seeds ({args.seeds}) or be 0")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    if not args.directive.strip():
        p.error("--directive is empty: say what to optimize, e.g. \"accurate\"")
    return args


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


def _config(args) -> dict:
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
    from graph import run as graph_run
    from memory.archive import Archive

    quiet = ["--quiet"] if args.quiet else []
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
                graph_run.run(graph_run.parse_args(
                    ["--home", str(home), "--resume", str(run_id), *quiet]), console)
            except graph_run.UsageError as e:
                if "no checkpoint" not in str(e):
                    raise
                with Archive(home) as a:
                    a.finish_run(run_id, status="abandoned")
                run_id = None
        if run_id is None:
            argv = ["--home", str(home), "--directive", args.directive,
                    "--candidates", str(args.candidates), "--steps", str(args.screen_steps),
                    "--width", str(args.width), "--seed", str(args.seed), *quiet]
            if args.no_smoke:
                argv.append("--no-smoke")
            if args.config:
                argv += ["--config", str(args.config)]
            holder = {}

            def remember(rid: int) -> None:
                holder["id"] = rid
                state.set("run_id", rid)

            graph_run.run(graph_run.parse_args(argv), console, on_start=remember)
            run_id = holder["id"]
    except graph_run.UsageError as e:
        raise CampaignError(str(e)) from None
    state.set("search_wall_s", state.get("search_wall_s", 0.0) + time.time() - began)
    return run_id


def _train_config(args, cfg: dict, steps: int | None, split: str) -> dict:
    from trainers.local.trainer import TrainConfig, train_config_from_dict

    tc = train_config_from_dict(cfg.get("train_overrides", {})) if cfg.get(
        "train_overrides") else TrainConfig()
    d = tc.as_dict()
    if steps is not None:
        d["steps"] = steps
    d["final_eval"] = {**d["final_eval"], "split": split}
    return d


def _jobs(entries: list[tuple[str, str]], seeds: list[int], home: Path, train_config: dict,
          warm: dict | None):
    from trainers.local.jobs import Job

    return [Job(label, source, seed, str(home), train_config, warm)
            for label, source in entries for seed in seeds]


def _run(jobs, args, home: Path, console: Console, stage: str) -> list[dict]:
    from trainers.local.jobs import run_jobs

    console.rule(f"{stage}: {len(jobs)} training runs")
    results = run_jobs(jobs, args.workers, home / "campaign-cache", quiet=args.quiet)
    bad = [r for r in results if r["status"] != "ok"]
    for r in bad:
        console.print(f"[red]{stage}: {r['algorithm']} seed {r['seed']} {r['status']}:[/red] "
                      f"{r.get('error')}")
    return results


def promote(args, home: Path, run_id: int, spec: ObjectiveSpec, cfg: dict,
            console: Console) -> dict:
    """Stage 2: the best distinct candidates and GRPO at the full budget on val."""
    from memory.archive import Archive
    from trainers.baselines import baseline_source
    from trainers.algorithm import code_hash

    with Archive(home) as a:
        board = a.leaderboard(run_id)
        picked, seen = [], {code_hash(baseline_source("grpo"))}
        for s in board:
            c = a.candidate(s.candidate_id)
            h = code_hash(c.code or "")
            if c.generation == 0 or h in seen:
                continue
            seen.add(h)
            picked.append((c.name, c.code))
            if len(picked) == args.promote:
                break
    if not picked:
        raise CampaignError(f"run {run_id} has no evaluated candidate to promote")
    entries = [("grpo", baseline_source("grpo"))] + picked
    seeds = list(range(PROMOTE_SEED_OFFSET, PROMOTE_SEED_OFFSET + args.promote_seeds))
    results = _run(_jobs(entries, seeds, home, _train_config(args, cfg, args.steps, "val"),
                         cfg.get("warm_config")), args, home, console, "promote")
    by = _by_label(results)
    if "grpo" not in by:
        raise CampaignError("GRPO failed in the promotion stage; nothing to compare with")
    ref = (_mean(by["grpo"], "overall"), _mean(by["grpo"], "length"))
    rows = []
    for label, _ in picked:
        runs = by.get(label, [])
        if not runs:
            continue
        fits = [fitness(spec, r["final"]["overall"], r["final"]["length"], ref) for r in runs]
        rows.append({"name": label, "fitness": float(np.mean(fits)),
                     "overall": _mean(runs, "overall"), "length": _mean(runs, "length"),
                     "seeds": len(runs)})
    if not rows:
        raise CampaignError("every promoted candidate failed to train")
    rows.sort(key=lambda r: -r["fitness"])
    source = dict(picked)[rows[0]["name"]]
    return {"rows": rows, "winner": rows[0]["name"], "winner_source": source,
            "reference": {"overall": ref[0], "length": ref[1]}, "seeds": seeds,
            "cpu_seconds": _cpu(results)}


def test_stage(args, home: Path, winner: tuple[str, str], cfg: dict,
               console: Console) -> dict:
    """Stage 3: the winner and every shipped baseline on the test split, paired seeds."""
    from trainers.baselines import BASELINES, baseline_source
    from trainers.local.compare import summarize

    names = list(BASELINES) if args.baselines is None else \
        [b.strip() for b in args.baselines.split(",") if b.strip()]
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
    # the winner's paired CIs against the best baseline, as summarize gives them vs GRPO
    vs = summarize(results, [best, label], seeds + confirm)[1]
    vs_best = {key: vs[field] for key, field in (("overall", "delta_vs_baseline_ci95"),
                                                 ("length", "length_delta_vs_baseline_ci95"))
               if field in vs}
    return {"rows": rows, "seeds": seeds, "confirm_seeds": confirm, "winner_label": label,
            "best_baseline": best, "vs_best_baseline": vs_best,
            "cpu_seconds": _cpu(results)}


def _best_baseline(rows: list[dict], names: list[str]) -> str:
    """The shipped baseline with the best mean test Overall, GRPO included."""
    ok = [r for r in rows if r["algorithm"] in names and "overall_mean" in r]
    if not ok:
        raise CampaignError("every baseline failed in the test stage")
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
    best_so_far = _best_so_far(cands)
    trained = _by_label(results)
    grpo = dict(zip(SLOTS, Genome.grpo().signature().split(";")))
    for (label, _), (k, genome) in zip(entries, targets.items()):
        runs = trained.get(label)
        if not runs:
            out[k] = {"error": "failed to train"}
            continue
        score = fitness(spec, runs[0]["final"]["overall"], runs[0]["final"]["length"], ref)
        reached = next((i + 1 for i, v in enumerate(best_so_far) if v >= score), None)
        target = dict(zip(SLOTS, genome.signature().split(";")))
        known = [s for s in SLOTS if target[s] != grpo[s]]  # the genes GRPO lacks
        shared = []
        for i, c in enumerate(cands):
            sig = (c.details or {}).get("signature")
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


def _best_so_far(cands) -> list[float]:
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


def mechanism(home: Path, run_id: int, name: str) -> dict:
    from agents.builtin.genes import Genome
    from memory.archive import Archive

    with Archive(home) as a:
        cand = next(c for c in a.candidates(run_id) if c.name == name)
        sig = (cand.details or {}).get("signature")
        if sig:
            g = Genome.from_signature(sig)
            return {"signature": sig, "words": g.describe(), "math": g.math()}
        return {"signature": None, "words": cand.proposal, "math": ""}


def plot_best_so_far(home: Path, run_id: int, path: Path, lines: dict[str, float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memory.archive import Archive

    with Archive(home) as a:
        cands = [c for c in a.candidates(run_id) if c.generation > 0]
        seed = [c for c in a.candidates(run_id) if c.generation == 0]
    xs = np.arange(1, len(cands) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(xs, [c.fitness if c.fitness is not None else np.nan for c in cands], s=14,
               color="0.6", label="candidate (val, screening budget)")
    ax.step(xs, _best_so_far(cands), where="post", color="C0", lw=2, label="best so far")
    if seed and seed[0].fitness is not None:
        ax.axhline(seed[0].fitness, color="k", ls="--", lw=1, label="GRPO (seed)")
    for i, (k, v) in enumerate(lines.items()):
        ax.axhline(v, color=f"C{i + 1}", ls=":", lw=1.2, label=k)
    ax.set_xlabel("candidates evaluated")
    ax.set_ylabel("fitness (val)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- verdicts

def overall_verdict(ci: dict | None, margin: float) -> str:
    """A paired 95% CI of a difference in Overall, in words: ``better`` (CI above 0),
    ``worse`` (CI below 0), ``not worse`` (lower bound above -margin), else
    ``inconclusive``."""
    if not ci or not np.isfinite(ci.get("low", np.nan)):
        return "inconclusive"
    if ci["low"] > 0:
        return "better"
    if ci["high"] < 0:
        return "worse"
    if ci["low"] > -margin:
        return "not worse"
    return "inconclusive"


def length_verdict(ci: dict | None) -> str:
    if not ci or not np.isfinite(ci.get("low", np.nan)):
        return "inconclusive"
    if ci["high"] < 0:
        return "shorter"
    if ci["low"] > 0:
        return "longer"
    return "no clear difference"


def verdicts(test: dict, margin: float) -> dict:
    """The winner against GRPO and against the best other baseline, in words."""
    rows = {r["algorithm"]: r for r in test["rows"]}
    w, g = rows.get(test["winner_label"], {}), rows.get("grpo", {})
    out: dict = {"margin": margin}
    if "overall_mean" not in w or "overall_mean" not in g:
        out["vs_grpo"] = {"overall": "inconclusive", "length": "inconclusive"}
    else:
        dlen = w.get("length_delta_vs_baseline_ci95")
        out["vs_grpo"] = {
            "overall": overall_verdict(w.get("delta_vs_baseline_ci95"), margin),
            "length": length_verdict(dlen),
            "length_change_pct": (100.0 * (w["mean_length"] / g["mean_length"] - 1.0)
                                  if g["mean_length"] else None)}
        if dlen and g["mean_length"] and np.isfinite(dlen.get("low", np.nan)):
            out["vs_grpo"]["length_change_pct_ci95"] = [
                100.0 * dlen["low"] / g["mean_length"], 100.0 * dlen["high"] / g["mean_length"]]
    vb = test.get("vs_best_baseline") or {}
    out["vs_best_baseline"] = {"baseline": test.get("best_baseline"),
                               "overall": overall_verdict(vb.get("overall"), margin),
                               "length": length_verdict(vb.get("length"))}
    return out


def verdict_lines(payload: dict) -> list[str]:
    v, t = payload["verdicts"], payload["test"]
    rows = {r["algorithm"]: r for r in t["rows"]}
    w = rows.get(t["winner_label"], {})
    m = v["margin"]
    say = {"better": "beats", "worse": "is worse than", "not worse":
           f"is not worse than (95% CI lower bound above -{m:g})",
           "inconclusive": "cannot be told apart from"}
    lines = []
    if "delta_vs_baseline_ci95" in w:
        vg = v["vs_grpo"]
        lines.append(f"- Overall: the winner {say[vg['overall']]} GRPO: "
                     f"{w['delta_vs_baseline_ci95']['text']} points (paired 95% CI).")
        pct = vg.get("length_change_pct")
        pci = vg.get("length_change_pct_ci95")
        lines.append(f"- Length: {vg['length']} than GRPO"
                     if vg["length"] in ("shorter", "longer") else
                     f"- Length: {vg['length']} from GRPO")
        if pct is not None:
            lines[-1] += (f", {pct:+.1f}%"
                          + (f" [{pci[0]:+.1f}%, {pci[1]:+.1f}%]" if pci else "")
                          + f" ({w['length_delta_vs_baseline_ci95']['text']} tokens).")
    vb = v["vs_best_baseline"]
    if vb["baseline"] == "grpo":
        lines.append("- GRPO is the best shipped baseline on this test.")
    elif vb["baseline"]:
        ci = t["vs_best_baseline"].get("overall", {}).get("text", "n/a")
        lines.append(f"- Against the best shipped baseline ({vb['baseline']}): the winner "
                     f"{say[vb['overall']]} it, {ci} points.")
    return lines


# ----------------------------------------------------------------------------- report

def _mechanism_bullets(words: str) -> list[str]:
    """Genome.describe() marks changed genes with '* ': one markdown bullet per gene."""
    out = []
    for line in (words or "").splitlines():
        if not line.strip():
            continue
        changed = line.startswith("* ")
        out.append(f"- {'**changed** ' if changed else ''}{line[2:] if changed else line.strip()}")
    return out


def write_report(out: Path, payload: dict) -> Path:
    t = payload["test"]
    lines = [f"# Campaign: \"{payload['directive']}\"", "",
             f"Objective: {payload['objective']}", "",
             f"Command: `{payload['command']}`", "",
             "## Verdict (held-out test split)", "", *verdict_lines(payload), "",
             "## Held-out test split "
             f"({len(t['seeds'])} paired seeds {t['seeds'][0]}..{t['seeds'][-1]}"
             + (f"; GRPO, the winner and the best baseline also seeds {t['confirm_seeds'][0]}.."
                f"{t['confirm_seeds'][-1]}" if t.get("confirm_seeds") else "") + ")", "",
             "| algorithm | seeds | Overall | " + " | ".join(f.name for f in FAMILIES)
             + f" | {HARD_FAMILY} pass@{PASS_K} | length | valid % | dOverall vs GRPO | "
               "dLength vs GRPO |",
             "|---" * (8 + len(FAMILIES)) + "|"]
    for r in t["rows"]:
        if "overall_mean" not in r:
            lines.append(f"| {r['algorithm']} | 0 | failed |" + " |" * (6 + len(FAMILIES)))
            continue
        d = lambda k: r[k]["text"] if k in r and r["algorithm"] != "grpo" else "-"  # noqa
        lines.append(f"| {r['algorithm']} | {len(r['seeds'])} | {r['overall_mean']:.1f} | "
                     + " | ".join(f"{v:.1f}" for v in r["families"].values())
                     + f" | {r[f'pass@{PASS_K}']:.1f} | {r['mean_length']:.1f} | "
                       f"{r['validity']:.1f} | {d('delta_vs_baseline_ci95')} | "
                       f"{d('length_delta_vs_baseline_ci95')} |")
    vb = t["vs_best_baseline"]
    lines += ["", f"Winner vs the best baseline ({t['best_baseline']}): Overall "
                  f"{vb.get('overall', {}).get('text', 'n/a')}, length "
                  f"{vb.get('length', {}).get('text', 'n/a')} (paired 95% CI).", "",
              "## Winner", "", "Lineage: " + " -> ".join(
                  f"{x['name']} ({'-' if x['fitness'] is None else format(x['fitness'], '.1f')})"
                  for x in payload["lineage"]), "",
              "Mechanism (**changed** marks a gene that differs from GRPO's):", "",
              *_mechanism_bullets(payload["mechanism"]["words"]), "",
              "```", payload["mechanism"]["math"], "```", "",
              "## Promotion (val, full budget)", "",
              "| candidate | fitness | Overall | length | seeds |", "|---|---|---|---|---|"]
    ref = payload["promote"].get("reference")
    if ref:
        lines.append(f"| grpo (reference, same seeds) | - | {ref['overall']:.1f} | "
                     f"{ref['length']:.1f} | {len(payload['promote'].get('seeds', []))} |")
    for r in payload["promote"]["rows"]:
        lines.append(f"| {r['name']} | {r['fitness']:.1f} | {r['overall']:.1f} | "
                     f"{r['length']:.1f} | {r['seeds']} |")
    if payload.get("rediscovery"):
        lines += ["", "## Rediscovery", ""]
        for k, v in payload["rediscovery"].items():
            if k == "cpu_seconds" or "score" not in v:
                continue
            close = [c for c in v["closest"] if c["shared_genes"]]
            lines.append(f"- {k}: screening score {v['score']:.1f}; best-so-far reached it "
                         f"after {v['reached_after'] or 'never (within the budget)'} "
                         "candidates; " + ("closest genomes: " + "; ".join(
                             f"#{c['index']} {c['name']} shares {len(c['shared_genes'])}/"
                             f"{v['known_genes']} gene kinds ({', '.join(c['shared_genes'])})"
                             for c in close) if close else
                             f"no candidate carries any of its {v['known_genes']} genes "
                             "that GRPO lacks"))
    comp = payload["compute"]
    lines += ["", "## Compute", "",
              f"CPU-seconds: search {comp['search_cpu_s']:.0f}, promotion "
              f"{comp['promote_cpu_s']:.0f}, test {comp['test_cpu_s']:.0f}, rediscovery "
              f"{comp['rediscovery_cpu_s']:.0f}; total {comp['total_cpu_s']:.0f} "
              f"({comp['total_cpu_s'] / 3600:.2f} CPU-hours). Search wall time "
              f"{comp['search_wall_s']:.0f} s.", "", "![best so far](best_so_far.png)", ""]
    path = out / "campaign.md"
    path.write_text("\n".join(lines))
    return path


def print_summary(payload: dict, console: Console) -> None:
    t = payload["test"]
    tab = Table(title=f"\"{payload['directive']}\": held-out test, paired seeds; deltas vs "
                      "GRPO (95% CI)")
    for col in ("algorithm", "seeds", "Overall", "length", "valid%", "dOverall", "dLength"):
        tab.add_column(col, justify="left" if col == "algorithm" else "right")
    for r in t["rows"]:
        if "overall_mean" not in r:
            tab.add_row(r["algorithm"], "0", "failed", "", "", "", "")
            continue
        d = lambda k: r[k]["text"] if k in r and r["algorithm"] != "grpo" else "-"  # noqa
        tab.add_row(r["algorithm"], str(len(r["seeds"])), f"{r['overall_mean']:.1f}",
                    f"{r['mean_length']:.1f}", f"{r['validity']:.1f}", d("delta_vs_baseline_ci95"),
                    d("length_delta_vs_baseline_ci95"))
    console.print(tab)
    for line in verdict_lines(payload):
        console.print(line[2:])


def main(argv=None) -> int:
    console, err = Console(), Console(stderr=True)
    try:
        args = parse_args(argv)
        return _main(args, console)
    except CampaignError as e:
        err.print(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        err.print("interrupted: rerun the same command to resume")
        return 130


def _main(args, console: Console) -> int:
    from memory.archive import Archive

    home = Path(args.home or os.environ.get("POISE_HOME", ".poise"))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CampaignError(f"cannot create --out {args.out}: {e.strerror}") from None
    cfg = _config(args)
    state = State(args.out)
    if state.get("directive", args.directive) != args.directive:
        raise CampaignError(f"{args.out} holds a campaign for \"{state.get('directive')}\"; "
                            "use another --out")
    state.set("directive", args.directive)
    run_id = search(args, home, state, console)
    with Archive(home) as a:
        spec = ObjectiveSpec(**a.run(run_id).config["objective"])
        search_cpu = sum(e.wall_time or 0.0 for c in a.candidates(run_id)
                         for e in a.evaluations(c.id))
    prom = promote(args, home, run_id, spec, cfg, console)
    test = test_stage(args, home, (prom["winner"], prom["winner_source"]), cfg, console)
    redis = rediscovery(args, home, run_id, spec, cfg, console) if args.rediscovery else None
    lines = {f"{k} (screening)": v["score"] for k, v in (redis or {}).items()
             if isinstance(v, dict) and "score" in v}
    plot_best_so_far(home, run_id, args.out / "best_so_far.png", lines)
    compute = {"search_cpu_s": search_cpu, "promote_cpu_s": prom["cpu_seconds"],
               "test_cpu_s": test["cpu_seconds"],
               "rediscovery_cpu_s": (redis or {}).get("cpu_seconds", 0.0),
               "search_wall_s": state.get("search_wall_s", 0.0)}
    compute["total_cpu_s"] = sum(v for k, v in compute.items() if k.endswith("cpu_s"))
    payload = {"directive": args.directive, "objective": spec.describe(),
               "command": "python -m evals.campaign " + shlex.join(args.argv),
               "args": {k: (str(v) if isinstance(v, Path) else v)
                        for k, v in vars(args).items()},
               "run_id": run_id, "promote": {k: v for k, v in prom.items()
                                             if k != "winner_source"},
               "test": test, "lineage": lineage(home, run_id, prom["winner"]),
               "mechanism": mechanism(home, run_id, prom["winner"]),
               "rediscovery": redis, "compute": compute,
               "verdicts": verdicts(test, args.margin)}
    (args.out / "campaign.json").write_text(json.dumps(payload, indent=2, default=str))
    md = write_report(args.out, payload)
    print_summary(payload, console)
    console.print(f"wrote {args.out / 'campaign.json'}, {md}, {args.out / 'best_so_far.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
