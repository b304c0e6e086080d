"""Parent selection: which evaluated candidate the next proposal builds on.

Pure functions over a small node list (``Node``: id, parent ids, fitness or None, each
seed's fitness, status, objectives, generation, signature), so they are testable without
a database; ``nodes_from_archive`` adapts an ``Archive``. Three rules (``RULES``):

- ``gpucb`` (the default): a Gaussian process over what candidates are predicts each
  one's discounted top-K descendant gain from the whole archive, with the seeds' noise;
  UCB mixed with smoothed fitness, diversity and a Pareto term (``memory.gpucb``).
- ``potential``: round 1's rule, a separate Normal posterior per node (below).
- ``greedy``: the highest mean fitness (the ablation's floor).

The rest of this docstring is the ``potential`` rule.

Only evaluated nodes with a finite fitness are eligible parents (a node that failed
verification, training or evaluation never is). For an eligible node i:

    f_i   = (F_i - F_min) / (F_max - F_min)          fitness, min-max normalized over the
                                                     eligible nodes (0.5 if all equal)
    D_i   = descendants d of i at shortest depth delta_d >= 1 (through any path)
    Delta_d = f_d - f_i                  if d is evaluated (improvement over i)
            = failure_delta              if d failed (verification, training, evaluation)
            (pending and duplicate descendants carry no evidence yet)
    w_d   = gamma ** (delta_d - 1)                   depth discount

    Bayesian estimate of the improvement i's descendants achieve: a Normal prior
    N(0, tau^2) on the mean improvement, each observation Delta_d ~ N(mean, sigma^2 / w_d):

    prec_i = 1 / tau^2 + sum_d w_d / sigma^2
    mu_i   = (sum_d w_d * Delta_d / sigma^2) / prec_i        posterior mean
    s_i    = prec_i ** -0.5                                 posterior sd

    potential_i = mu_i + beta * s_i          (UCB: an unexplored node has mu = 0, s = tau)
    div_i       = mean over the other eligible j of the Jaccard distance between the
                  signatures of i and j (genes, or the identifiers of its code)
    par_i       = 1 / L_i where L_i is i's non-dominated layer (1 = Pareto front) over
                  the directive's objectives (``objectives``; None: all the eligible
                  nodes share); 0 unless there are >= 2

    V_i = f_i + lam * potential_i + w_div * div_i + w_par * par_i

Parents are drawn without replacement with probabilities softmax(V / temperature) by a
``numpy`` generator seeded with ``seed`` (same nodes + same seed -> same parents);
``temperature = 0`` takes the top V (ties: lower id). So a lineage whose children keep
improving (mu > 0) outranks a high-scoring dead end (mu < 0), and an untried node gets
the largest exploration bonus (beta * tau).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Collection, Mapping, Sequence

import numpy as np

from evals.objective import ObjectiveSpec
from memory.schema import EVALUATED, FAILED
from memory.terms import children, descendant_depths, diversity, pareto_layers


@dataclass(frozen=True)
class Node:
    """One archived candidate as selection sees it."""

    id: int
    parents: tuple[int, ...] = ()
    fitness: float | None = None
    status: str = EVALUATED
    objectives: Mapping[str, float] = field(default_factory=dict)   # higher is better
    generation: int = 0
    signature: frozenset[str] = frozenset()
    seed_fitness: tuple[float, ...] = ()     # each evaluation's fitness (empty: one, ``fitness``)
    genes: bool = False                      # ``signature`` is a genome's genes
    text: str = ""                           # name, proposal and code (gpucb's embedding)


RULES = ("gpucb", "potential", "greedy")


@dataclass(frozen=True)
class SelectionConfig:
    lam: float = 1.0             # weight of the descendant potential
    beta: float = 1.0            # exploration: multiples of the posterior sd
    tau: float = 0.3             # prior sd of the mean improvement (normalized fitness)
    sigma: float = 0.25          # sd of one descendant's improvement
    gamma: float = 0.5           # depth discount per generation below the child
    failure_delta: float = -0.3  # the "improvement" a failed descendant counts as
    w_div: float = 0.1           # weight of the diversity term
    w_par: float = 0.2           # weight of the Pareto term (>= 2 objectives only)
    temperature: float = 0.1     # softmax temperature of the draw; 0 = greedy

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Score:
    """A node's value V and its parts (see the module docstring)."""

    id: int
    value: float
    fitness: float               # normalized f_i
    mu: float
    sd: float
    diversity: float
    pareto: float


def rule_config(rule: str, values: Mapping | None = None):
    """The settings object of ``rule`` (``GPUCBConfig`` / ``SelectionConfig``; None for
    greedy, which has none) from a partial dict; unknown keys are a ValueError."""
    from memory.gpucb import GPUCBConfig

    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {', '.join(RULES)}")
    values = dict(values or {})
    cls = {"gpucb": GPUCBConfig, "potential": SelectionConfig}.get(rule)
    known = {f.name for f in fields(cls)} if cls else set()
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"selection_config: {unknown} are not settings of the {rule!r} "
                         f"rule; it has {sorted(known) or 'none'}")
    return cls(**values) if cls else None


def eligible(node: Node) -> bool:
    """Evaluated with a finite fitness: the only nodes that may parent."""
    return (node.status == EVALUATED and node.fitness is not None
            and math.isfinite(node.fitness))


def score_nodes(nodes: Sequence[Node], config: SelectionConfig = SelectionConfig(),
                objectives: Sequence[str] | None = None) -> list[Score]:
    """V for every eligible node under the ``potential`` rule, sorted by id."""
    pool = sorted((n for n in nodes if eligible(n)), key=lambda n: n.id)
    if not pool:
        return []
    norm = _normalized_fitness(pool)
    by_id = {n.id: n for n in nodes}
    kids = children(nodes)
    pareto = pareto_layers(pool, objectives)
    scores = []
    for node in pool:
        mu, sd = _posterior(node, norm, by_id, kids, config)
        div = diversity(node, pool)
        par = 1.0 / pareto[node.id] if pareto else 0.0
        value = (norm[node.id] + config.lam * (mu + config.beta * sd)
                 + config.w_div * div + config.w_par * par)
        scores.append(Score(node.id, value, norm[node.id], mu, sd, div, par))
    return scores


def select_parents(nodes: Sequence[Node], k: int = 1, *, seed: int = 0,
                   config=None, exclude: Collection[int] = (), rule: str = "gpucb",
                   objectives: Sequence[str] | None = None, embedder=None) -> list[int]:
    """Up to ``k`` distinct parent ids (fewer if fewer nodes are eligible).

    ``rule``: one of ``RULES``; ``config`` its settings (``GPUCBConfig`` for gpucb,
    ``SelectionConfig`` for potential; None: the defaults). ``objectives``: the keys of
    ``Node.objectives`` the directive optimizes (the Pareto term's; None: all shared).
    ``exclude``: ids that may not parent (a person's veto). They still count as
    evidence: their fitness enters the normalization and their ancestors' gains.
    Raises ValueError when no node is eligible (evaluate the seed algorithms first)."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {', '.join(RULES)}")
    pool = sorted((n for n in nodes if eligible(n)), key=lambda n: n.id)
    if not pool:
        raise ValueError("no eligible parent: no node is evaluated with a fitness "
                         "(evaluate the seed algorithms first)")
    excluded = set(exclude)
    if all(n.id in excluded for n in pool):
        raise ValueError("no eligible parent: every evaluated node is excluded "
                         f"({sorted(excluded)})")
    if rule == "greedy":
        temperature = 0.0
        scored = [(n.id, float(np.mean(n.seed_fitness) if n.seed_fitness else n.fitness))
                  for n in pool]
    elif rule == "gpucb":
        from memory.gpucb import GPUCBConfig, score
        cfg = config or GPUCBConfig()
        temperature = cfg.temperature
        scored = [(s.id, s.value) for s in score(nodes, pool, objectives=objectives,
                                                 config=cfg, embedder=embedder)]
    else:
        cfg = config or SelectionConfig()
        temperature = cfg.temperature
        scored = [(s.id, s.value) for s in score_nodes(nodes, cfg, objectives)]
    scored = [(i, v) for i, v in scored if i not in excluded]
    k = min(k, len(scored))
    ids = np.array([i for i, _ in scored])
    values = np.array([v for _, v in scored])
    if temperature <= 0:
        order = np.lexsort((ids, -values))
        return [int(i) for i in ids[order[:k]]]
    logits = (values - values.max()) / temperature
    p = np.exp(logits)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(ids), size=k, replace=False, p=p / p.sum())
    return [int(ids[i]) for i in picked]


# ----------------------------------------------------------------------------- terms

def _normalized_fitness(pool: Sequence[Node]) -> dict[int, float]:
    lo = min(n.fitness for n in pool)
    hi = max(n.fitness for n in pool)
    if hi - lo < 1e-12:
        return {n.id: 0.5 for n in pool}
    return {n.id: (n.fitness - lo) / (hi - lo) for n in pool}


def _posterior(node: Node, norm: Mapping[int, float], by_id: Mapping[int, Node],
               children: Mapping[int, list[int]], c: SelectionConfig) -> tuple[float, float]:
    precision = 1.0 / c.tau ** 2
    weighted = 0.0
    for d_id, depth in descendant_depths(node.id, children).items():
        d = by_id[d_id]
        if d_id in norm:
            delta = norm[d_id] - norm[node.id]
        elif d.status in FAILED:
            delta = c.failure_delta
        else:
            continue
        w = c.gamma ** (depth - 1) / c.sigma ** 2
        precision += w
        weighted += w * delta
    return weighted / precision, precision ** -0.5


# ----------------------------------------------------------------------------- archive

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def code_signature(code: str | None) -> frozenset[str]:
    """The identifiers in a candidate's code: a cheap gene set for the diversity term."""
    return frozenset(_IDENT.findall(code or ""))


def nodes_from_archive(archive, run_id: int | None = None) -> list[Node]:
    """Nodes for ``run_id`` (or the whole archive). Objectives are the means over the
    candidate's evaluations, ``seed_fitness`` their fitnesses; the signature is
    ``Candidate.info.genes`` when the candidate has one, else the identifiers of its code;
    ``text`` is its name, proposal and code."""
    nodes = []
    parents: dict[int, list[int]] = {}
    for edge in archive.edges(run_id):
        parents.setdefault(edge.child_id, []).append(edge.parent_id)
    for c in archive.candidates(run_id):
        evals = archive.evaluations(c.id) if c.status == EVALUATED else []
        objectives: dict[str, list[float]] = {}
        for ev in evals:
            for key, value in (ev.objectives or {}).items():
                objectives.setdefault(key, []).append(float(value))
        genes = c.info.genes
        nodes.append(Node(
            id=c.id, parents=tuple(parents.get(c.id, ())), fitness=c.fitness,
            status=c.status, generation=c.generation,
            objectives={k: float(np.mean(v)) for k, v in objectives.items()},
            signature=frozenset(map(str, genes)) if genes else code_signature(c.code),
            seed_fitness=tuple(float(ev.fitness) for ev in evals
                               if ev.fitness is not None and math.isfinite(ev.fitness)),
            genes=bool(genes), text=f"{c.name}\n{c.proposal}\n{c.code or ''}"))
    return nodes


def directive_objectives(objective: Mapping | None) -> tuple[str, ...]:
    """The ``Node.objectives`` keys a run's objective optimizes: Overall, and -length
    only when the objective has a length term (never under "accurate")."""
    if not objective:
        return ("overall",)
    spec = ObjectiveSpec.model_validate({"directive": "", **objective})
    return ("overall", "neg_length") if spec.minimizes_length else ("overall",)


def select_parent_ids(archive, run_id: int | None = None, k: int = 1, *, seed: int = 0,
                      config=None, exclude: Collection[int] = (),
                      below_generation: int | None = None, rule: str = "gpucb",
                      objectives: Sequence[str] | None = None) -> list[int]:
    """``select_parents`` over the archive's candidates of ``run_id`` (with
    ``below_generation``, only those of earlier rounds: a round reads the archive as it
    stood when the round began, whatever its siblings archived meanwhile).

    Selection sees the candidates numbered in birth order (run, generation, slot in its
    round), not by archive id: a round's parallel branches are archived in whichever
    order they finish, and the same seed must pick the same parent either way."""
    keep = (lambda g: True) if below_generation is None else (lambda g: g < below_generation)
    nodes = [n for n in nodes_from_archive(archive, run_id) if keep(n.generation)]
    born = sorted((c for c in archive.candidates(run_id) if keep(c.generation)),
                  key=lambda c: (c.run_id, c.generation, (c.info.slot or 0),
                                 c.id))
    rank = {c.id: i for i, c in enumerate(born)}
    ranked = [replace(n, id=rank[n.id], parents=tuple(rank[p] for p in n.parents if p in rank))
              for n in nodes]
    try:
        picked = select_parents(ranked, k, seed=seed, config=config, rule=rule,
                                objectives=objectives,
                                exclude=[rank[i] for i in exclude if i in rank])
    except ValueError as e:  # say it in archive ids, not ranks
        if "excluded" not in str(e):
            raise
        raise ValueError("no eligible parent: every evaluated node is excluded "
                         f"({sorted(exclude)})") from None
    return [born[i].id for i in picked]
