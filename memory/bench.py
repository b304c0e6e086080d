"""Benchmark the memory layer at scale.

    python -m memory.bench --out DIR [--reflections 10000] [--candidates 500]
        [--queries 100] [--seed 0]

Fills a temporary archive (real SQLite, real Chroma, the real embedding model) with
synthetic reflections and writes ``DIR/memory_bench.json``:

- insert_per_second: reflections through ``Archive.add_reflections`` (SQL commit,
  embedding, Chroma upsert, flag), batches of 250, over the whole fill;
  single_insert_p50_ms: one ``add_reflection`` call.
- query_p50_ms / query_p95_ms: ``Archive.similar_reflections(text, k=5)`` end to end
  (embed the query, Chroma search, SQL join with the candidates' outcomes), over
  ``--queries`` queries; filtered_query_p50_ms: the same with ``status="failed"``.
- recall_at_5: 10 planted topics x 20 planted reflections hide among background
  reflections about other things (verification errors, timeouts, neutral results, ...).
  Each topic is searched with 3 queries: one diagnosis in the analyst's vocabulary
  ("length explosion, responses truncated at the token budget") and two paraphrases that
  avoid the templates' words ("generations ballooned in size and ran into the token
  cap"). recall_at_5 is the mean over those 30 queries of |top 5 ∩ the topic's planted
  reflections| / 5 (capped recall: 20 relevant, 5 slots); recall_at_5_diagnosis and
  recall_at_5_paraphrase split it by query kind.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from memory.archive import Archive
from memory.cli import Parser, run_cli
from memory.schema import EVALUATED, FAILED_TRAINING, FAILED_VERIFICATION

PLANTED = {
    "entropy-collapse": (
        ["Policy entropy collapsed from {a} to {b} within {n} steps; the samples of a group "
         "became nearly identical and exploration stopped.",
         "Entropy fell to {b} by step {n}: the sampler kept emitting the same answer for "
         "every sample, so groups had no diversity left to learn from.",
         "Token entropy decayed sharply (now {b}); outputs turned deterministic early and "
         "accuracy plateaued at {p}%."],
        ["entropy collapse: the samples of a group became identical",
         "the model lost its randomness and every sample in a group looked the same",
         "exploration died because the distribution became too peaked"]),
    "length-explosion": (
        ["Response length grew from {a} to {b} tokens; most samples hit the {m}-token budget "
         "and were truncated before the final answer.",
         "Answers kept getting longer every step (mean {b} tokens) until the limit cut them "
         "off, and truncated answers earned no reward.",
         "Length ran away: {p}% of responses reached the maximum length by step {n}."],
        ["length explosion, responses truncated at the token budget",
         "outputs became so long that they were cut off at the maximum",
         "generations ballooned in size and ran into the token cap"]),
    "validity-collapse": (
        ["The share of format-valid answers dropped to {p}%: the model stopped writing the "
         "'#<answer>.' terminator.",
         "Validity collapsed by step {n}; most responses ended without the required answer "
         "format, so they scored zero even when the sum was right.",
         "Format errors took over ({p}% invalid): the final line lost its '#' prefix."],
        ["answers lost the required format and validity dropped",
         "the model quit producing answers in the required output format",
         "most completions no longer followed the answer syntax the grader needs"]),
    "zero-variance-groups": (
        ["{p}% of groups were all-correct or all-wrong, so their advantages were zero and "
         "the gradient signal vanished.",
         "Almost every group had identical rewards across its samples; zero-variance groups "
         "contributed nothing to the update.",
         "Group reward variance was zero for most prompts after step {n}: nothing to learn "
         "from within those groups."],
        ["zero-variance groups gave no gradient signal",
         "no learning signal because all samples of a prompt got the same reward",
         "groups without any spread in reward gave null advantages"]),
    "kl-blowup": (
        ["KL divergence to the reference policy spiked to {x} at step {n} and the policy "
         "drifted far from the warm start.",
         "The KL term exploded ({x}); the penalty could not hold the policy near the "
         "reference model.",
         "Divergence from the reference grew without bound after step {n} (KL {x})."],
        ["KL to the reference policy blew up",
         "the policy moved much too far away from the reference model",
         "distance to the initial policy became huge despite the penalty"]),
    "clip-saturation": (
        ["Clip fraction stayed above {p}%: most token ratios were clipped and updates were "
         "wasted.",
         "Nearly all importance ratios fell outside the trust region; the clipped objective "
         "flattened the gradient for {p}% of tokens.",
         "PPO clipping saturated ({p}% of tokens clipped) from step {n} on."],
        ["clip fraction too high, most tokens clipped",
         "most probability ratios were cut by the trust region bound",
         "the surrogate was clipped for almost every token so updates stalled"]),
    "grad-instability": (
        ["Gradient norm spiked to {x} at step {n} and the loss became NaN two steps later.",
         "Training diverged: exploding gradients (norm {x}) produced non-finite parameters.",
         "Unstable optimisation: the loss blew up to inf after a gradient-norm spike of {x}."],
        ["gradient norm spike followed by a NaN loss",
         "the optimisation blew up with huge gradients and not-a-number losses",
         "numerical divergence with gradient explosions"]),
    "shortcut-guessing": (
        ["Responses shrank to {a} tokens: the model skipped the scratchpad and guessed the "
         "answer directly, which hurt add3 and add5 accuracy.",
         "The policy learned to drop the column-by-column reasoning; short guesses won on "
         "add2 but lost {p} points on the hard family.",
         "Reasoning steps disappeared by step {n}; answers became bare guesses."],
        ["the model skipped the scratchpad and guessed answers",
         "the model stopped showing its working and just guessed the sum",
         "chain of thought vanished and answers got too terse to be right"]),
    "easy-prompt-dominance": (
        ["Updates were dominated by easy add2 prompts; add5 groups were all-fail and the "
         "hard family never improved from {p}%.",
         "Learning concentrated on the easy family while difficult prompts stayed unsolved "
         "({p}% on add5).",
         "The easiest prompts took most of the gradient; hard-problem accuracy flat at {p}%."],
        ["easy prompts dominated the updates while the hard family stayed stuck",
         "simple problems soaked up the learning while difficult ones stayed unsolved",
         "progress only on trivial questions, none on the hardest tier"]),
    "reward-noise-seeds": (
        ["Outcomes varied wildly across seeds (sd {x}): the improvement over the parent is "
         "not distinguishable from noise.",
         "Seed-to-seed spread ({x}) swamped the effect; two seeds improved, three regressed.",
         "High variance between seeds made the fitness estimate unreliable (sd {x})."],
        ["high variance across seeds, improvement within noise",
         "results were inconsistent between random seeds",
         "the effect could not be separated from run-to-run randomness"]),
}

BACKGROUND = [
    "Fitness {f} is within noise of the parent ({g}); the change to {mech} had no visible "
    "effect on the curves.",
    "Steady improvement: add3 accuracy rose {p} points over {n} steps with {mech}; add2 "
    "was already saturated.",
    "Verification failed: {hook} returned shape ({a},) where ({b}, {c}) was expected.",
    "The sandbox killed the candidate after {n} seconds; its {hook} loops over samples in "
    "Python.",
    "{mech} matched GRPO on Overall ({f} vs {g}) at the same CPU budget.",
    "A learning-rate of {lr} looked too small for {mech}: curves were still rising at the "
    "end of the budget.",
    "Compared with its parent, {mech} gained {p} points on add3 but lost {q} on add2; the "
    "net Overall change is {d}.",
    "Smoke training passed; the consistency check found that {hook} ignores the proposal's "
    "{mech} term.",
    "The crossover kept the parent's {mech} and the other parent's aggregation; Overall "
    "{f}, slightly above both parents.",
    "Pass@8 on add5 improved from {g} to {f} while acc@1 stayed flat, suggesting more "
    "diverse but not more accurate samples.",
]
MECHANISMS = ["token-level aggregation", "leave-one-out baselines", "clip-higher",
              "a cosine KL schedule", "difficulty weighting", "validity masking",
              "analytic-variance scaling", "a length-gated reward", "sequence-level ratios",
              "rank-based advantages", "a reward margin", "group filtering"]
HOOKS = ["compute_advantages", "policy_loss", "shape_reward"]
QUERIES = ["what went wrong with the learning rate", "which mechanisms matched GRPO",
           "verification failures in compute_advantages", "crossover of two parents",
           "sandbox timeout", "improved add3 accuracy", "leave-one-out baseline results",
           "clip-higher effect", "pass@8 versus acc@1", "consistency check failed"]


def _fill(template: str, rng: np.random.Generator) -> str:
    values = {"a": rng.integers(8, 40), "b": rng.integers(40, 96), "c": rng.integers(2, 64),
              "n": rng.integers(5, 150), "m": 96, "p": rng.integers(3, 95),
              "q": rng.integers(1, 9), "x": round(float(rng.uniform(2, 80)), 1),
              "f": round(float(rng.uniform(.3, .6)), 3), "g": round(float(rng.uniform(.3, .6)), 3),
              "d": round(float(rng.normal(0, .02)), 3), "lr": f"{rng.uniform(1, 9):.0f}e-5",
              "mech": MECHANISMS[rng.integers(len(MECHANISMS))],
              "hook": HOOKS[rng.integers(len(HOOKS))]}
    return template.format(**values)


def synthetic_reflections(n: int, rng: np.random.Generator, per_topic: int = 20
                          ) -> list[tuple[str, str | None]]:
    """``n`` (text, planted topic or None) pairs in random order."""
    items: list[tuple[str, str | None]] = []
    for topic, (templates, _) in PLANTED.items():
        items += [(_fill(templates[i % len(templates)], rng), topic) for i in range(per_topic)]
    while len(items) < n:
        items.append((_fill(BACKGROUND[rng.integers(len(BACKGROUND))], rng), None))
    order = rng.permutation(len(items))
    return [items[i] for i in order[:n]]


def build(archive: Archive, n: int, n_candidates: int, rng: np.random.Generator,
          console: Console) -> tuple[dict[int, str], float]:
    """Fill the archive; returns {reflection id: planted topic} and the insert rate."""
    run = archive.start_run("accurate and concise", {"bench": True})
    statuses = [EVALUATED] * 6 + [FAILED_VERIFICATION, FAILED_TRAINING]
    ids: list[int] = []
    items = synthetic_reflections(n, rng)
    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    with progress:
        task = progress.add_task("candidates", total=n_candidates)
        for i in range(n_candidates):
            parents = [ids[int(rng.integers(len(ids)))]] if ids else []
            mech = MECHANISMS[i % len(MECHANISMS)]
            ids.append(archive.add_candidate(
                run, f"bench-{i}", len(parents), f"Variant {i}: GRPO with {mech}.",
                f"NAME = 'bench-{i}'\n", parents=parents,
                status=statuses[int(rng.integers(len(statuses)))]))
            progress.advance(task)
        task = progress.add_task("reflections", total=n)
        planted: dict[int, str] = {}
        start = time.perf_counter()
        for lo in range(0, n, 250):
            chunk = items[lo:lo + 250]
            rows = [(ids[int(rng.integers(len(ids)))], text, [topic or "background"])
                    for text, topic in chunk]
            for rid, (_, topic) in zip(archive.add_reflections(rows), chunk):
                if topic:
                    planted[rid] = topic
            progress.advance(task, len(chunk))
        rate = n / (time.perf_counter() - start)
    return planted, rate


def measure(archive: Archive, planted: dict[int, str], n_queries: int,
            rng: np.random.Generator) -> dict:
    """Latencies (ms) and recall@5 on the planted topics."""
    recalls: dict[str, list[float]] = {"diagnosis": [], "paraphrase": []}
    latencies = []
    for topic, (_, queries) in PLANTED.items():
        for i, q in enumerate(queries):
            t = time.perf_counter()
            hits = archive.similar_reflections(q, k=5)
            latencies.append(1000 * (time.perf_counter() - t))
            hit_rate = sum(planted.get(h.reflection_id) == topic for h in hits) / 5
            recalls["diagnosis" if i == 0 else "paraphrase"].append(hit_rate)
    while len(latencies) < n_queries:
        q = QUERIES[int(rng.integers(len(QUERIES)))]
        t = time.perf_counter()
        archive.similar_reflections(q, k=5)
        latencies.append(1000 * (time.perf_counter() - t))
    filtered = []
    for q in QUERIES:
        t = time.perf_counter()
        archive.similar_reflections(q, k=5, status="failed")
        filtered.append(1000 * (time.perf_counter() - t))
    singles = []
    cid = archive.candidates()[0].id
    for i in range(20):
        t = time.perf_counter()
        archive.add_reflection(cid, _fill(BACKGROUND[i % len(BACKGROUND)], rng), ["single"])
        singles.append(1000 * (time.perf_counter() - t))
    return {"query_p50_ms": float(np.percentile(latencies, 50)),
            "query_p95_ms": float(np.percentile(latencies, 95)),
            "filtered_query_p50_ms": float(np.percentile(filtered, 50)),
            "single_insert_p50_ms": float(np.percentile(singles, 50)),
            "recall_at_5": float(np.mean(recalls["diagnosis"] + recalls["paraphrase"])),
            "recall_at_5_diagnosis": float(np.mean(recalls["diagnosis"])),
            "recall_at_5_paraphrase": float(np.mean(recalls["paraphrase"])),
            "recall_queries": sum(map(len, recalls.values())),
            "queries": len(latencies)}


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m memory.bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for memory_bench.json")
    p.add_argument("--reflections", type=int, default=10_000)
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.reflections < 20 * len(PLANTED) or args.candidates < 1:
        p.error(f"need --reflections >= {20 * len(PLANTED)} and --candidates >= 1")
    console = Console()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="poise-bench-") as home:
        archive = Archive(home)
        with console.status("loading the embedding model ..."):
            archive.store("reflections")
        planted, rate = build(archive, args.reflections, args.candidates, rng, console)
        result = {"reflections": args.reflections, "candidates": args.candidates,
                  "insert_per_second": rate, **measure(archive, planted, args.queries, rng)}
        archive.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"memory bench: {args.reflections} reflections")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"wrote {out / 'memory_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
