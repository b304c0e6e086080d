import json, glob, sqlite3, collections, math, sys
import numpy as np
from scipy import stats
sys.path.insert(0, '/work/main')
from graph.campaign.screen import screen_reliability
# arm A: the v8 search's per-seed fitness (final Overall, val, 40 steps)
c = sqlite3.connect('file:/tmp/acc4camp/archive.db?mode=ro', uri=True)
A = collections.defaultdict(list); Awall = []
for n, f, w in c.execute("select c.name, e.fitness, e.wall_time from evaluation e join candidate c on c.id=e.candidate_id where c.run_id=1"):
    A[n].append(f); Awall.append(w)
# arm B: 20 steps x 6 seeds
B = collections.defaultdict(list); Bcpu = []; Btrain = []; Beval = []
for fn in glob.glob('/tmp/scr20/out/runs/*.json'):
    d = json.load(open(fn))
    if d.get('status') != 'ok': print('not ok', fn); continue
    name = d['algorithm'].split('/')[-1].removesuffix('.py')
    B[name].append(d['final']['overall']); Bcpu.append(d['cpu_seconds']); Btrain.append(d['train_cpu_seconds'])
names = sorted(set(A) & set(B), key=lambda n: -np.mean(A[n]))
print('candidates', len(names), 'B seeds', {n: len(B[n]) for n in names})
ra = screen_reliability({n: A[n] for n in names}); rb = screen_reliability({n: B[n] for n in names})
for lab, r in (('A 40x3', ra), ('B 20x6', rb)):
    print(lab, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
bcpu, btrain = np.mean(Bcpu), np.mean(Btrain)
beval = bcpu - btrain
# A's cost from the same runs' rates: training per step x 40, evaluation + one more curve eval
# (curve eval ~ the step-20 eval's share); and, as a second figure, the search's own wall per seed
acpu_model = 2 * btrain + beval * 1.2
print(f'B CPU-s per seed {bcpu:.1f} (training {btrain:.1f}, evaluation {beval:.1f}); A modelled {acpu_model:.1f}; A wall per seed in the search {np.mean(Awall):.1f}')
def proj(r, m):  # Spearman-Brown: reliability with m seeds
    i = r['icc_one_seed']; return m * i / (1 + (m - 1) * i)
budget = 3 * acpu_model
print('at A\'s CPU (3 x A seed): A', round(ra['reliability'], 3), 'B with', round(budget / bcpu, 2), 'seeds:', round(proj(rb, budget / bcpu), 3))
ma = np.array([np.mean(A[n]) for n in names]); mb = np.array([np.mean(B[n]) for n in names])
pr = stats.pearsonr(ma, mb); sr = stats.spearmanr(ma, mb)
dis = pr.statistic / math.sqrt(ra['reliability'] * rb['reliability']) if ra['reliability'] > 0 and rb['reliability'] > 0 else float('nan')
print(f'pearson {pr.statistic:.3f} (p {pr.pvalue:.3f}), spearman {sr.statistic:.3f}, disattenuated {dis:.3f}')
promo = {'grpo': 85.57, 'nxd382-nokl-grpo': 87.79, 'nxafea-grpo': 86.09, 'nxafea-ch-grpo': 84.65}
for n in sorted(promo, key=lambda n: -promo[n]):
    print(f'{n:22s} promo {promo[n]:.2f}  A {np.mean(A[n]):.2f}  B {np.mean(B[n]) if B[n] else float("nan"):.2f}')
for n in names: print(f'{n:22s} A {np.mean(A[n]):.2f} ({np.std(A[n], ddof=1):.2f})  B {np.mean(B[n]):.2f} ({np.std(B[n], ddof=1) if len(B[n])>1 else 0:.2f}) n={len(B[n])}')
json.dump({'A': A, 'B': B, 'rel_A': ra, 'rel_B': rb, 'B_cpu': bcpu, 'B_train': btrain, 'A_cpu_model': acpu_model,
           'A_wall_per_seed': float(np.mean(Awall)), 'pearson': pr.statistic, 'spearman': sr.statistic,
           'disattenuated': dis}, open('/tmp/scr20/result.json', 'w'), indent=1, default=float)
