"""Compare algorithms on the embedded testbed with paired seeds.

    python -m trainers.local.compare --algorithms grpo,dr_grpo,dapo,path/to/cand.py \\
        --seeds 5 --out DIR

Every algorithm trains in the sandbox (trainers/local/jobs.py: a sandbox child per
(algorithm, seed), as in the loop), from the same cached warm start with the same seeds (same prompt
streams, same sampler seeds), so differences are paired by seed. Prints a table (Overall
and per family, AUC, length, validity, deltas vs the first algorithm with 95% t CIs),
saves learning-curve PNGs and writes ``DIR/compare.json``. Results of finished runs are
kept in ``DIR/runs/``: rerunning the same command resumes instead of redoing them.
``--logger mlflow,tensorboard,wandb`` also logs each algorithm x seed as a tracked run
(trainers/tracking.py) under DIR, grouped as ``compare-<DIR name>``.
``--device`` (auto: CUDA when there is one, else CPU; trainers/local/device.py) is where
every job trains; on CUDA, unless a model config is given, the GPU preset's model and
batch. ``compare.json`` records the device, the preset and the model config.
``--profile`` also profiles each trained policy at T=1 per family (accuracy, the length of
correct answers and their tokens by part: restatement, steps, filler, re-checks...) and
prints the means: what RL removed from an answer and what it kept.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evals.stats import format_ci, mean_ci, paired_diff_ci
from evals.tasks import ALL_FAMILIES, FAMILIES, HARD_FAMILY, PASS_K
from trainers.source import CandidateError, resolve_algorithm
from trainers.baselines import BASELINES
from trainers.local.device import DeviceError, gpu_preset, is_cuda, resolve_device
from trainers.local.jobs import Job, run_jobs
from trainers.local.trainer import TrainConfig
from trainers.local.warmstart import (WarmStartConfig, default_home, load_or_build,
                                      read_warm_config, warm_config_from_dict)

OVERALL_KEY = "overall"


def validity_auc(run: dict) -> float:
    """Validity AUC in percent: the mean format-valid rate of the sampled (T=1) training
    batches over all steps. Greedy validity saturates near 100% and hides format breaks;
    the sampled batches are what the policy actually does, 128 samples a step."""
    return 100 * float(np.mean([row["validity"] for row in run["curve"]]))


def summarize(results: list[dict], labels: list[str], seeds: list[int]) -> list[dict]:
    """Per algorithm: means and paired deltas vs the first algorithm (same seeds)."""
    by = {(r["algorithm"], r["seed"]): r for r in results}
    base = labels[0]
    rows = []
    for label in labels:
        ok = [s for s in seeds if by.get((label, s), {}).get("status") == "ok"]
        failed = [by[(label, s)] for s in seeds if by.get((label, s), {}).get("status") != "ok"]
        row: dict = {"algorithm": label, "seeds": ok,
                     "failures": [{"seed": f["seed"], "error": f.get("error")} for f in failed]}
        if not ok:
            rows.append(row)
            continue
        runs = [by[(label, s)] for s in ok]
        fin = lambda k: np.array([r["final"][k] for r in runs])  # noqa: E731
        row["overall_mean"] = float(fin(OVERALL_KEY).mean())
        row["overall_ci95"] = _ci(mean_ci(fin(OVERALL_KEY)))
        # the families these runs were evaluated on (search, or a transfer stage's)
        row["families"] = {f.name: float(fin(f"{f.name}/acc@1").mean()) for f in ALL_FAMILIES
                           if f"{f.name}/acc@1" in runs[0]["final"]}
        t1 = {f.name: float(fin(f"{f.name}/pass@1").mean()) for f in ALL_FAMILIES
              if f.name != HARD_FAMILY and f"{f.name}/pass@1" in runs[0]["final"]}
        if t1:  # a transfer stage's: T=1 accuracy per family beside the greedy one
            row["families_t1"] = t1
        if f"{HARD_FAMILY}/pass@1" in runs[0]["final"]:
            row["pass@1"] = float(fin(f"{HARD_FAMILY}/pass@1").mean())
        if f"{HARD_FAMILY}/pass@{PASS_K}" in runs[0]["final"]:
            row[f"pass@{PASS_K}"] = float(fin(f"{HARD_FAMILY}/pass@{PASS_K}").mean())
        row["auc_overall"] = float(np.mean([r["auc"]["overall"] for r in runs]))
        row["mean_length"] = float(fin("length").mean())
        row["validity"] = float(fin("valid").mean())
        row["validity_auc"] = float(np.mean([validity_auc(r) for r in runs]))
        row["cpu_seconds_per_seed"] = float(np.mean([r["cpu_seconds"] for r in runs]))
        paired = [s for s in ok if by.get((base, s), {}).get("status") == "ok"]
        if paired:
            b = [by[(base, s)] for s in paired]
            a = [by[(label, s)] for s in paired]
            pick = {
                "delta_vs_baseline_ci95": lambda r: r["final"][OVERALL_KEY],
                "auc_delta_vs_baseline_ci95": lambda r: r["auc"]["overall"],
                "length_delta_vs_baseline_ci95": lambda r: r["final"]["length"],
                "validity_auc_delta_vs_baseline_ci95": validity_auc,
            }
            for key, f in pick.items():
                row[key] = _ci(paired_diff_ci([f(r) for r in b], [f(r) for r in a]))
        rows.append(row)
    return rows


def _ci(ci) -> dict:
    return {"mean": ci.mean, "low": ci.ci_low, "high": ci.ci_high, "n": ci.n,
            "text": format_ci(ci) if np.isfinite(ci.ci_low) else f"{ci.mean:+.1f} [n=1]"}


def print_table(rows: list[dict], console: Console, split: str = "val") -> None:
    base = rows[0]["algorithm"]
    t = Table(title=f"Embedded testbed: final {split} metrics (mean over seeds); deltas vs "
                    f"{base}, paired 95% CI", show_lines=False)
    for col in ["algorithm", "seeds", "Overall", *[f.name for f in FAMILIES],
                f"{HARD_FAMILY} T=1", f"{HARD_FAMILY} pass@{PASS_K}", "AUC", "length",
                "valid%", "validAUC",
                "dOverall", "dAUC", "dLength", "dValidAUC", "CPU-s/seed"]:
        t.add_column(col, justify="left" if col == "algorithm" else "right")
    for r in rows:
        if "overall_mean" not in r:
            t.add_row(r["algorithm"], "0", "[red]failed[/red]", *[""] * 14)
            continue
        d = lambda k: r[k]["text"] if k in r and r["algorithm"] != base else "-"  # noqa
        t.add_row(r["algorithm"], str(len(r["seeds"])),
                  f"{r['overall_mean']:.1f}", *[f"{v:.1f}" for v in r["families"].values()],
                  f"{r['pass@1']:.1f}" if "pass@1" in r else "-",
                  f"{r[f'pass@{PASS_K}']:.1f}", f"{r['auc_overall']:.1f}",
                  f"{r['mean_length']:.1f}", f"{r['validity']:.1f}",
                  f"{r['validity_auc']:.1f}",
                  d("delta_vs_baseline_ci95"), d("auc_delta_vs_baseline_ci95"),
                  d("length_delta_vs_baseline_ci95"),
                  d("validity_auc_delta_vs_baseline_ci95"),
                  f"{r['cpu_seconds_per_seed']:.0f}")
    console.print(t)
    for r in rows:
        for f in r["failures"]:
            console.print(f"[red]{escape(r['algorithm'])} seed {f['seed']} failed:[/red] "
                          f"{escape(str(f['error']))}")


def plot_curves(results: list[dict], labels: list[str], out: Path) -> list[Path]:
    """Learning curves, mean over seeds: the sampled training batches (smoothed) and the
    periodic val evaluations. Returns the PNG paths."""
    ok = [r for r in results if r.get("status") == "ok"]

    def train_series(runs, key):
        n = min(len(r["curve"]) for r in runs)
        y = np.mean([[row[key] for row in r["curve"][:n]] for r in runs], axis=0)
        w = max(1, n // 20)
        return np.arange(n - w + 1) + w, np.convolve(y, np.ones(w) / w, mode="valid")

    def eval_series(runs, key):
        n = min(len(r["evals"]) for r in runs)
        x = [e["step"] for e in runs[0]["evals"][:n]]
        return x, np.mean([[e[key] for e in r["evals"][:n]] for r in runs], axis=0)

    train_panels = [("reward", "reward"), ("accuracy", "train accuracy"),
                    ("entropy", "entropy"), ("response_length", "response length"),
                    ("validity", "validity rate"), ("kl_to_start", "KL to start")]
    eval_panels = [("overall", "val Overall"),
                   *[(f"{f.name}/acc@1", f"val {f.name} acc@1") for f in FAMILIES],
                   ("valid", "val validity % (greedy)"), ("length", "val greedy length")]
    return [_grid(ok, labels, train_panels, train_series, {}, out / "curves_train.png"),
            _grid(ok, labels, eval_panels, eval_series, {"marker": "o"},
                  out / "curves_eval.png")]


def _grid(runs: list[dict], labels: list[str], panels, series, style: dict,
          path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (key, title) in zip(axes.flat, panels):
        for label in labels:
            mine = [r for r in runs if r["algorithm"] == label]
            if mine:
                ax.plot(*series(mine, key), label=label, **style)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


class _Parser(argparse.ArgumentParser):
    """Bad flags are one line on stderr and exit code 2 (argparse prints the usage too)."""

    def error(self, message: str):
        _fail(f"{message} (see --help)")


def _fail(message: str):
    """Bad input: one line on stderr, exit code 2."""
    print(f"python -m trainers.local.compare: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="python -m trainers.local.compare", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", required=True,
                   help=f"comma-separated: baseline names ({', '.join(BASELINES)}) or "
                        "candidate .py files; the first is the reference for deltas")
    p.add_argument("--seeds", type=int, default=5, help="number of paired seeds (0..N-1)")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--home", type=Path, default=None,
                   help="POISE home for the warm-start cache (default $POISE_HOME or ./.poise)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run")
    p.add_argument("--cpu-budget", type=float, default=None,
                   help="stop training after this many CPU-seconds (per run)")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="held-out split of the final evaluation")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="parallel single-threaded training processes")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="wall-clock and CPU limit of each sandboxed training run (default: "
                        "600 s + 20 s per step)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--profile", action="store_true",
                   help="also profile each trained policy at T=1 per family (accuracy, "
                        "length of correct answers, tokens by part: what RL removed) "
                        "and print the means (trainers/local/testbed.py)")
    p.add_argument("--logger", default=None, metavar="NAMES",
                   help="also log each algorithm x seed to mlflow, tensorboard and/or wandb "
                        "(offline), comma-separated, under DIR (trainers/tracking.py)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="with --logger mlflow: the tracking URI (default "
                        "$MLFLOW_TRACKING_URI, else the file store DIR/mlruns)")
    p.add_argument("--warm-config", type=Path, default=None, metavar="JSON",
                   help="JSON file of WarmStartConfig fields: a variant warm start (e.g. "
                        "its corpus mix, docs/testbed.md), built once and cached by its key")
    p.add_argument("--device", default="auto", metavar="DEV",
                   help="auto (default: cuda when available, else cpu), cpu, cuda or "
                        "cuda:N; on CUDA the GPU preset's model and batch "
                        "(trainers/local/device.py)")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    if args.timeout is not None and not args.timeout > 0:
        p.error("--timeout must be a positive number of seconds")
    args.loggers = _loggers(args.logger, args.tracking_uri)
    try:
        args.device = resolve_device(args.device)
    except DeviceError as e:
        _fail(str(e))
    return args


def _loggers(text: str | None, tracking_uri: str | None) -> list[str]:
    """--logger's names, refused (one line, exit 2) when unknown or not installed."""
    from trainers.extras import MissingExtra
    from trainers.tracking import check_loggers, parse_loggers

    try:
        names = parse_loggers(text) if text is not None else []
        check_loggers(names, tracking_uri)
    except (ValueError, MissingExtra) as e:
        _fail(str(e))
    return names


def track(results: list[dict], out: Path, names: list[str], tracking_uri: str | None,
          config: dict) -> str:
    """Log every finished algorithm x seed to the trackers (idempotent: a resumed compare
    logs nothing twice); returns where they write."""
    from trainers.tracking import Trackers, resolve_tracking_uri

    out = out.absolute()
    trackers = Trackers(names, out, f"compare-{out.name}", group_tags={"poise_compare": out},
                        tracking_uri=resolve_tracking_uri(tracking_uri, out), config=config)
    for r in results:
        if r.get("status") == "ok":
            trackers.log_run(r["algorithm"], r["seed"], r, tags={"backend": "local"})
    return trackers.where()


def main(argv=None, *, train_config: TrainConfig | None = None,
         warm_config: WarmStartConfig | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.warm_config is not None:
        try:
            warm_config = read_warm_config(args.warm_config)
        except ValueError as e:
            _fail(str(e))
    console = Console(width=None if sys.stdout.isatty() else 220)
    try:
        specs = [s for s in args.algorithms.split(",") if s.strip()]
        if not specs:
            raise CandidateError("load", "--algorithms is empty")
        resolved = [resolve_algorithm(s) for s in specs]
    except CandidateError as e:
        _fail(e.message)
    labels = [label for label, _ in resolved]
    if len(set(labels)) != len(labels):
        _fail("two algorithms share a name: " + ", ".join(labels))
    preset = None
    if is_cuda(args.device) and warm_config is None:  # the GPU preset (device.py)
        preset = gpu_preset()
        warm_config = warm_config_from_dict(preset["warm_config"])
        if train_config is None:
            train_config = replace(TrainConfig(), **preset["train_overrides"])
    cfg = train_config or TrainConfig()
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.cpu_budget is not None:
        cfg = replace(cfg, cpu_budget=args.cpu_budget)
    cfg = replace(cfg, final_eval=replace(cfg.final_eval, split=args.split),
                  profile_after=args.profile)
    warm = warm_config or WarmStartConfig()
    home = args.home or default_home()
    _make_dirs([args.out, home])
    with console.status(f"warm start on {args.device} (built once, then cached)..."):
        load_or_build(warm, home, device=args.device)
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    jobs = [Job(label, source, seed, str(home), cfg.as_dict(), asdict(warm), args.device)
            for label, source in resolved for seed in seeds]
    results = run_jobs(jobs, args.workers, args.out / "runs", quiet=args.quiet,
                       timeout_s=args.timeout)
    rows = summarize(results, labels, seeds)
    print_table(rows, console, args.split)
    profiles = None
    if args.profile:
        from trainers.local.testbed import mean_profiles, print_profiles

        profiles = mean_profiles(results, labels)
        print_profiles(profiles, console)
    if args.loggers:
        where = track(results, args.out, args.loggers, args.tracking_uri,
                      {"algorithms": ",".join(labels), "split": args.split,
                       "train_config": cfg.as_dict()})
        console.print(f"tracking: {where}", soft_wrap=True)
    plots = plot_curves(results, labels, args.out)
    payload = {"algorithms": labels, "seeds": seeds, "split": args.split,
               "device": args.device, "preset": "gpu" if preset else None,
               "model": asdict(warm.model), "warm_config": asdict(warm),
               "warm_key": warm.key(), "train_config": cfg.as_dict(), "results": rows,
               "plots": [p.name for p in plots],
               **({"profiles": profiles} if profiles is not None else {})}
    (args.out / "compare.json").write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {args.out / 'compare.json'} and {', '.join(p.name for p in plots)}")
    return rows


def _make_dirs(paths: list[Path]) -> None:
    """Create ``paths``; if one cannot be, remove the ones created here and fail."""
    created: list[Path] = []
    for path in paths:
        if path.exists() and not path.is_dir():
            _undo(created)
            _fail(f"cannot create {path}: a file is in its place")
        top = path.absolute()
        while not top.parent.exists():
            top = top.parent
        try:
            if not path.exists():
                path.mkdir(parents=True)
                created.append(top)
        except OSError as e:
            _undo(created)
            _fail(f"cannot create {path}: {e.strerror}")


def _undo(created: list[Path]) -> None:
    import shutil

    for path in created:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
