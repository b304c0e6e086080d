"""Benchmark the embedded testbed: CPU cost per candidate-seed, throughput, memory.

    python -m trainers.local.bench --out DIR [--steps N] [--algorithm grpo]

Prints a table and writes ``DIR/bench.json`` with ``cpu_seconds_per_candidate_seed``
(default budget, evaluation included), ``tokens_per_second`` (sampling with the KV cache),
``train_tokens_per_second`` (forward+backward over response tokens), ``peak_rss_mb`` and
the warm-start build cost when it was built by this call. The throughput probes run the
trusted model code in this process with one thread; the algorithm's training run is a
sandboxed job (trainers/local/jobs.py), as in compare and the loop, and its peak RSS is
the sandbox child's. A candidate that fails there is reported with the sandbox's reason
(exit code 1).
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
from trainers.local.evaluate import testbed_profile  # noqa: E402
from trainers.local.jobs import Job, run_jobs  # noqa: E402
from trainers.local.model import generate, left_pad, response_logprobs  # noqa: E402
from trainers.local.trainer import TrainConfig  # noqa: E402
from trainers.local.warmstart import (WarmStartConfig, checkpoint_path, default_home,  # noqa: E402
                                      load_or_build)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def throughput(model, cfg: TrainConfig, repeats: int = 3) -> tuple[float, float]:
    """(sampled tokens / CPU-s, trained tokens / CPU-s) on training-shaped batches."""
    stream = PromptStream(seed=999)
    gen_tok = gen_t = train_tok = train_t = 0.0
    opt = torch.optim.Adam(model.parameters(), lr=0.0)  # lr 0: measure, do not change
    for r in range(repeats):
        probs = [p for p in stream.next_batch(cfg.prompts_per_step)
                 for _ in range(cfg.group_size)]
        ids, mask = left_pad([[BOS] + encode(p.prompt) for p in probs])
        t0 = time.process_time()
        g = generate(model, ids, mask, cfg.max_response, 1.0,
                     torch.Generator().manual_seed(r))
        gen_t += time.process_time() - t0
        gen_tok += float(g.mask.sum())
        t0 = time.process_time()
        logp = response_logprobs(model, ids, mask, g.tokens, g.mask)
        loss = -(logp.sum() / g.mask.sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_t += time.process_time() - t0
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
    args = p.parse_args(argv)
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
    with console.status(f"one {label} run at the default budget (sandboxed)..."):
        result, = run_jobs([Job(label, source, args.seed, str(home), cfg.as_dict(),
                                asdict(warm))], workers=1, quiet=True)
    if result["status"] != "ok":
        print(f"error: {label} failed in training: {result['error'][:500]}", file=sys.stderr)
        sys.exit(1)
    report = {
        "algorithm": label,
        "steps": result["steps_done"],
        "cpu_seconds_per_candidate_seed": result["cpu_seconds"],
        "train_cpu_seconds": result["train_cpu_seconds"],
        "eval_cpu_seconds": result["cpu_seconds"] - result["train_cpu_seconds"],
        "tokens_per_second": tok_s,
        "train_tokens_per_second": train_tok_s,
        "peak_rss_mb": max(peak_rss_mb(), result["peak_rss_mb"]),
        "warm_start_cpu_seconds": warm_cpu,
        "model_params": model.num_params(),
        "final_overall": result["final"]["overall"],
    }
    t = Table(title="trainers.local.bench (one thread)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in report.items():
        t.add_row(k, "-" if v is None else f"{v:,.1f}" if isinstance(v, float) else str(v))
    console.print(t)
    pt = Table(title="warm start as GRPO sees it (T=1, groups of 8, val)")
    cols = list(next(iter(profile.values())))
    pt.add_column("family")
    for c in cols:
        pt.add_column(c, justify="right")
    for fam, row in profile.items():
        pt.add_row(fam, *[f"{row[c]:.1f}" for c in cols])
    console.print(pt)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps({**report, "warm_start_profile": profile},
                                                    indent=2))
    console.print(f"wrote {args.out / 'bench.json'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
