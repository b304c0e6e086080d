"""The screen-budget study's analysis (plan.md): arm A, the v8 search's 40-step x 3-seed
screen, from that campaign's archive; arm B, the 20-step x 6-seed compare runs; the
promotion's 80-step means from the committed v8 report. From the repository root:

    python docs/screen-budget/analyze.py --archive HOME/archive.db --runs OUT/runs \
        --out docs/screen-budget/result.json
"""
import argparse
import collections
import glob
import json
import math
import sqlite3

import numpy as np
from scipy import stats

from graph.campaign.screen import screen_reliability

ap = argparse.ArgumentParser()
ap.add_argument("--archive", required=True, help="the v8 campaign home's archive.db")
ap.add_argument("--runs", required=True, help="arm B's compare OUT/runs directory")
ap.add_argument("--campaign", default="docs/campaigns/v8-accurate/campaign.json")
ap.add_argument("--out", required=True)
args = ap.parse_args()

# arm A: the search's per-seed fitness (final Overall, val, 40 steps), run 1
c = sqlite3.connect(f"file:{args.archive}?mode=ro", uri=True)
A = collections.defaultdict(list)
a_wall = []
for n, f, w in c.execute("select c.name, e.fitness, e.wall_time from evaluation e join "
                         "candidate c on c.id = e.candidate_id where c.run_id = 1"):
    A[n].append(f)
    a_wall.append(w)
# arm B: 20 steps x 6 seeds
B = collections.defaultdict(list)
b_cpu, b_train = [], []
for fn in glob.glob(f"{args.runs}/*.json"):
    d = json.load(open(fn))
    if d.get("status") != "ok":
        print("not ok", fn)
        continue
    name = d["algorithm"].split("/")[-1].removesuffix(".py")
    B[name].append(d["final"]["overall"])
    b_cpu.append(d["cpu_seconds"])
    b_train.append(d["train_cpu_seconds"])
names = sorted(set(A) & set(B), key=lambda n: -np.mean(A[n]))
print("candidates", len(names), "B seeds", {n: len(B[n]) for n in names})
ra = screen_reliability({n: A[n] for n in names})
rb = screen_reliability({n: B[n] for n in names})
for lab, r in (("A 40x3", ra), ("B 20x6", rb)):
    print(lab, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
bcpu, btrain = np.mean(b_cpu), np.mean(b_train)
beval = bcpu - btrain
# A's cost from B's rates: training per step x 40; evaluation + one more curve evaluation
# (~0.2 of B's); the search's own wall per seed is printed beside it
acpu_model = 2 * btrain + beval * 1.2
print(f"B CPU-s per seed {bcpu:.1f} (training {btrain:.1f}, evaluation {beval:.1f}); "
      f"A modelled {acpu_model:.1f}; A wall per seed in the search {np.mean(a_wall):.1f}")


def spearman_brown(icc1: float, m: float) -> float:
    """The reliability of an m-seed mean from the one-seed ICC."""
    return m * icc1 / (1 + (m - 1) * icc1)


budget = 3 * acpu_model
print("at A's CPU (3 x A seed): A", round(ra["reliability"], 3), "B with",
      round(budget / bcpu, 2), "seeds:", round(spearman_brown(rb["icc_one_seed"], budget / bcpu), 3))
ma = np.array([np.mean(A[n]) for n in names])
mb = np.array([np.mean(B[n]) for n in names])
pr, sr = stats.pearsonr(ma, mb), stats.spearmanr(ma, mb)
dis = (pr.statistic / math.sqrt(ra["reliability"] * rb["reliability"])
       if ra["reliability"] > 0 and rb["reliability"] > 0 else float("nan"))
print(f"pearson {pr.statistic:.3f} (p {pr.pvalue:.3f}), spearman {sr.statistic:.3f}, "
      f"disattenuated {dis:.3f}")
prom = json.load(open(args.campaign))["promote"]
promo = {"grpo": prom["reference"]["overall"], **{r["name"]: r["overall"] for r in prom["rows"]}}
for n in sorted(promo, key=lambda n: -promo[n]):
    print(f"{n:22s} promo {promo[n]:.2f}  A {np.mean(A[n]):.2f}  B {np.mean(B[n]):.2f}")
for n in names:
    print(f"{n:22s} A {np.mean(A[n]):.2f} ({np.std(A[n], ddof=1):.2f})  "
          f"B {np.mean(B[n]):.2f} ({np.std(B[n], ddof=1):.2f}) n={len(B[n])}")
json.dump({"A": A, "B": B, "rel_A": ra, "rel_B": rb, "B_cpu": bcpu, "B_train": btrain,
           "A_cpu_model": acpu_model, "A_wall_per_seed": float(np.mean(a_wall)),
           "pearson": pr.statistic, "spearman": sr.statistic, "disattenuated": dis},
          open(args.out, "w"), indent=1, default=float)
