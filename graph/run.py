"""Run the POISE loop: ``python -m graph.run --directive "accurate and concise"``.

The command line only: it parses flags into a ``RunRequest`` (graph/request.py) and hands
it to the library (graph/runner.py).

Embedded defaults: builtin offline agents, the local CPU trainer, SQLite + embedded
Chroma under ``--home``. Shows live progress, ends with a leaderboard, and writes
``<home>/runs/<run_id>/summary.json``. ``--resume RUN_ID`` continues a killed run from
its last checkpoint; finished candidates are not redone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from graph import tracing
from graph.request import RunRequest
from graph.runner import UsageError, run
from trainers.home import resolve_home


def _run_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected run ids like 3 or 3,5, got {text!r}"
                                         ) from None
    if not ids or min(ids) < 1:
        raise argparse.ArgumentTypeError(f"expected run ids like 3 or 3,5, got {text!r}")
    return ids


def gene_names_arg(text: str) -> list[str]:
    from agents.builtin.genes import excluded_kinds

    names = [t.strip() for t in text.split(",") if t.strip()]
    try:
        excluded_kinds(names)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).split("; the catalog")[0]) from None
    return names


def rate_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1]")
    return value


def parse_args(argv=None) -> RunRequest:
    from memory.cli import Parser  # one-line errors, exit code 2
    from memory.selection import RULES

    p = Parser(prog="python -m graph.run", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--directive", help="what to optimize, e.g. \"accurate and concise\"")
    p.add_argument("--candidates", type=int, default=8,
                   help="new candidates after the seed baseline (default 8)")
    p.add_argument("--home", default=None, help="POISE home (default $POISE_HOME or ./.poise)")
    p.add_argument("--resume", type=int, metavar="RUN_ID", help="continue a stopped run")
    p.add_argument("--model", default=None,
                   help="LLM for all agents, e.g. openai:gpt-4.1-mini (default: builtin)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per candidate")
    p.add_argument("--steps", type=int, default=None, help="training steps per seed")
    p.add_argument("--width", type=int, default=2, help="candidates per round, in parallel")
    p.add_argument("--seed", type=int, default=0, help="seed of the builtin agents")
    p.add_argument("--no-smoke", action="store_true", help="skip the verifier's smoke run")
    p.add_argument("--config", type=Path, default=None,
                   help="JSON file of Context fields (e.g. train_overrides, warm_config)")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.add_argument("--trainer", choices=("local", "verl"), default="local",
                   help="training backend (verl: trainers/verl, needs GPUs)")
    p.add_argument("--trainer-config", default=None, metavar="FILE",
                   help="verl settings, YAML or .env (default $POISE_TRAINER_CONFIG)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --trainer verl: print the verl command and composed config "
                        "(the seed GRPO's, or each candidate's of --resume RUN_ID); no training")
    p.add_argument("--executor", choices=("process", "ray"), default=None,
                   help="where training jobs run: sandboxed local processes (default) or "
                        "Ray tasks; saved with the run, so --resume keeps it")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --executor ray: the cluster to join (auto, HOST:PORT, "
                        "ray://HOST:PORT); default: start a local Ray for the run")
    p.add_argument("--max-cost", type=float, default=None, metavar="USD",
                   help="stop at a round boundary before the run's LLM spend would pass "
                        "USD (list prices, agents/prices.py); --resume with a higher cap "
                        "continues")
    p.add_argument("--max-llm-tokens", type=int, default=None, metavar="N",
                   help="the same cap in LLM tokens (input + output)")
    p.add_argument("--replay", type=int, default=None, metavar="RUN_ID",
                   help="re-execute a recorded run of --home offline: every LLM reply "
                        "from its recording, no model server; into --replay-to DIR "
                        "(default <home>/replays/run-RUN_ID)")
    p.add_argument("--replay-to", default=None, metavar="DIR",
                   help="the replay's home (with --replay)")
    p.add_argument("--logger", dest="loggers", type=_loggers, default=None,
                   metavar="NAMES", help="log each candidate x seed's curves and final "
                   "metrics to mlflow, tensorboard and/or wandb (offline), comma-separated; "
                   "saved with the run (README, \"Experiment tracking\")")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="with --logger mlflow: the tracking URI (default "
                        "$MLFLOW_TRACKING_URI, else the file store <home>/mlruns)")
    p.add_argument("--selection", choices=RULES, default=None,
                   help="parent selection: gpucb (default: a Gaussian process over the "
                        "archive predicts each lineage's descendant gain), potential "
                        "(round 1's rule) or greedy (best fitness); settings via --config "
                        "selection_config")
    p.add_argument("--from-run", dest="from_runs", type=_run_ids, default=None,
                   metavar="RUN_ID[,RUN_ID]", help="start from these earlier runs' evaluated "
                   "candidates (code, results, reflections), copied without re-training; "
                   "the seed GRPO is re-trained only if their budget or testbed differ")
    p.add_argument("--without-genes", dest="exclude_genes", type=gene_names_arg, default=None,
                   metavar="GENES", help="an ablation: catalog genes the builtin scientist "
                   "may not use, comma-separated slot=kind, or 'paper' (validity masking, "
                   "analytic variance, correctness-gated length)")
    p.add_argument("--compose-rate", type=rate_arg, default=None, metavar="P",
                   help="the fraction of the builtin scientist's proposals that compose a new "
                   "reward / normalization expression from primitives instead of drawing "
                   "from the catalog (default 0.3; 0: the catalog only)")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="where the local trainer trains: auto (default: cuda when "
                        "available, else cpu), cpu, cuda or cuda:N; on CUDA the GPU preset "
                        "(a larger model and batch) unless --config gives a warm_config; "
                        "--resume keeps the run's device")
    args = p.parse_args(argv)
    if args.device is None and args.resume is None and args.replay is None:
        args.device = "auto"  # a new run; a resumed or replayed one keeps its saved device
    if args.max_cost is not None and not args.max_cost > 0:
        p.error("--max-cost must be a positive number of USD")
    if args.max_llm_tokens is not None and args.max_llm_tokens < 1:
        p.error("--max-llm-tokens must be at least 1")
    if args.replay is not None and (args.resume is not None or args.directive):
        p.error("--replay re-executes a recorded run: it takes no --directive or --resume")
    if args.replay_to and args.replay is None:
        p.error("--replay-to needs --replay RUN_ID")
    if args.dry_run and args.trainer != "verl":
        p.error("--dry-run needs --trainer verl")
    for name in ("candidates", "seeds", "width"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    if args.resume is None and args.directive is None and not args.dry_run \
            and args.replay is None:
        p.error("--directive is required (or --resume RUN_ID)")
    if args.exclude_genes and args.model not in (None, "builtin"):
        p.error("--without-genes removes genes from the builtin scientist's catalog; an LLM "
                "scientist writes free-form code (drop --model)")
    if args.from_runs and (args.resume is not None or args.replay is not None):
        p.error("--from-run starts a new run: it takes no --resume or --replay")
    if args.ray_address and args.executor == "process":
        p.error("--ray-address needs --executor ray")
    flags = vars(args)
    request = RunRequest(smoke=not flags.pop("no_smoke"), **flags)
    _require_extras(request)
    return request


def _loggers(text: str) -> list[str]:
    from trainers.tracking import parse_loggers

    try:
        return parse_loggers(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _require_extras(request: RunRequest) -> None:
    """A backend whose optional extra is missing is refused before anything is written."""
    from trainers.extras import MissingExtra, require

    try:
        if request.trainer == "verl":
            require("verl", "--trainer verl")
        if request.executor == "ray" or request.ray_address:
            require("ray", "--executor ray")
        if request.loggers:  # the whole choice (with a resumed run's) is checked again
            from trainers.tracking import check_loggers   # by graph.runner._connect

            check_loggers(request.loggers, request.tracking_uri)
    except (MissingExtra, ValueError) as e:
        raise UsageError(str(e)) from None

def run_verl(request: RunRequest) -> int:
    """The verl backend (trainers/verl/launcher.py); --resume RUN_ID picks the candidates
    whose commands a dry run prints."""
    from trainers.verl.launcher import graph_entry

    home = resolve_home(request.home)
    candidates = None
    if request.resume is not None and request.dry_run:
        from memory.archive import Archive
        from memory.schema import ArchiveError

        try:
            archive = Archive(home)
            candidates = [(c.name, c.code) for c in archive.candidates(request.resume) if c.code]
        except ArchiveError as e:
            raise UsageError(str(e)) from None
        if not candidates:
            raise UsageError(f"run {request.resume} in {home} has no candidate code")
    if request.dry_run:
        return graph_entry(candidates, request.trainer_config, home, True, request.seed)
    from trainers.verl.config import ConfigError, load_verl_config
    from trainers.verl.launcher import preflight

    try:
        problems = preflight(load_verl_config(request.trainer_config))
    except ConfigError as e:
        raise UsageError(f"verl trainer config: {e}") from None
    if problems:
        raise UsageError("cannot train with verl here: " + "; ".join(problems)
                         + " (--dry-run shows the command)")
    request.executor, request.ray_address = "verl", None
    return None  # the loop runs with the verl executor


def main(argv=None) -> int:
    console = Console()
    try:
        request = parse_args(argv)
        if request.trainer == "verl":
            code = run_verl(request)
            if code is not None:
                return code
        tracer = tracing.start()  # None unless LangSmith tracing is on
        with tracing.session(tracer):  # sends every trace before the CLI exits
            run(request, console, tracer)
    except UsageError as e:  # one line, unwrapped: scripts grep it
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: resume with --resume RUN_ID (see the run header)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
