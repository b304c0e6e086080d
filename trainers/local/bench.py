"""Benchmark the embedded testbed: CPU cost per candidate-seed, throughput, memory, and
the GPU speed-up where there is a GPU.

    python -m trainers.local.bench --out DIR [--steps N] [--algorithm grpo] [--device auto]

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
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
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
from trainers.local.evaluate import testbed_profile  # noqa: E402
from trainers.local.jobs import Job, run_jobs  # noqa: E402
from trainers.local.model import generate, left_pad, response_logprobs  # noqa: E402
from trainers.local.trainer import TrainConfig  # noqa: E402
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
    model's ``device``: per CPU-second on the CPU (one thread), per wall-clock second
    (synchronized) on CUDA."""
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
                     torch.Generator(device=device).manual_seed(r))
        gen_t += clock() - t0
        gen_tok += float(g.mask.sum())
        t0 = clock()
        logp = response_logprobs(model, ids, mask, g.tokens, g.mask)
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
    args = p.parse_args(argv)
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
        "wall_seconds_per_candidate_seed": result["wall_s"],
        "tokens_per_second": tok_s,
        "train_tokens_per_second": train_tok_s,
        "peak_rss_mb": max(peak_rss_mb(), result["peak_rss_mb"]),
        "warm_start_cpu_seconds": warm_cpu,
        "model_params": model.num_params(),
        "final_overall": result["final"]["overall"],
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps({**report, "warm_start_profile": profile},
                                                    indent=2))
    console.print(f"wrote {args.out / 'bench.json'}")
    return report


def _job(console, label: str, source: str, seed: int, home: Path, cfg: TrainConfig,
         warm: WarmStartConfig, device: str) -> dict:
    """One sandboxed training run on ``device``; a failure ends the command (exit 1)."""
    with console.status(f"one {label} run at the default budget on {device} (sandboxed)..."):
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
