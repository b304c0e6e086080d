"""``python -m graph.campaign.ablation``: the selection ablation. Which parent-selection
rule finds the better algorithm on the same budget and the same seeds?

    python -m graph.campaign.ablation --directive accurate --rules gpucb,potential,greedy \\
        --search-seeds 3 --candidates 12 --seeds 4 --out out/ablation-selection

For every rule and every search seed (0 .. N-1, fixed before anything trains) the search
stage of a campaign runs (the POISE loop with builtin agents, ``--candidates`` candidates
at the screening budget); the rules differ in nothing else, so one search seed is one
paired unit. The best candidate each search proposed (the best screening fitness among
its non-seed candidates: what the rule found) and GRPO are then retrained at the full
budget on the held-out test split with ``--seeds`` paired test seeds (the same for all;
one training per distinct code, so two rules that find the same code share it).

Reported per rule: the best found's held-out Overall (mean over test seeds, then over
search seeds, with a Student t 95% CI over search seeds), its difference from GRPO, the
paired difference between every two rules (paired by search seed: the search-seed
variance is the noise a claim has to beat), how often each rule's find was the best, and
the screening fitness it reached. Writes ``OUT/ablation.json``, ``OUT/ablation.md`` and
``OUT/best_so_far.png`` (mean best-so-far screening fitness per rule). Resumable: rerun
the same command after a kill; finished searches and trained test runs are kept.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from graph.campaign.stages import (TEST_SEED_OFFSET, CampaignError, State, _by_label, _cpu,
                                   _jobs, _run, _train_config, best_so_far_curve,
                                   load_config, search)
from graph.run import gene_names_arg, rate_arg
from memory.selection import RULES
from trainers.home import resolve_home


class _Scoped:
    """One search's view of the ablation's state file: keys prefixed by its rule and seed,
    so ``stages.search`` resumes each search on its own run."""

    def __init__(self, state: State, prefix: str):
        self.state, self.prefix = state, prefix

    def get(self, key, default=None):
        return self.state.get(f"{self.prefix}/{key}", default)

    def set(self, key, value) -> None:
        self.state.set(f"{self.prefix}/{key}", value)


def _rules_arg(text: str) -> list[str]:
    rules = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in rules if r not in RULES]
    if bad or len(rules) < 2 or len(set(rules)) != len(rules):
        raise argparse.ArgumentTypeError(
            f"--rules takes two or more distinct rules of {', '.join(RULES)}; got {text!r}")
    return rules


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m graph.campaign.ablation",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--directive", default="accurate", help='default "accurate"')
    p.add_argument("--rules", type=_rules_arg, default=list(RULES),
                   help=f"comma-separated selection rules (default {','.join(RULES)})")
    p.add_argument("--search-seeds", type=int, default=3,
                   help="search seeds per rule: 0 .. N-1, the paired units (default 3)")
    p.add_argument("--candidates", type=int, default=16, help="candidates per search")
    p.add_argument("--width", type=int, default=2, help="candidates per search round")
    p.add_argument("--screen-steps", type=int, default=40,
                   help="training steps of the search (default 40)")
    p.add_argument("--screen-seeds", type=int, default=1,
                   help="training seeds per candidate in the search (default 1)")
    p.add_argument("--seeds", type=int, default=4,
                   help="paired test seeds for every find and GRPO (default 4)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of the test stage (default: the trainer's)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--home", default=None, help="POISE home (default $POISE_HOME or ./.poise)")
    p.add_argument("--workers", type=int, default=2, help="parallel training processes")
    p.add_argument("--config", type=Path, default=None,
                   help="JSON of Context fields (tests use a tiny testbed)")
    p.add_argument("--job-timeout", type=float, default=None, metavar="S",
                   help="limit of each sandboxed test run (default: 600 s + 20 s per step)")
    p.add_argument("--without-genes", dest="exclude_genes", type=gene_names_arg,
                   default=None, metavar="GENES",
                   help="catalog genes the builtin scientist may not use (as graph.run)")
    p.add_argument("--compose-rate", type=rate_arg, default=None, metavar="P",
                   help="the builtin scientist's composition rate (as graph.run)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-smoke", action="store_true", help="skip the verifier's smoke run")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("search_seeds", "candidates", "width", "screen_steps", "screen_seeds",
                 "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.search_seeds < 2:
        p.error("--search-seeds must be at least 2 for a CI over search seeds")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    if not args.directive.strip():
        p.error("--directive is empty: say what to optimize, e.g. \"accurate\"")
    return args


def _search_args(args, rule: str, seed: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "selection": rule, "seed": seed})


def _best_found(home: Path, run_id: int) -> dict:
    """The run's best non-seed candidate by screening fitness, and its best-so-far curve."""
    from memory.archive import Archive

    with Archive(home) as a:
        cands = [c for c in a.candidates(run_id) if c.generation > 0]
        scored = [c for c in cands if c.fitness is not None and c.code]
        if not scored:
            raise CampaignError(f"run {run_id}: no candidate was evaluated; nothing found")
        best = max(scored, key=lambda c: c.fitness)
        return {"run_id": run_id, "name": best.name, "code": best.code,
                "screen_fitness": float(best.fitness),
                "signature": best.info.signature, "proposal": best.proposal,
                "curve": best_so_far_curve(cands)}


def _ci(values) -> dict:
    from evals.stats import mean_ci

    ci = mean_ci(np.asarray(values, dtype=float))
    return {"mean": ci.mean, "low": ci.ci_low, "high": ci.ci_high, "n": ci.n}


def analyse(finds: dict, overall: dict, grpo: list[float], rules: list[str],
            search_seeds: list[int]) -> dict:
    """``finds[rule][seed]``: the find's code label; ``overall[label]``: its test Overall per
    test seed (aligned with ``grpo``). Per rule: the find's mean over test seeds at each
    search seed, its mean and CI over search seeds, vs GRPO; every pair of rules, paired
    by search seed; wins per rule (ties share)."""
    grpo_mean = float(np.mean(grpo))
    y = {r: [float(np.mean(overall[finds[r][s]])) for s in search_seeds] for r in rules}
    per_rule = {r: {"per_search_seed": y[r], "overall": _ci(y[r]),
                    "vs_grpo": _ci(np.array(y[r]) - grpo_mean)} for r in rules}
    pairs = [{"a": a, "b": b, "b_minus_a": _ci(np.array(y[b]) - np.array(y[a]))}
             for i, a in enumerate(rules) for b in rules[i + 1:]]
    wins = {r: 0.0 for r in rules}
    for k in range(len(search_seeds)):
        top = max(y[r][k] for r in rules)
        tied = [r for r in rules if y[r][k] == top]
        for r in tied:
            wins[r] += 1.0 / len(tied)
    best = max(rules, key=lambda r: per_rule[r]["overall"]["mean"])
    clear = all(p["b_minus_a"]["low"] > 0 if p["b"] == best else p["b_minus_a"]["high"] < 0
                for p in pairs if best in (p["a"], p["b"]))
    return {"grpo_overall": grpo_mean, "rules": per_rule, "pairs": pairs, "wins": wins,
            "best_rule": best, "best_rule_separated": clear}


def _test(args, home: Path, finds: dict, cfg: dict, console: Console):
    """Train GRPO and every distinct find on the test split, paired test seeds."""
    from trainers.baselines import baseline_source
    from trainers.source import code_hash

    by_code: dict[str, str] = {code_hash(baseline_source("grpo")): "grpo"}
    entries = [("grpo", baseline_source("grpo"))]
    labels = {}
    for rule, per_seed in finds.items():
        labels[rule] = {}
        for seed, f in per_seed.items():
            h = code_hash(f["code"])
            if h not in by_code:
                by_code[h] = f"find:{rule}:s{seed}:{f['name']}"
                entries.append((by_code[h], f["code"]))
            labels[rule][seed] = by_code[h]
    seeds = list(range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + args.seeds))
    results = _run(_jobs(entries, seeds, home, _train_config(args, cfg, args.steps, "test"),
                         cfg.get("warm_config")), args, home, console, "test")
    by = _by_label(results)
    overall = {}
    for label, _ in entries:
        runs = {r["seed"]: r["final"]["overall"] for r in by.get(label, [])}
        if set(runs) != set(seeds):
            raise CampaignError(f"{label}: {len(seeds) - len(runs)} of {len(seeds)} test "
                                "runs failed; the comparison needs every paired seed")
        overall[label] = [runs[s] for s in seeds]
    return labels, overall, seeds, _cpu(results)


def main(argv=None) -> int:
    console, err = Console(), Console(stderr=True, soft_wrap=True)
    try:
        return _main(parse_args(argv), console)
    except CampaignError as e:
        err.print(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        err.print("interrupted: rerun the same command to resume")
        return 130


def _main(args, console: Console) -> int:
    home = resolve_home(args.home)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CampaignError(f"cannot create --out {args.out}: {e.strerror}") from None
    cfg = load_config(args)
    state = State(args.out)
    plan = {"directive": args.directive, "rules": args.rules,
            "search_seeds": list(range(args.search_seeds)), "candidates": args.candidates,
            "screen_steps": args.screen_steps, "screen_seeds": args.screen_seeds,
            "test_seeds": args.seeds, "steps": args.steps}
    saved = state.get("plan", plan)
    if saved != plan:
        diff = "; ".join(f"{k}: {saved.get(k)} there, {v} here" for k, v in plan.items()
                         if saved.get(k) != v)
        raise CampaignError(f"{args.out} holds an ablation with another plan ({diff}); "
                            "use another --out")
    state.set("plan", plan)
    finds: dict[str, dict[int, dict]] = {}
    began = time.time()
    for rule in args.rules:
        finds[rule] = {}
        for seed in plan["search_seeds"]:
            console.rule(f"search: {rule}, search seed {seed}")
            sub = _search_args(args, rule, seed)
            run_id = search(sub, home, _Scoped(state, f"{rule}/{seed}"), console)
            finds[rule][seed] = _best_found(home, run_id)
    search_wall = time.time() - began
    labels, overall, test_seeds, test_cpu = _test(args, home, finds, cfg, console)
    result = analyse(labels, overall, overall["grpo"], args.rules, plan["search_seeds"])
    payload = {"command": "python -m graph.campaign.ablation " + shlex.join(args.argv),
               "plan": plan, "test_seeds": test_seeds, **result,
               "finds": {r: {str(s): {k: v for k, v in f.items() if k != "code"}
                             | {"label": labels[r][s], "test_overall": overall[labels[r][s]]}
                             for s, f in per.items()} for r, per in finds.items()},
               "grpo_test_overall": overall["grpo"],
               "compute": {"search_wall_s": search_wall, "test_cpu_s": test_cpu}}
    (args.out / "ablation.json").write_text(json.dumps(payload, indent=2, default=str))
    _plot(finds, args.out / "best_so_far.png")
    md = _write_md(args.out / "ablation.md", payload, finds, labels)
    _print(payload, console)
    console.print(f"wrote {args.out / 'ablation.json'}, {md}, {args.out / 'best_so_far.png'}")
    return 0


def _ci_text(ci: dict, signed: bool = True) -> str:
    fmt = "+.1f" if signed else ".1f"
    return f"{ci['mean']:{fmt}} [{ci['low']:{fmt}}, {ci['high']:{fmt}}]"


def _print(p: dict, console: Console) -> None:
    t = Table(title=f"Selection ablation: best found, held-out test Overall "
                    f"({len(p['plan']['search_seeds'])} search seeds x "
                    f"{len(p['test_seeds'])} test seeds); 95% CI over search seeds")
    for col in ("rule", "Overall", "vs GRPO", "wins", "best screen fitness"):
        t.add_column(col)
    for r, row in p["rules"].items():
        screen = np.mean([f["screen_fitness"] for f in p["finds"][r].values()])
        t.add_row(r, _ci_text(row["overall"], signed=False), _ci_text(row["vs_grpo"]),
                  f"{p['wins'][r]:g}", f"{screen:.1f}")
    console.print(t)
    console.print(f"GRPO (test): {p['grpo_overall']:.1f}")
    for pair in p["pairs"]:
        console.print(f"{pair['b']} - {pair['a']}: {_ci_text(pair['b_minus_a'])}")
    console.print(_verdict(p))


def _verdict(p: dict) -> str:
    """Which rule wins, pair by pair: the best mean's paired CI against each other rule
    either excludes 0 (it beats that rule) or not (they cannot be told apart)."""
    best = p["best_rule"]
    if p["best_rule_separated"]:
        return f"{best} finds the best algorithm: its paired CIs exclude 0 against every rule."
    beats, ties = [], []
    for pair in p["pairs"]:
        if best not in (pair["a"], pair["b"]):
            continue
        other = pair["a"] if pair["b"] == best else pair["b"]
        ci = pair["b_minus_a"] if pair["b"] == best else {
            "mean": -pair["b_minus_a"]["mean"], "low": -pair["b_minus_a"]["high"],
            "high": -pair["b_minus_a"]["low"]}
        (beats if ci["low"] > 0 else ties).append(f"{other} ({_ci_text(ci)})")
    said = f"{best} has the highest mean"
    if beats:
        said += f"; it beats {', '.join(beats)} (paired CI excludes 0)"
    return (f"{said}; it cannot be told apart from {', '.join(ties)} (paired CI includes 0): "
            f"no rule is shown to win against every other at "
            f"{len(p['plan']['search_seeds'])} search seeds.")


def _write_md(path: Path, p: dict, finds: dict, labels: dict) -> Path:
    n_s, n_t = len(p["plan"]["search_seeds"]), len(p["test_seeds"])
    lines = ["# Selection ablation", "", f"`{p['command']}`", "",
             f"Directive: {p['plan']['directive']}. Each rule searched "
             f"{p['plan']['candidates']} candidates at {p['plan']['screen_steps']} steps x "
             f"{p['plan']['screen_seeds']} seed(s), on search seeds "
             f"{', '.join(map(str, p['plan']['search_seeds']))} (fixed before the run); the "
             f"best find of each search and GRPO were trained on {n_t} paired test seeds "
             f"({', '.join(map(str, p['test_seeds']))}) and scored on the held-out test split.",
             "", f"| rule | best found: test Overall (95% CI, n={n_s}) | vs GRPO | wins | "
             "best screen fitness |", "|---|---|---|---|---|"]
    for r, row in p["rules"].items():
        screen = np.mean([f["screen_fitness"] for f in finds[r].values()])
        lines.append(f"| {r} | {_ci_text(row['overall'], signed=False)} | "
                     f"{_ci_text(row['vs_grpo'])} | {p['wins'][r]:g} | {screen:.1f} |")
    lines += ["", f"GRPO's test Overall: {p['grpo_overall']:.2f}.", "",
              "Paired by search seed:", ""]
    lines += [f"- {q['b']} - {q['a']}: {_ci_text(q['b_minus_a'])}" for q in p["pairs"]]
    lines += ["", f"**Verdict:** {_verdict(p)}", "", "## The finds", "",
              "| rule | search seed | run | candidate | screen fitness | test Overall | "
              "mechanism |", "|---|---|---|---|---|---|---|"]
    for r, per in finds.items():
        for s, f in per.items():
            test = p["finds"][r][str(s)]["test_overall"]
            what = f["signature"] or (f["proposal"] or "").splitlines()[0][:80]
            lines.append(f"| {r} | {s} | {f['run_id']} | {f['name']} | "
                         f"{f['screen_fitness']:.1f} | {np.mean(test):.1f} | `{what}` |")
    lines += ["", "![best so far](best_so_far.png)", ""]
    path.write_text("\n".join(lines))
    return path


def _plot(finds: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (rule, per) in enumerate(finds.items()):
        curves = [f["curve"] for f in per.values()]
        n = min(len(c) for c in curves)
        m = np.mean([c[:n] for c in curves], axis=0)
        ax.step(np.arange(1, n + 1), m, where="post", color=f"C{i}", lw=2, label=rule)
    ax.set_xlabel("candidates evaluated")
    ax.set_ylabel("best-so-far fitness (val, screening)")
    ax.set_title("Best screened fitness so far, mean over search seeds", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
