"""``python -m graph.campaign``: the command (see the package docstring)."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from rich.console import Console

import graph.campaign as package
from evals.objective import ObjectiveSpec
from graph.campaign.plan import followed, make_plan, register
from graph.campaign.report import (plot_best_so_far, plot_pareto, print_summary, verdicts,
                                   write_report)
from graph.campaign.stages import (CampaignError, State, composed, full_steps, lineage,
                                   load_config, mechanism, promote, rediscovery, search, test_stage,
                                   transfer_stage)
from graph.run import gene_names_arg, rate_arg
from memory.selection import RULES
from trainers.home import resolve_home


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m graph.campaign", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--directive", required=True, help='e.g. "accurate" or "accurate and concise"')
    p.add_argument("--candidates", type=int, default=64, help="candidates to search (default 64)")
    p.add_argument("--seeds", type=int, default=8, help="fresh test seeds (default 8)")
    p.add_argument("--confirm-seeds", type=int, default=0,
                   help="after the test stage, train GRPO, the winner and the best other "
                        "baseline up to this many paired test seeds in all (default 0: off); "
                        "their CIs then use every seed")
    p.add_argument("--out", type=Path, required=True, help="campaign output directory")
    p.add_argument("--home", default=None, help="POISE home (default $POISE_HOME or ./.poise)")
    p.add_argument("--screen-steps", type=int, default=None,
                   help="training steps of the search stage (default 40; under a length "
                        "directive the full budget of promotion and test: a length "
                        "mechanism's Overall cost shows in the second half of training)")
    p.add_argument("--screen-seeds", type=int, default=3,
                   help="training seeds per candidate in the search stage; its fitness is "
                        "their mean (default 3)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of promotion and test (default: the trainer's)")
    p.add_argument("--promote", type=int, default=4,
                   help="candidates promoted to the full budget (default 4)")
    p.add_argument("--promote-seeds", type=int, default=8,
                   help="paired seeds per promoted candidate (default 8)")
    p.add_argument("--rank-sample", type=int, default=4,
                   help="screened candidates outside the promoted ones, drawn at random "
                        "(seeded by the run) and trained at promotion too, for the "
                        "screen-vs-promotion rank correlation (default 4; 0: off)")
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
                        "paired 95%% CI's lower bound is above -MARGIN; under a length "
                        "directive also the contract's margin for the winner (default 1.0)")
    p.add_argument("--job-timeout", type=float, default=None, metavar="S",
                   help="wall-clock and CPU limit of each sandboxed training run in "
                        "promotion, test and rediscovery (default: 600 s + 20 s per step)")
    p.add_argument("--selection", choices=RULES, default="gpucb",
                   help="the search's parent selection rule (default gpucb; potential, "
                        "greedy: the selection ablation)")
    p.add_argument("--without-genes", dest="exclude_genes", type=gene_names_arg, default=None,
                   metavar="GENES", help="the catalog ablation: genes the builtin scientist "
                   "may not use (slot=kind, comma-separated, or 'paper')")
    p.add_argument("--compose-rate", type=rate_arg, default=None, metavar="P",
                   help="how often the builtin scientist composes a new reward / "
                   "normalization expression from primitives (default 0.3; 0: catalog only)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-smoke", action="store_true", help="skip the verifier's smoke run")
    p.add_argument("--no-transfer", dest="transfer", action="store_false",
                   help="skip the transfer stage (RL on the families the search never saw)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("candidates", "seeds", "screen_steps", "screen_seeds", "promote",
                 "promote_seeds", "width", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seeds < 2:
        p.error("--seeds must be at least 2 for a paired CI")
    if args.rank_sample < 0:
        p.error("--rank-sample must be 0 or more")
    if not args.margin >= 0:
        p.error("--margin must be a number >= 0")
    if args.confirm_seeds and args.confirm_seeds <= args.seeds:
        p.error(f"--confirm-seeds must exceed --seeds ({args.seeds}) or be 0")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    if args.job_timeout is not None and not args.job_timeout > 0:
        p.error("--job-timeout must be a positive number of seconds")
    if not args.directive.strip():
        p.error("--directive is empty: say what to optimize, e.g. \"accurate\"")
    return args


def resolve_screen_steps(args, cfg: dict) -> None:
    """``--screen-steps`` when given, else its default from the directive and the full
    budget (``--steps``, else ``--config``'s train overrides, else the trainer's)."""
    if args.screen_steps is None:
        args.screen_steps = default_screen_steps(args.directive, full_steps(args, cfg))


def default_screen_steps(directive: str, full: int) -> int:
    """The search stage's budget: 40 steps, or the full budget ``full`` under a length
    directive. Measured on testbed v3 (docs/campaigns/v3-accurate-and-concise-3 and -4):
    at step 40 length mechanisms are already ~25% shorter at little Overall cost and lose
    3-9 points by step 80, so a 40-step screen promotes what the contract then rejects."""
    from evals.objective import objective_from_directive

    return full if objective_from_directive(directive).minimizes_length else min(40, full)


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


def _timed(state, key: str, stage, *args):
    """Run one stage and add its wall time to ``state[key]`` (summed over resumes)."""
    began = time.time()
    try:
        return stage(*args)
    finally:
        state.set(key, state.get(key, 0.0) + time.time() - began)


def _main(args, console: Console) -> int:
    from memory.archive import Archive

    home = resolve_home(args.home)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CampaignError(f"cannot create --out {args.out}: {e.strerror}") from None
    cfg = load_config(args)
    resolve_screen_steps(args, cfg)
    state = State(args.out)
    if state.get("directive", args.directive) != args.directive:
        raise CampaignError(f"{args.out} holds a campaign for \"{state.get('directive')}\"; "
                            "use another --out")
    state.set("directive", args.directive)
    changes = register(args.out, state, make_plan(args, cfg))  # before anything trains
    run_id = search(args, home, state, console)
    with Archive(home) as a:
        spec = ObjectiveSpec.model_validate(a.run(run_id).config["objective"]).model_copy(
            update={"margin": args.margin})  # one margin: the winner rule's and verdicts
        search_evals = [e for c in a.candidates(run_id) for e in a.evaluations(c.id)]
        search_cpu = sum(e.wall_time or 0.0 for e in search_evals)
        from trainers.local.trainer import phase_totals
        search_phases = phase_totals([(e.metrics or {}).get("cpu_seconds")
                                      for e in search_evals])
    prom = _timed(state, "promote_wall_s", promote, args, home, run_id, spec, cfg, console)
    test = _timed(state, "test_wall_s", test_stage, args, home,
                  (prom["winner"], prom["winner_source"]), cfg, console)
    transfer = (_timed(state, "transfer_wall_s", transfer_stage, args, home,
                       (prom["winner"], prom["winner_source"]), cfg, console)
                if args.transfer else None)
    redis = rediscovery(args, home, run_id, spec, cfg, console) if args.rediscovery else None
    lines = {f"{k} (screening)": v["score"] for k, v in (redis or {}).items()
             if isinstance(v, dict) and "score" in v}
    plot_best_so_far(home, run_id, args.out / "best_so_far.png", lines)
    plot_pareto(test, args.out / "pareto.png")
    compute = {"search_cpu_s": search_cpu, "promote_cpu_s": prom["cpu_seconds"],
               "test_cpu_s": test["cpu_seconds"],
               "transfer_cpu_s": (transfer or {}).get("cpu_seconds", 0.0),
               "rediscovery_cpu_s": (redis or {}).get("cpu_seconds", 0.0),
               **{k: state.get(k, 0.0) for k in ("search_wall_s", "promote_wall_s",
                                                  "test_wall_s", "transfer_wall_s")}}
    compute["total_cpu_s"] = sum(v for k, v in compute.items() if k.endswith("cpu_s"))
    # where each stage's training CPU went, by trainer phase (stages whose every run has
    # the split; the search's from its archived evaluations)
    compute["phase_cpu_s"] = {k: v for k, v in (
        ("search", search_phases), ("promote", prom.get("phase_cpu_seconds")),
        ("test", test.get("phase_cpu_seconds")),
        ("transfer", (transfer or {}).get("phase_cpu_seconds"))) if v}
    payload = {"directive": args.directive, "objective": spec.describe(),
               "command": "python -m graph.campaign " + shlex.join(args.argv),
               "args": {k: (str(v) if isinstance(v, Path) else v)
                        for k, v in vars(args).items()},
               "run_id": run_id, "promote": {k: v for k, v in prom.items()
                                             if k != "winner_source"},
               "test": test, "transfer": transfer, "lineage": lineage(home, run_id, prom["winner"]),
               "mechanism": mechanism(home, run_id, prom["winner"]),
               "composed": composed(home, run_id, [r["name"] for r in prom["rows"]
                                                   + prom.get("sampled_rows", [])]),
               "rediscovery": redis, "compute": compute,
               "verdicts": verdicts(test, args.margin, spec.minimizes_length, transfer),
               "plan": state.get("plan"), "plan_changes": changes}
    payload["plan_outcome"] = followed(payload["plan"], changes, payload)
    (args.out / "campaign.json").write_text(json.dumps(payload, indent=2, default=str))
    md = write_report(args.out, payload)
    print_summary(payload, console)
    console.print(f"wrote {args.out / 'campaign.json'}, {md}, {args.out / 'best_so_far.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
