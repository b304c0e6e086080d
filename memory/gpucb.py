"""GP-UCB parent selection: a Gaussian process over what candidates are, learning across
candidates which lineages are worth extending (the default rule, ``rule="gpucb"``).

``memory.selection`` dispatches here; its ``Node`` list is the input (``seed_fitness``:
each seed's fitness; ``signature``: the genes; ``text``: name, proposal and code). For
the eligible nodes (evaluated, finite fitness) of the pool:

**Features.** A genome is a binary vector over the tokens ``slot=kind`` and
``slot=kind.param=value`` of its genes (and ``slot=kind.param:token`` per token of a composed
expression), so two genomes that differ in one parameter share
the kind token and ``||x_i - x_j||^2`` counts the tokens they do not share. When any node
has no genes (LLM-written code), every node is instead the all-MiniLM-L6-v2 embedding
(unit norm) of its ``text``: ``||x_i - x_j||^2 = 2 (1 - cos)``.

**Kernel.** ``k(x, x') = a^2 exp(-||x - x'||^2 / (2 l^2))`` (scikit-learn's
``ConstantKernel * RBF``), ``a`` and ``l`` fit by maximum marginal likelihood within the
bounds below once ``min_fit`` observations exist, else held at their defaults.

**Seed noise.** ``F_i`` is the mean of node i's ``n_i`` seeds; ``s^2`` the pooled
within-node variance over nodes with two or more seeds (``seed_sd`` before any exist);
``Var(F_i) = s^2 / n_i``. ``S = max(F) - min(F)`` (at least ``s``) puts gains in the same
units as the other terms.

1. *Fitness surrogate.* A GP on ``(x_i, F_i)`` with per-node noise ``Var(F_i)``
   (``GaussianProcessRegressor(alpha=...)``, normalized targets). ``Fhat_i`` is its
   posterior mean at ``x_i``: a one-seed spike is pulled toward its neighbours three times
   as hard as a three-seed mean.
2. *Gain surrogate.* For a node with descendants ``d`` at shortest depth ``delta_d``:
   ``g_d = gamma^(delta_d - 1) (F_d - F_i)`` (evaluated) or
   ``gamma^(delta_d - 1) failure_gain S`` (failed verification, training or evaluation),
   and its target is the discounted top-K descendant gain
   ``G_i = mean of the top_k largest g_d``, noise
   ``Var(G_i) = Var(F_i) + mean_d gamma^(2 (delta_d - 1)) Var(F_d) / k_i`` over those
   ``k_i`` descendants. A zero-mean GP on ``(x_i, G_i / S)`` predicts ``mu_i, sd_i`` at
   every eligible node: a node with no children yet inherits the predicted gain of its
   near-twins; one far from every observation keeps the prior ``(0, a)``.
3. *Acquisition.*
   ``V_i = w_perf (Fhat_i - min Fhat) / S + lam (mu_i + beta sd_i) + w_div div_i + w_par par_i``
   with ``div_i`` the mean Jaccard distance of i's signature to the other eligible nodes'
   and ``par_i = 1 / layer`` of i's non-dominated layer over the directive's objectives
   (``objectives``: Overall alone under "accurate", so the term is 0 there; Overall and
   -length under a length directive).

Parents are drawn without replacement with probabilities ``softmax(V / temperature)`` by a
numpy generator seeded with ``seed``; ``temperature = 0`` takes the top ``V``. The GP fits
are deterministic (L-BFGS from the default hyperparameters, no random restarts), so the
same nodes and seed give the same parents. The settings are ``GPUCBConfig``; a run saves
them in its config (``Context.selection_config``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from memory.schema import FAILED
from memory.terms import children, descendant_depths, diversity, pareto_layers


@dataclass(frozen=True)
class GPUCBConfig:
    top_k: int = 3               # descendants averaged in the gain target
    gamma: float = 0.5           # depth discount per generation below the child
    failure_gain: float = -0.3   # a failed descendant's gain, in units of S
    seed_sd: float = 5.0         # sd of one seed's fitness before the archive has repeats
    w_perf: float = 1.0          # weight of the (smoothed, normalized) fitness
    lam: float = 1.0             # weight of the UCB on the gain
    beta: float = 1.0            # exploration: multiples of the predicted gain's sd
    w_div: float = 0.1           # diversity
    w_par: float = 0.2           # Pareto layer over the directive's objectives (>= 2)
    temperature: float = 0.1     # softmax temperature of the draw; 0 = greedy
    amplitude: float = 0.3       # a: prior sd of the gain (units of S)
    length_scale_genes: float = 2.0       # l over gene tokens
    length_scale_text: float = 0.5        # l over embeddings
    min_fit: int = 4             # fit a, l by marginal likelihood from this many points

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GPScore:
    """One eligible node's acquisition value and its parts."""

    id: int
    value: float
    fitness: float               # Fhat_i, points (the GP-smoothed mean fitness)
    fitness_norm: float          # (Fhat_i - min Fhat) / S
    mu: float                    # predicted discounted top-K gain, units of S
    sd: float
    diversity: float
    pareto: float
    observed_gain: float | None  # G_i / S where i has descendants with evidence


def gene_tokens(signature: frozenset[str]) -> set[str]:
    """``slot=kind`` and ``slot=kind.param=value`` for each gene ``slot=kind(p=v,...)``;
    a composed expression (a value of several tokens) adds ``slot=kind.param:token`` per
    distinct token, so two expressions that share primitives and operators are near."""
    out = set()
    for gene in signature:
        head, _, rest = gene.partition("(")
        out.add(head)
        for pair in filter(None, rest.rstrip(")").split(",")):
            out.add(f"{head}.{pair.strip()}")
            name, _, value = pair.strip().partition("=")
            if " " in value:
                out.update(f"{head}.{name}:{tok}" for tok in value.split())
    return out


def score(nodes: Sequence, pool: Sequence, *, objectives: Sequence[str] | None,
          config: GPUCBConfig = GPUCBConfig(), embedder=None) -> list[GPScore]:
    """``V`` for every node of ``pool`` (the eligible nodes, sorted by id); ``nodes`` is
    the whole list (failed descendants are evidence too)."""
    c = config
    ids = [n.id for n in pool]
    means = np.array([_mean(n) for n in pool])
    counts = np.array([max(1, len(n.seed_fitness)) for n in pool])
    s2 = _pooled_variance(pool, c.seed_sd)
    var = s2 / counts
    scale = max(float(means.max() - means.min()), math.sqrt(s2), 1e-9)
    x = _features(pool, c, embedder)
    fhat = _smoothed_fitness(x, means, var, c)
    # gain observations
    row = {i: k for k, i in enumerate(ids)}
    by_id = {n.id: n for n in nodes}
    kids = children(nodes)
    obs_rows, obs_y, obs_var = [], [], []
    for k, node in enumerate(pool):
        gains = []
        for d_id, depth in descendant_depths(node.id, kids).items():
            w = c.gamma ** (depth - 1)
            if d_id in row:
                gains.append((w * (means[row[d_id]] - means[k]), w * w * var[row[d_id]]))
            elif by_id[d_id].status in FAILED:
                gains.append((w * c.failure_gain * scale, 0.0))
        if gains:
            top = sorted(gains, key=lambda g: -g[0])[:c.top_k]
            obs_rows.append(k)
            obs_y.append(np.mean([g for g, _ in top]) / scale)
            obs_var.append((var[k] + np.mean([v for _, v in top]) / len(top)) / scale ** 2)
    mu, sd = _gain_posterior(x, obs_rows, np.array(obs_y), np.array(obs_var), c)
    observed = dict(zip(obs_rows, obs_y))
    lo = float(fhat.min())
    layers = pareto_layers(pool, objectives)
    out = []
    for k, node in enumerate(pool):
        norm = (float(fhat[k]) - lo) / scale
        div = diversity(node, pool)
        par = 1.0 / layers[node.id] if layers else 0.0
        value = (c.w_perf * norm + c.lam * (float(mu[k]) + c.beta * float(sd[k]))
                 + c.w_div * div + c.w_par * par)
        out.append(GPScore(node.id, value, float(fhat[k]), norm, float(mu[k]),
                           float(sd[k]), div, par,
                           float(observed[k]) if k in observed else None))
    return out


# ----------------------------------------------------------------------------- parts

def _mean(node) -> float:
    return float(np.mean(node.seed_fitness)) if node.seed_fitness else float(node.fitness)


def _pooled_variance(pool: Sequence, default_sd: float) -> float:
    ss, dof = 0.0, 0
    for n in pool:
        v = np.asarray(n.seed_fitness, dtype=float)
        if v.size >= 2 and np.all(np.isfinite(v)):
            ss += float(((v - v.mean()) ** 2).sum())
            dof += v.size - 1
    return ss / dof if dof and ss > 0 else default_sd ** 2


def _features(pool: Sequence, c: GPUCBConfig, embedder) -> np.ndarray:
    if all(n.signature and n.genes for n in pool):
        tokens = [gene_tokens(n.signature) for n in pool]
        vocab = sorted(set().union(*tokens))
        index = {t: j for j, t in enumerate(vocab)}
        x = np.zeros((len(pool), len(vocab)))
        for i, ts in enumerate(tokens):
            x[i, [index[t] for t in ts]] = 1.0
        return x / c.length_scale_genes      # the kernels below use l = 1 on scaled x
    if embedder is None:
        from memory.vectors import default_embedder
        embedder = default_embedder()
    return np.asarray(embedder.encode([n.text or str(n.id) for n in pool]),
                      dtype=float) / c.length_scale_text


def _gp(amplitude: float, fit: bool, noise: np.ndarray, normalize: bool):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel

    kernel = (ConstantKernel(amplitude ** 2, (1e-4, 4.0))
              * RBF(1.0, (0.25, 10.0)))      # x is pre-scaled by the default l
    return GaussianProcessRegressor(kernel=kernel, alpha=np.maximum(noise, 1e-8),
                                    normalize_y=normalize,
                                    optimizer="fmin_l_bfgs_b" if fit else None,
                                    n_restarts_optimizer=0, random_state=0)


def _fitted(gp, x, y):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gp.fit(x, y)


def _smoothed_fitness(x: np.ndarray, means: np.ndarray, var: np.ndarray,
                      c: GPUCBConfig) -> np.ndarray:
    if len(means) < 2 or float(means.std()) < 1e-12:
        return means.copy()
    # normalized targets: the amplitude is in units of the fitness sd
    gp = _fitted(_gp(1.0, len(means) >= c.min_fit, var / means.var(), True), x, means)
    return gp.predict(x)


def _gain_posterior(x: np.ndarray, rows: list[int], y: np.ndarray, var: np.ndarray,
                    c: GPUCBConfig) -> tuple[np.ndarray, np.ndarray]:
    if not rows:
        return np.zeros(len(x)), np.full(len(x), c.amplitude)
    gp = _fitted(_gp(c.amplitude, len(rows) >= c.min_fit, var, False), x[rows], y)
    mu, sd = gp.predict(x, return_std=True)
    return mu, sd
