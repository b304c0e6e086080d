"""What the warm start gives GRPO to work with, per family: ``python -m
trainers.local.testbed --out out/testbed``.

For the search families and the transfer families (evals/tasks.py), at T=1 in groups of
8 on the val split: accuracy, format-invalid rate, all-fail and all-correct groups; among
*correct* answers the mean length, the oracle (the shortest correct form, ``#<answer>.``)
and the room for shortening (1 - oracle / mean), and the mean tokens of each part of a
correct answer (restatement, column steps, redundant steps, filler, re-checks, the
answer itself); greedy, the share of answers that write column steps and the accuracy
with ``#`` forced as the first token (can the warm start answer without its scratchpad?
``evaluate.checks_ablation``). Prints a table and writes ``OUT/testbed.json``. Builds the
warm start on first use (cached in the home).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

PARTS = ("restate", "steps", "redundant", "filler", "checks", "answer")
DIRECT = ("scratch_pct", "direct_acc")  # does the policy need its scratchpad?
ABLATION = ("greedy_acc", "rechecked_pct", "rechecked_acc", "checks_cut_acc", *DIRECT)


def profile(home: Path | None, problems: int = 256, warm=None) -> dict:
    """Per family, the warm start's profile (``warm``: a WarmStartConfig, default the
    testbed's)."""
    import torch

    from trainers.local.evaluate import checks_ablation, testbed_profile
    from trainers.local.warmstart import WarmStartConfig, load_or_build

    torch.set_num_threads(1)
    model = load_or_build(warm or WarmStartConfig(), home)
    out = {}
    for which in ("search", "transfer"):
        greedy = checks_ablation(model, problems=problems, which=which, rechecks=False)
        for fam, row in testbed_profile(model, problems=problems, which=which).items():
            mean, oracle = row["correct_length_mean"], row["oracle_length_mean"]
            out[fam] = {"set": which, **row,
                        "room_pct": 100 * (1 - oracle / mean) if mean == mean else None,
                        **{k: greedy[fam][k] for k in DIRECT}}
    return out


def _f(x) -> str:
    return "-" if x is None or x != x else f"{x:.1f}"


def print_table(rows: dict, console: Console) -> None:
    t = Table(title="warm start at T=1 (val, groups of 8): what a length term can act on")
    cols = ["family", "set", "acc %", "invalid %", "all-fail %", "correct len", "oracle",
            "room %", *PARTS, "greedy scratch %", "direct acc %"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("family", "set") else "right")
    for fam, r in rows.items():
        t.add_row(fam, r["set"], _f(r["t1_accuracy"]), _f(r["t1_invalid"]),
                  _f(r["all_fail_groups"]), _f(r["correct_length_mean"]),
                  _f(r["oracle_length_mean"]), _f(r["room_pct"]),
                  *[_f(r[f"correct_{p}_tokens"]) for p in PARTS],
                  *[_f(r.get(k)) for k in DIRECT])
    console.print(t)
    console.print("correct len: mean tokens of a correct answer (EOS included); oracle: the "
                  "shortest correct form; room: how much shorter the oracle is; then a "
                  "correct answer's tokens by part (evals.tasks.anatomy); last, greedy: the "
                  "share of answers that write column steps, and the accuracy with '#' "
                  "forced as the first token (can the policy answer without a scratchpad?)")


def mean_profiles(results: list[dict], labels: list[str]) -> dict:
    """Per algorithm and family, the mean over its seeds of the trained policies' profiles
    (``TrainConfig.profile_after``; a number missing in a seed, e.g. the length of correct
    answers when none was correct, is left out of that mean)."""
    out = {}
    for label in labels:
        runs = [r["profile"] for r in results if r["algorithm"] == label
                and r.get("status") == "ok" and r.get("profile")]
        if not runs:
            continue
        fams = {}
        for fam, first in runs[0].items():
            row = {}
            for k, v in first.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    xs = [run[fam][k] for run in runs if run[fam].get(k) == run[fam].get(k)]
                    row[k] = sum(xs) / len(xs) if xs else float("nan")
            fams[fam] = {**row, "seeds": len(runs)}
        out[label] = fams
    return out


def print_profiles(profiles: dict, console: Console) -> None:
    """``compare --profile``'s table: what each algorithm's RL left in a correct answer."""
    t = Table(title="after RL, at T=1 (val, groups of 8; mean over seeds): tokens of a "
                    "correct answer by part")
    cols = ["algorithm", "family", "seeds", "acc %", "correct len", *PARTS,
            "greedy acc %", "re-checked %", "acc as written", "acc, re-checks cut",
            "scratch %", "acc, answered directly"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("algorithm", "family") else "right")
    for label, fams in profiles.items():
        for fam, r in fams.items():
            t.add_row(label, fam, str(r["seeds"]), _f(r["t1_accuracy"]),
                      _f(r["correct_length_mean"]),
                      *[_f(r[f"correct_{p}_tokens"]) for p in PARTS],
                      *[_f(r.get(k)) for k in ABLATION])
    console.print(t)
    console.print("last six columns, greedy: accuracy; the share of answers that re-check "
                  "(=N; before #); on those, accuracy as written and with # forced where "
                  "the first re-check starts; the share of answers that write column "
                  "steps, and the accuracy on every problem with # forced as the first "
                  "token (evaluate.checks_ablation: does the policy need its re-checks, "
                  "its scratchpad?)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.local.testbed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="directory for testbed.json")
    p.add_argument("--home", type=Path, default=None, help="POISE home (warm start cache)")
    p.add_argument("--problems", type=int, default=256, help="val problems per family")
    p.add_argument("--warm-config", type=Path, default=None, metavar="JSON",
                   help="JSON file of WarmStartConfig fields: profile a variant warm start "
                        "(e.g. its corpus mix; built once, cached by its key)")
    args = p.parse_args(argv)
    if args.problems < 1:
        p.error("--problems must be at least 1")
    warm = None
    if args.warm_config is not None:
        from trainers.local.warmstart import read_warm_config
        try:
            warm = read_warm_config(args.warm_config)
        except ValueError as e:
            p.exit(2, f"python -m trainers.local.testbed: {e}\n")
    console = Console()
    rows = profile(args.home, args.problems, warm)
    print_table(rows, console)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "testbed.json").write_text(json.dumps(rows, indent=2))
    console.print(f"wrote {args.out / 'testbed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
