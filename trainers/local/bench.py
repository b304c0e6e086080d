"""Benchmark the embedded testbed: CPU cost per candidate-seed, throughput, memory, and
the GPU speed-up where there is a GPU.

    python -m trainers.local.bench --out DIR [--steps N] [--algorithm grpo] [--device auto]
    python -m trainers.local.bench --out DIR --engines [--paired-seeds 5] [--workers 2]
    python -m trainers.local.bench --out DIR --trl [--cycles 8]

Prints a table and writes ``DIR/bench.json`` with ``cpu_seconds_per_candidate_seed``
(default budget, evaluation included), ``tokens_per_second`` (sampling with the KV cache),
``train_tokens_per_second`` (forward+backward over response tokens), ``peak_rss_mb`` and
the warm-start build cost when it was built by this call. The throughput probes run the
trusted model code in this process with one thread; the algorithm's training run is a
sandboxed job (trainers/local/jobs.py), as in compare and the loop, and its peak RSS is
the sandbox child's. A candidate that fails there is reported with the sandbox's reason
(exit code 1).

GPU: with ``--device auto`` (the default) on a machine with CUDA, or ``--device cuda[:N]``,
the same job (same warm start, model, budget, seed; trainers/local/device.py) is also
run on the GPU right after the CPU one, with the same throughput probes, and the table
and ``bench.json`` give both side by side with the speed-ups (wall-clock: CPU one
thread vs GPU; a GPU's work is not CPU time). Without CUDA, or with ``--device cpu``,
``bench.json`` has ``"gpu": null`` and ``"gpu_note"`` saying why no speed-up was
measured: no number is made up. The GPU path has not been run on a GPU here.

Engines: ``--engines`` trains the algorithm with every engine in the same run, on the same
seeds, as sandboxed jobs: the round-1 engine (``reference``, trainers/local/model.py), the
fast one (``fast``, trainers/local/engine.py) and the fast one with its decode step
compiled ahead of time (``compiled``, trainers/local/compiled.py; built here, in the
trusted parent, before any job, so no measured job pays for it). It reports each engine's
CPU-s per candidate-seed by phase, peak RSS and final Overall, and the speed-ups
(reference CPU-s / each engine's). With ``--paired-seeds N`` it is also the same-learning
check: seeds 0..N-1 on every engine, each engine's paired Overall difference from the
reference with its 95% t interval. Its jobs are kept under ``DIR/engine-runs`` (a killed
check resumes).

TRL: ``--trl`` (the optional ``trl`` extra) trains GRPO on the same model, batch and
optimizer with TRL's ``GRPOTrainer`` (trainers/local/trl_anchor.py, in a child process)
and with POISE (every engine, sandboxed jobs), one after the other, and reports the CPU-s
per GRPO cycle (one generation + its minibatch updates; the first cycle is a warm-up) of
each, their ratios, and each process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from statistics import fmean
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from evals.tasks import BOS, PromptStream, encode  # noqa: E402
from trainers.source import CandidateError, resolve_algorithm  # noqa: E402
from trainers.local.device import (DeviceError, cuda_available, is_cuda,  # noqa: E402
                                   resolve_device, setup_cuda)
from trainers.local.engines import ENGINES, select  # noqa: E402
from trainers.local.evaluate import testbed_profile  # noqa: E402
from trainers.local.jobs import Job, run_jobs  # noqa: E402
from trainers.local.model import left_pad  # noqa: E402
from trainers.local.trainer import PHASES, TrainConfig, phase_totals  # noqa: E402
from trainers.local.warmstart import (WarmStartConfig, checkpoint_path, default_home,  # noqa: E402
                                      load_or_build)

NO_GPU_NOTE = "no GPU here: GPU speed-up not measured"
CPU_ONLY_NOTE = ("--device cpu: GPU speed-up not measured (a GPU is here: --device auto "
                 "or cuda measures it)")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def throughput(model, cfg: TrainConfig, repeats: int = 3, device: str = "cpu"
               ) -> tuple[float, float]:
    """(sampled tokens / s, trained tokens / s) on training-shaped batches, on the
    model's ``device``, with the engine the trainer uses (``cfg.engine``): per CPU-second
    on the CPU (one thread), per wall-clock second (synchronized) on CUDA."""
    generate, response_logprobs = select(cfg.engine)
    stream = PromptStream(seed=999)
    gen_tok = gen_t = train_tok = train_t = 0.0
    opt = torch.optim.Adam(model.parameters(), lr=0.0)  # lr 0: measure, do not change

    def clock() -> float:
        if not is_cuda(device):
            return time.process_time()
        torch.cuda.synchronize(torch.device(device))
        return time.perf_counter()

    for r in range(repeats):
        probs = [p for p in stream.next_batch(cfg.prompts_per_step)
                 for _ in range(cfg.group_size)]
        ids, mask = left_pad([[BOS] + encode(p.prompt) for p in probs], device=device)
        t0 = clock()
        g = generate(model, ids, mask, cfg.max_response, 1.0,
                     torch.Generator(device=device).manual_seed(r), group_size=cfg.group_size)
        gen_t += clock() - t0
        gen_tok += float(g.mask.sum())
        t0 = clock()
        logp = response_logprobs(model, ids, mask, g.tokens, g.mask, group_size=cfg.group_size)
        loss = -(logp.sum() / g.mask.sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_t += clock() - t0
        train_tok += float(g.mask.sum())
    return gen_tok / gen_t, train_tok / train_t


def main(argv=None, *, train_config: TrainConfig | None = None,
         warm_config: WarmStartConfig | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m trainers.local.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--home", type=Path, default=None)
    p.add_argument("--algorithm", default="grpo")
    p.add_argument("--steps", type=int, default=None,
                   help="override the default training budget (steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", metavar="DEV",
                   help="auto (default): also measure the GPU when CUDA is here; cpu: the "
                        "CPU only; cuda or cuda:N: that GPU (an error where there is none)")
    p.add_argument("--engines", action="store_true",
                   help="train on the reference and the fast engine side by side (CPU)")
    p.add_argument("--paired-seeds", type=int, default=1, metavar="N",
                   help="with --engines: seeds 0..N-1 on both engines, and the paired "
                        "Overall difference with its 95%% CI (default 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="with --engines: sandboxed jobs at once (default 1)")
    p.add_argument("--trl", action="store_true",
                   help="GRPO with TRL's GRPOTrainer beside POISE's engines (the trl extra)")
    p.add_argument("--cycles", type=int, default=8,
                   help="with --trl: GRPO cycles per trainer (default 8; the first is a "
                        "warm-up)")
    args = p.parse_args(argv)
    if args.trl:
        import importlib.util

        from trainers.local.trl_anchor import MISSING

        problem = ("--trl and --engines are separate modes" if args.engines else
                   "--cycles must be >= 2" if args.cycles < 2 else
                   "--trl compares GRPO: leave --algorithm at grpo"
                   if args.algorithm != "grpo" else
                   "--trl measures the CPU (use --device cpu or auto)"
                   if args.device not in ("auto", "cpu") else
                   MISSING if importlib.util.find_spec("trl") is None else None)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
    if args.paired_seeds < 1 or args.workers < 1:
        print("error: --paired-seeds and --workers must be >= 1", file=sys.stderr)
        sys.exit(2)
    if args.engines and args.device not in ("auto", "cpu"):
        print("error: --engines measures the CPU engines (use --device cpu or auto)",
              file=sys.stderr)
        sys.exit(2)
    try:
        device = resolve_device(args.device)
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(1)
    console = Console()
    try:
        label, source = resolve_algorithm(args.algorithm)
    except CandidateError as e:
        print(f"error: {e.message}", file=sys.stderr)
        sys.exit(2)
    home = args.home or default_home()
    warm = warm_config or WarmStartConfig()
    built = not checkpoint_path(warm, home).is_file()
    t0 = time.process_time()
    with console.status("warm start..."):
        model = load_or_build(warm, home)
    warm_cpu = time.process_time() - t0 if built else None
    cfg = train_config or TrainConfig()
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.engines:
        return engines_main(console, args, label, source, home, cfg, warm)
    if args.trl:
        return trl_main(console, args, label, source, home, cfg, warm)
    compiled_note = prebuild(console, warm, home) if cfg.engine == "compiled" else None
    with console.status("warm-start profile..."):
        profile = testbed_profile(model)
    tok_s, train_tok_s = throughput(model, cfg)
    result = _job(console, label, source, args.seed, home, cfg, warm, "cpu")
    report = {
        "algorithm": label,
        "device": "cpu",
        "steps": result["steps_done"],
        "cpu_seconds_per_candidate_seed": result["cpu_seconds"],
        "train_cpu_seconds": result["train_cpu_seconds"],
        "eval_cpu_seconds": result["cpu_seconds"] - result["train_cpu_seconds"],
        **{f"{k}_cpu_seconds": v for k, v in result["phase_cpu_seconds"].items()},
        "wall_seconds_per_candidate_seed": result["wall_s"],
        "tokens_per_second": tok_s,
        "train_tokens_per_second": train_tok_s,
        "peak_rss_mb": max(peak_rss_mb(), result["peak_rss_mb"]),
        "warm_start_cpu_seconds": warm_cpu,
        "model_params": model.num_params(),
        "final_overall": result["final"]["overall"],
        "engine": cfg.engine,
        "compiled_decode": compiled_note,
    }
    if is_cuda(device):
        report["gpu"] = gpu_side(console, label, source, args.seed, home, cfg, warm, device,
                                 report)
        report["gpu_note"] = (f"measured here on {report['gpu']['name']}: the same job "
                              f"(warm start, model, budget, seed) on {device} vs one CPU "
                              "thread")
    else:
        report["gpu"] = None
        report["gpu_note"] = CPU_ONLY_NOTE if cuda_available() else NO_GPU_NOTE
    print_report(console, report, profile)
    _write(console, args.out, {**report, "warm_start_profile": profile})
    return report


def engines_main(console, args, label: str, source: str, home: Path, cfg: TrainConfig,
                 warm: WarmStartConfig) -> dict:
    """Every engine on seeds 0..N-1 in one run; the table, and ``DIR/bench.json``."""
    from evals.stats import paired_diff_ci

    seeds = list(range(args.paired_seeds))
    compiled_note = prebuild(console, warm, home)
    jobs = [Job(f"{label}.{engine}", source, seed, str(home),
                replace(cfg, engine=engine).as_dict(),
                asdict(warm)) for engine in ENGINES for seed in seeds]
    console.rule(f"{label}: {len(jobs)} sandboxed runs ({', '.join(ENGINES)} x seeds "
                 f"{seeds[0]}..{seeds[-1]}), {args.workers} at once")
    results = run_jobs(jobs, args.workers, args.out / "engine-runs")
    bad = [r for r in results if r["status"] != "ok"]
    if bad:
        print(f"error: {label} failed in training: {bad[0]['error'][:500]}", file=sys.stderr)
        sys.exit(1)
    by = {e: results[i * len(seeds):(i + 1) * len(seeds)] for i, e in enumerate(ENGINES)}
    per_engine = {}
    for engine, rs in by.items():
        per_engine[engine] = {
            "cpu_seconds_per_candidate_seed": fmean([r["cpu_seconds"] for r in rs]),
            "train_cpu_seconds": fmean([r["train_cpu_seconds"] for r in rs]),
            "eval_cpu_seconds": fmean([r["cpu_seconds"] - r["train_cpu_seconds"] for r in rs]),
            "wall_seconds_per_candidate_seed": fmean([r["wall_s"] for r in rs]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "final_overall": fmean([r["final"]["overall"] for r in rs]),
            "phase_cpu_seconds": mean_phases(rs),
            "per_seed": [{"seed": r["seed"], "cpu_seconds": r["cpu_seconds"],
                          "overall": r["final"]["overall"]} for r in rs],
        }
    ref = per_engine["reference"]
    others = [e for e in ENGINES if e != "reference"]
    report = {
        "algorithm": label, "steps": cfg.steps, "seeds": seeds, "workers": args.workers,
        "engines": per_engine,
        "compiled_decode": compiled_note,
        # reference CPU-s / each engine's, per candidate-seed and for training alone
        "speedup_vs_reference": {e: ref["cpu_seconds_per_candidate_seed"]
                                 / per_engine[e]["cpu_seconds_per_candidate_seed"]
                                 for e in others},
        "train_speedup_vs_reference": {e: ref["train_cpu_seconds"]
                                       / per_engine[e]["train_cpu_seconds"] for e in others},
    }
    if len(seeds) >= 2:  # each engine's final Overall minus the reference's, paired by seed
        report["same_learning"] = {}
        for e in others:
            ci = paired_diff_ci([r["overall"] for r in ref["per_seed"]],
                                [r["overall"] for r in per_engine[e]["per_seed"]])
            report["same_learning"][e] = {
                "metric": "final overall (val)", "diff": f"{e} - reference",
                "mean": ci.mean, "ci_low": ci.ci_low, "ci_high": ci.ci_high, "n": ci.n,
                "sd": ci.sd, "level": ci.level, "zero_in_ci": not ci.excludes_zero}
    print_engines(console, report)
    _write(console, args.out, report)
    return report


def trl_main(console, args, label: str, source: str, home: Path, cfg: TrainConfig,
             warm: WarmStartConfig) -> dict:
    """CPU-s per GRPO cycle: POISE's engines (sandboxed) and TRL (a child process)."""
    import subprocess
    import tempfile

    from trainers.local.evaluate import EvalConfig

    k = args.cycles
    tiny = EvalConfig(size=16, pass_problems=4)  # evaluation is not part of a cycle
    short = replace(cfg, steps=k, eval_every=k, curve_eval=tiny, final_eval=tiny,
                    cpu_budget=None)
    poise = {}
    compiled_note = prebuild(console, warm, home)
    for engine in ENGINES:
        r = _job(console, f"{label}.{engine}", source, args.seed, home,
                 replace(short, engine=engine), warm, "cpu")
        cpu = [row["cpu_seconds"] for row in r["curve"]]
        poise[engine] = {"cpu_seconds_per_cycle": (cpu[-1] - cpu[0]) / (len(cpu) - 1),
                         "peak_rss_mb": r["peak_rss_mb"],
                         "mean_response_length": fmean([row["response_length"]
                                                        for row in r["curve"]])}
    with tempfile.TemporaryDirectory() as tmp, console.status(
            f"TRL GRPOTrainer: {k} GRPO cycles on the CPU (child process)..."):
        t = Path(tmp)
        (t / "warm.json").write_text(json.dumps(asdict(warm)))
        (t / "train.json").write_text(json.dumps(short.as_dict()))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(
            [sys.executable, "-m", "trainers.local.trl_anchor", "--home", str(home), "--out",
             str(t / "trl.json"), "--warm-config", str(t / "warm.json"), "--train-config",
             str(t / "train.json"), "--seed", str(args.seed), "--cycles", str(k)],
            env=env, capture_output=True, text=True)
        if done.returncode != 0 or not (t / "trl.json").is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"error: the TRL run failed (exit {done.returncode}): {tail[:400]}",
                  file=sys.stderr)
            sys.exit(1 if done.returncode != 2 else 2)
        trl = json.loads((t / "trl.json").read_text())
    report = {
        "mode": "trl", "algorithm": label, "cycles": k, "measured_cycles": k - 1,
        "batch": {"prompts": cfg.prompts_per_step, "group_size": cfg.group_size,
                  "max_response": cfg.max_response, "minibatch_updates": cfg.minibatches,
                  "lr": cfg.lr},
        "poise": poise, "trl": trl, "compiled_decode": compiled_note,
        "speedup_vs_trl": {e: trl["cpu_seconds_per_cycle"] / v["cpu_seconds_per_cycle"]
                           for e, v in poise.items()},
    }
    t = Table(title=f"CPU-s per GRPO cycle ({cfg.prompts_per_step} prompts x "
                    f"{cfg.group_size}, <= {cfg.max_response} tokens, {cfg.minibatches} "
                    f"updates; mean of {k - 1} cycles after a warm-up; one thread)")
    for col in ("trainer", "CPU-s / cycle", "TRL / this", "peak RSS MB"):
        t.add_column(col, justify="left" if col == "trainer" else "right")
    t.add_row(f"TRL {trl['trl_version']} GRPOTrainer", f"{trl['cpu_seconds_per_cycle']:.3f}",
              "x1.00", f"{trl['peak_rss_mb']:,.0f}")
    for e, v in poise.items():
        t.add_row(f"POISE ({e} engine)", f"{v['cpu_seconds_per_cycle']:.3f}",
                  f"x{report['speedup_vs_trl'][e]:.2f}", f"{v['peak_rss_mb']:,.0f}")
    console.print(t)
    _write(console, args.out, report)
    return report


def mean_phases(results: list[dict]) -> dict[str, float] | None:
    """Mean CPU-s per phase over the runs (trainer.PHASES); None when a run has no split
    (a result cached before the trainer recorded one)."""
    total = phase_totals([r.get("phase_cpu_seconds") for r in results])
    return None if total is None else {k: total[k] / len(results) for k in PHASES}


def print_phases(console: Console, report: dict) -> None:
    """Where a candidate-seed's CPU goes, per engine, with each phase's share."""
    eng = report["engines"]
    names = list(eng)
    if not all(eng[e].get("phase_cpu_seconds") for e in names):
        return
    others = [e for e in names if e != "reference"]
    t = _engine_table("where the CPU goes: mean CPU-s per candidate-seed by phase (share)",
                      "phase", names, [f"reference / {e}" for e in others])
    tot = {e: sum(eng[e]["phase_cpu_seconds"].values()) for e in names}
    for k in PHASES:
        v = {e: eng[e]["phase_cpu_seconds"][k] for e in names}
        t.add_row(k, *(f"{v[e]:,.1f} ({v[e] / tot[e]:.0%})" for e in names),
                  *(f"x{v['reference'] / v[e]:.2f}" if v[e] > 0 else "-" for e in others))
    console.print(t)


def _engine_table(title: str, first: str, names: list[str], extra: list[str]) -> Table:
    """A table with a label column, one column per engine, then the comparison columns."""
    t = Table(title=title)
    t.add_column(first)
    for col in [*names, *extra]:
        t.add_column(col, justify="right")
    return t


def prebuild(console: Console, warm: WarmStartConfig, home: Path) -> dict:
    """Build (once per machine) and check the compiled engine's decode step here, in
    the trusted parent, so that no measured job pays for the build; what it cost."""
    from trainers.local import compiled

    path = compiled.package_path(warm.model)
    built = not path.is_file()
    t0, w0 = time.process_time(), time.time()
    with console.status("compiled engine: building its decode step (once per machine)..."
                        if built else "compiled engine: loading its decode step..."):
        error = compiled.prepare(warm.model)
    note = {"package": str(path), "built_now": built and error is None,
            "build_cpu_seconds_parent": time.process_time() - t0 if built else None,
            "build_wall_seconds": time.time() - w0 if built else None, "error": error}
    if error:
        console.print(f"[yellow]compiled engine: no compiled decode step ({error}); its "
                      "jobs decode eagerly[/yellow]")
    elif built:
        console.print(f"compiled engine: decode step built in {note['build_wall_seconds']:.0f}"
                      f" s of wall ({path.name})")
    return note


def _write(console: Console, out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out / 'bench.json'}")


def print_engines(console: Console, report: dict) -> None:
    eng = report["engines"]
    names = list(eng)
    others = [e for e in names if e != "reference"]
    t = _engine_table(f"{report['algorithm']}: {', '.join(names)} engines, {report['steps']} "
                      f"steps, seeds {report['seeds'][0]}..{report['seeds'][-1]} (CPU: one "
                      "thread per job)", "metric", names, [f"reference / {e}" for e in others])
    for k in ("cpu_seconds_per_candidate_seed", "train_cpu_seconds", "eval_cpu_seconds",
              "wall_seconds_per_candidate_seed", "peak_rss_mb", "final_overall"):
        a = eng["reference"][k]
        t.add_row(k, *(f"{eng[e][k]:,.1f}" for e in names),
                  *(f"x{a / eng[e][k]:.2f}" if "seconds" in k else "" for e in others))
    console.print(t)
    print_phases(console, report)
    if "same_learning" not in report:
        return
    st = _engine_table("same learning: final Overall per seed (val)", "seed", names,
                       [f"{e} - reference" for e in others])
    per = {e: eng[e]["per_seed"] for e in names}
    for i, a in enumerate(per["reference"]):
        st.add_row(str(a["seed"]), *(f"{per[e][i]['overall']:.2f}" for e in names),
                   *(f"{per[e][i]['overall'] - a['overall']:+.2f}" for e in others))
    sl = report["same_learning"]
    st.add_row("mean [95% CI]", *(f"{eng[e]['final_overall']:.2f}" for e in names),
               *(f"{sl[e]['mean']:+.2f} [{sl[e]['ci_low']:+.2f}, {sl[e]['ci_high']:+.2f}]"
                 for e in others))
    console.print(st)
    for e in others:
        console.print(f"{e}: the CI holds 0, no detectable difference in learning"
                      if sl[e]["zero_in_ci"] else
                      f"[yellow]{e}: the CI excludes 0, it learns differently from the "
                      "reference engine[/yellow]")


def _job(console, label: str, source: str, seed: int, home: Path, cfg: TrainConfig,
         warm: WarmStartConfig, device: str) -> dict:
    """One sandboxed training run on ``device``; a failure ends the command (exit 1)."""
    with console.status(f"one {label} run of {cfg.steps} steps on {device} (sandboxed)..."):
        result, = run_jobs([Job(label, source, seed, str(home), cfg.as_dict(), asdict(warm),
                                device)], workers=1, quiet=True)
    if result["status"] != "ok":
        print(f"error: {label} failed in training{'' if device == 'cpu' else ' on ' + device}"
              f": {result['error'][:500]}", file=sys.stderr)
        sys.exit(1)
    return result


def gpu_side(console, label: str, source: str, seed: int, home: Path, cfg: TrainConfig,
             warm: WarmStartConfig, device: str, cpu: dict) -> dict:
    """The CPU measurement's job and probes again on ``device``, from the same (CPU-built)
    warm start, and the speed-ups over the CPU (wall-clock)."""
    setup_cuda(device)
    model = load_or_build(warm, home, device=device)  # the CPU-built file, moved there
    tok_s, train_tok_s = throughput(model, cfg, device=device)
    result = _job(console, label, source, seed, home, cfg, warm, device)
    idx = torch.device(device).index
    name = torch.cuda.get_device_name(torch.cuda.current_device() if idx is None else idx)
    return {
        "device": device,
        "name": name,
        "steps": result["steps_done"],
        "wall_seconds_per_candidate_seed": result["wall_s"],
        "tokens_per_second": tok_s,
        "train_tokens_per_second": train_tok_s,
        "peak_rss_mb": result["peak_rss_mb"],
        "probe_peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
        "final_overall": result["final"]["overall"],
        "speedup_wall_per_candidate_seed": cpu["wall_seconds_per_candidate_seed"]
        / result["wall_s"],
        "speedup_sampled_tokens_per_second": tok_s / cpu["tokens_per_second"],
        "speedup_trained_tokens_per_second": train_tok_s / cpu["train_tokens_per_second"],
    }


def print_report(console: Console, report: dict, profile: dict) -> None:
    """The CPU and GPU columns side by side (the GPU's: its numbers, or why none)."""
    def fmt(v) -> str:
        return "-" if v is None else f"{v:,.1f}" if isinstance(v, float) else str(v)

    gpu = report.get("gpu")
    t = Table(title="trainers.local.bench (CPU: one thread; per-second figures are per "
                    "CPU-second on the CPU, per wall second on the GPU)")
    t.add_column("metric")
    t.add_column("cpu", justify="right")
    t.add_column(gpu["device"] if gpu else "gpu", justify="right")
    for k, v in report.items():
        if k in ("gpu", "gpu_note"):
            continue
        t.add_row(k, fmt(v), fmt(gpu.get(k)) if gpu else "")
    if gpu:
        for k in ("name", "probe_peak_gpu_memory_mb", "speedup_wall_per_candidate_seed",
                  "speedup_sampled_tokens_per_second", "speedup_trained_tokens_per_second"):
            t.add_row(k, "", fmt(gpu[k]))
    t.add_row("GPU speed-up", "", f"x{gpu['speedup_wall_per_candidate_seed']:.2f} (wall)"
              if gpu else report["gpu_note"])
    console.print(t)
    console.print(report["gpu_note"])
    pt = Table(title="warm start as GRPO sees it (T=1, groups of 8, val)")
    cols = list(next(iter(profile.values())))
    pt.add_column("family")
    for c in cols:
        pt.add_column(c, justify="right")
    for fam, row in profile.items():
        pt.add_row(fam, *[f"{row[c]:.1f}" for c in cols])
    console.print(pt)


if __name__ == "__main__":
    main(sys.argv[1:])
