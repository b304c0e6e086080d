"""Expressions over primitives: how the builtin scientist composes a mechanism the
catalog does not hold.

Two sites take an expression: the **reward** (``r_i = f(...)`` per sample) and the
advantage **scale** (``A_i = (r_i - b_i) / max(s_g, SCALE_FLOOR)``, ``s_g = f(...)`` per
group). An expression is a tree of

- primitives, per site (``VARIABLES``): for the reward the sample's correctness,
  validity, relative length ``L/L_max``, the training progress ``t`` and its group's
  smoothed success rate ``p``; for the scale the group's reward std, ``p``,
  ``p(1-p)``, reward range and ``t``;
- constants from ``CONSTANTS`` (folding may make others);
- operators ``UNARY`` (-x, x^2, sqrt(max(x, 0)), 1 - x) and ``BINARY`` (+, -, *, min, max).

Its text is prefix notation, tokens separated by spaces (``mul correct onem mul 0.25
lfrac`` is ``correct * (1 - 0.25 * lfrac)``): no ``,;()=``, so it sits in a genome
signature as a gene parameter. ``mutate`` makes a random neighbour (a point change, a new
subtree, growth around a node, a node replaced by a child, a constant moved), ``simplify``
folds constants; ``evaluate`` computes one value from primitive values, which is how
``shape`` compares two expressions (and an expression with a catalog gene) as learning
signals;
``render`` writes torch code. Nothing here knows which expressions are good: the search
only has the grammar, the limits (``MAX_NODES``, ``MAX_DEPTH``) and ``admissible``'s
sanity rules (a reward must pay for correctness on average; a scale must be positive).
"""
from __future__ import annotations

import math
import random
from typing import Callable, Union

Node = Union[str, float, tuple]

UNARY = {"neg": "-x", "sq": "x^2", "sqrt": "sqrt(max(x, 0))", "onem": "1 - x"}
BINARY = {"add": "+", "sub": "-", "mul": "*", "min": "min", "max": "max"}
CONSTANTS = (0.1, 0.25, 0.5, 1.0, 2.0)
SITES = ("reward", "scale")
VARIABLES: dict[str, dict[str, str]] = {
    "reward": {"correct": "1 if the answer is right, else 0",
               "valid": "1 if the answer is format-valid, else 0",
               "lfrac": "the response length over the budget, L / L_max",
               "t": "training progress, step / (T - 1)",
               "p": "the group's smoothed success rate (k + 1) / (n + 2)"},
    "scale": {"std": "the group's reward std (unbiased; 1 for a lone sample)",
              "p": "the group's smoothed success rate (k + 1) / (n + 2)",
              "pq": "p (1 - p) of that success rate",
              "range": "the group's max reward minus its min",
              "t": "training progress, step / (T - 1)"},
}
MAX_NODES, MAX_DEPTH = 11, 5
SCALE_FLOOR = 0.05


class ExprError(ValueError):
    """Text that is not an expression of the site's grammar."""


# ----------------------------------------------------------------------------- text

def parse(text: str | float, site: str) -> Node:
    if site not in SITES:
        raise ExprError(f"unknown expression site {site!r}; sites: {', '.join(SITES)}")
    tokens = str(text).split()
    if not tokens:
        raise ExprError("empty expression")
    node, rest = _parse(tokens, site)
    if rest:
        raise ExprError(f"expression {text!r} has trailing tokens {' '.join(rest)!r}")
    return node


def _parse(tokens: list[str], site: str) -> tuple[Node, list[str]]:
    head, rest = tokens[0], tokens[1:]
    if head in UNARY:
        if not rest:
            raise ExprError(f"{head} needs an operand")
        a, rest = _parse(rest, site)
        return (head, a), rest
    if head in BINARY:
        if not rest:
            raise ExprError(f"{head} needs two operands")
        a, rest = _parse(rest, site)
        if not rest:
            raise ExprError(f"{head} needs two operands")
        b, rest = _parse(rest, site)
        return (head, a, b), rest
    if head in VARIABLES[site]:
        return head, rest
    try:
        value = float(head)
    except ValueError:
        raise ExprError(f"unknown token {head!r} in a {site} expression; primitives: "
                        f"{', '.join(VARIABLES[site])}; operators: "
                        f"{', '.join([*UNARY, *BINARY])}") from None
    if not math.isfinite(value):
        raise ExprError(f"constant {head!r} is not finite")
    return value, rest


def unparse(node: Node) -> str:
    if isinstance(node, tuple):
        return " ".join([node[0], *(unparse(c) for c in node[1:])])
    return node if isinstance(node, str) else f"{node:g}"


def infix(node: Node, names: dict[str, str] | None = None) -> str:
    """Readable math: ``correct * (1 - 0.25 * lfrac)``."""
    names = names or {}
    if not isinstance(node, tuple):
        return names.get(node, node) if isinstance(node, str) else f"{node:g}"
    op, *kids = node
    a = infix(kids[0], names)
    if op == "neg":
        return f"-{_wrap(kids[0], a)}"
    if op == "sq":
        return f"{_wrap(kids[0], a)}^2"
    if op == "sqrt":
        return f"sqrt({a})"
    if op == "onem":
        return f"1 - {_wrap(kids[0], a, keep_mul=True)}"
    b = infix(kids[1], names)
    if op in ("min", "max"):
        return f"{op}({a}, {b})"
    sym = BINARY[op]
    if op == "mul":
        return f"{_wrap(kids[0], a, keep_mul=True)} * {_wrap(kids[1], b, keep_mul=True)}"
    if op == "sub":
        return f"{a} - {_wrap(kids[1], b, keep_mul=True)}"
    return f"{a} {sym} {b}"


def _wrap(node: Node, text: str, keep_mul: bool = False) -> str:
    if not isinstance(node, tuple) or node[0] in ("sqrt", "min", "max", "sq"):
        return text
    if keep_mul and node[0] == "mul":
        return text
    return f"({text})"


# ----------------------------------------------------------------------------- structure

def size(node: Node) -> int:
    return 1 + sum(size(c) for c in node[1:]) if isinstance(node, tuple) else 1


def depth(node: Node) -> int:
    return 1 + max(depth(c) for c in node[1:]) if isinstance(node, tuple) else 1


def variables(node: Node) -> set[str]:
    if isinstance(node, tuple):
        return set().union(*(variables(c) for c in node[1:]))
    return {node} if isinstance(node, str) else set()


def _paths(node: Node, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, tuple):
        for i, c in enumerate(node[1:], start=1):
            out += _paths(c, prefix + (i,))
    return out


def _get(node: Node, path: tuple) -> Node:
    for i in path:
        node = node[i]
    return node


def _put(node: Node, path: tuple, new: Node) -> Node:
    if not path:
        return new
    i = path[0]
    return node[:i] + (_put(node[i], path[1:], new),) + node[i + 1:]


def simplify(node: Node) -> Node:
    """Constants folded, x * 1 and 1 * x dropped, double negation and 1 - (1 - x) undone."""
    if not isinstance(node, tuple):
        return node
    op, *kids = node
    kids = [simplify(k) for k in kids]
    if all(isinstance(k, float) for k in kids):
        value = _apply(op, kids)
        if math.isfinite(value):
            return float(round(value, 6))
    if op == "mul":
        if kids[0] == 1.0:
            return kids[1]
        if kids[1] == 1.0:
            return kids[0]
    if op in ("neg", "onem") and isinstance(kids[0], tuple) and kids[0][0] == op:
        return kids[0][1]
    return (op, *kids)


# ----------------------------------------------------------------------------- values

def _apply(op: str, args: list[float]) -> float:
    if op == "neg":
        return -args[0]
    if op == "sq":
        return args[0] ** 2
    if op == "sqrt":
        return math.sqrt(max(args[0], 0.0))
    if op == "onem":
        return 1.0 - args[0]
    a, b = args
    return {"add": a + b, "sub": a - b, "mul": a * b, "min": min(a, b),
            "max": max(a, b)}[op]


def evaluate(node: Node, env: dict[str, float]) -> float:
    if isinstance(node, tuple):
        return _apply(node[0], [evaluate(c, env) for c in node[1:]])
    return env[node] if isinstance(node, str) else float(node)


def _probe_points(site: str) -> list[dict[str, float]]:
    points = []
    if site == "reward":
        for correct, valid in ((1.0, 1.0), (0.0, 1.0), (0.0, 0.0)):
            for lfrac in (0.1, 0.35, 0.6, 0.95):
                for t in (0.0, 0.5, 1.0):
                    for p in (0.2, 0.5, 0.9):
                        points.append(dict(correct=correct, valid=valid, lfrac=lfrac,
                                           t=t, p=p))
    else:
        for std in (0.1, 0.35, 0.5):
            for p in (0.1, 0.3, 0.5, 0.8):
                for rng_ in (0.25, 1.0):
                    for t in (0.0, 0.5, 1.0):
                        points.append(dict(std=std, p=p, pq=p * (1 - p), range=rng_, t=t))
    return points


PROBES = {site: _probe_points(site) for site in SITES}


def probe(node: Node, site: str) -> tuple[float, ...]:
    """The expression's values on the site's fixed probe points: equal probes, same
    function (as far as this grid can tell)."""
    return tuple(round(evaluate(node, env), 6) for env in PROBES[site])


def shape(node: Node, site: str) -> tuple[float, ...]:
    """What the expression does as a learning signal, on the probe points: a reward up
    to a positive affine map (GRPO's centring and scaling undo shifts and scales: the
    probes z-scored within each step, since a batch shares its step), a scale up to a
    positive factor (a learning-rate change: the
    probes over their mean). Two expressions with equal shapes are one mechanism."""
    values = probe(node, site)
    if site == "reward":  # z-scored within each step t (a batch shares its t)
        out = list(values)
        for t in sorted({e["t"] for e in PROBES[site]}):
            idx = [i for i, e in enumerate(PROBES[site]) if e["t"] == t]
            mean = sum(values[i] for i in idx) / len(idx)
            sd = math.sqrt(sum((values[i] - mean) ** 2 for i in idx) / len(idx))
            for i in idx:
                out[i] = round((values[i] - mean) / sd, 4) if sd > 1e-9 else 0.0
        return tuple(out)
    mean = sum(values) / len(values)
    return tuple(round(v / mean, 4) if abs(mean) > 1e-9 else 0.0 for v in values)


def admissible(node: Node, site: str) -> str | None:
    """Why ``node`` may not be a candidate's expression, or None. Sanity only: within
    the size limits, finite and bounded on the probes; a reward pays for correctness
    on average (over the probes, a correct answer earns more than a wrong valid one);
    a scale is positive on every probe."""
    if size(node) > MAX_NODES or depth(node) > MAX_DEPTH:
        return f"larger than {MAX_NODES} nodes / depth {MAX_DEPTH}"
    values = probe(node, site)
    if not all(math.isfinite(v) and abs(v) <= 10.0 for v in values):
        return "not finite or beyond +-10 on the probes"
    if site == "reward":
        pts = PROBES[site]
        gain = [v1 - v0 for v1, v0, e in zip(values, values[len(pts) // 3:], pts)
                if e["correct"] == 1.0]
        if sum(gain) / len(gain) <= 0.05:
            return "does not pay for correctness"
    elif min(values) <= 0.0:
        return "not positive on every probe"
    return None


# ----------------------------------------------------------------------------- search

def random_tree(rng: random.Random, site: str, max_depth: int = 2) -> Node:
    if max_depth <= 1 or rng.random() < 0.45:
        if rng.random() < 0.7:
            return rng.choice(sorted(VARIABLES[site]))
        return rng.choice(CONSTANTS)
    if rng.random() < 0.3:
        return (rng.choice(sorted(UNARY)), random_tree(rng, site, max_depth - 1))
    return (rng.choice(sorted(BINARY)), random_tree(rng, site, max_depth - 1),
            random_tree(rng, site, max_depth - 1))


def _leaf(rng: random.Random, site: str) -> Node:
    return rng.choice(sorted(VARIABLES[site])) if rng.random() < 0.6 \
        else rng.choice(CONSTANTS)


MUTATIONS = ("point", "subtree", "grow", "shrink", "constant")


def mutate(rng: random.Random, node: Node, site: str) -> Node:
    """One random structural change of ``node`` (simplified)."""
    op = rng.choice(MUTATIONS)
    paths = _paths(node)
    path = rng.choice(paths)
    target = _get(node, path)
    if op == "constant":
        consts = [p for p in paths if isinstance(_get(node, p), float)]
        if consts:
            path = rng.choice(consts)
            value = _get(node, path)
            ladder = sorted(set(CONSTANTS) | {value})
            i = ladder.index(value)
            step = rng.choice([s for s in (-1, 1) if 0 <= i + s < len(ladder)])
            return simplify(_put(node, path, ladder[i + step]))
        op = "point"
    if op == "point":
        if isinstance(target, tuple):
            pool = UNARY if target[0] in UNARY else BINARY
            new = rng.choice(sorted(k for k in pool if k != target[0]))
            return simplify(_put(node, path, (new, *target[1:])))
        return simplify(_put(node, path, _leaf(rng, site)))
    if op == "subtree":
        return simplify(_put(node, path, random_tree(rng, site, 2)))
    if op == "grow":
        if rng.random() < 0.3:
            grown = (rng.choice(sorted(UNARY)), target)
        else:
            leaf = _leaf(rng, site)
            pair = (target, leaf) if rng.random() < 0.5 else (leaf, target)
            grown = (rng.choice(sorted(BINARY)), *pair)
        return simplify(_put(node, path, grown))
    # shrink: a node replaced by one of its children
    inner = [p for p in paths if isinstance(_get(node, p), tuple)]
    if not inner:
        return simplify(_put(node, (), random_tree(rng, site, 2)))
    path = rng.choice(inner)
    return simplify(_put(node, path, rng.choice(_get(node, path)[1:])))


def compose(rng: random.Random, start: Node, site: str, *,
            reject: Callable[[Node], bool] = lambda n: False, changes: int = 1,
            tries: int = 60) -> Node | None:
    """An admissible expression ``changes`` mutations away from ``start`` whose
    ``shape`` differs from start's and that ``reject`` does not refuse; None after
    ``tries``."""
    start_shape = shape(start, site)
    for _ in range(tries):
        node = start
        for _ in range(changes):
            node = mutate(rng, node, site)
        if admissible(node, site) is None and shape(node, site) != start_shape \
                and not reject(node):
            return node
    return None


# ----------------------------------------------------------------------------- code

_REWARD_CODE = {
    "correct": [],
    "valid": ["    valid = batch.valid.float()                                      # (N,)"],
    "lfrac": ["    lfrac = batch.length.float() / batch.max_length                  # (N,)"],
    "t": ["    t = torch.full_like(correct, min(1.0, batch.step / max(1, batch.total_steps - 1)))"],
    "p": ["    g = int(batch.group.max()) + 1",
          "    k = correct.new_zeros(g).index_add_(0, batch.group, correct)    # (B,) successes",
          "    n = correct.new_zeros(g).index_add_(0, batch.group, torch.ones_like(correct))",
          "    p = ((k + 1) / (n + 2))[batch.group]                             # (N,)"],
}
# The scale's statistics over the samples with weight w (validity masking's w when on).
_SCALE_CODE = {
    "std": ["    s_mu = rewards.new_zeros(g).index_add_(0, group, w * rewards) / s_n.clamp_min(1)",
            "    s_sq = rewards.new_zeros(g).index_add_(0, group, w * (rewards - s_mu[group]) ** 2)",
            "    s_std = torch.where(s_n > 1, (s_sq / (s_n - 1).clamp_min(1)).sqrt(),",
            "                        torch.ones_like(s_sq))                       # (B,)"],
    "p": ["    s_k = rewards.new_zeros(g).index_add_(0, group, w * batch.correct.to(rewards.dtype))",
          "    s_p = (s_k + 1) / (s_n + 2)                                        # (B,)"],
    "range": ["    s_hi = rewards.new_full((g,), -float(\"inf\")).scatter_reduce_(",
              "        0, group, torch.where(w > 0, rewards, torch.full_like(rewards, -float(\"inf\"))), \"amax\")",
              "    s_lo = rewards.new_full((g,), float(\"inf\")).scatter_reduce_(",
              "        0, group, torch.where(w > 0, rewards, torch.full_like(rewards, float(\"inf\"))), \"amin\")",
              "    s_range = torch.where(s_n > 0, s_hi - s_lo, torch.zeros_like(s_n))  # (B,)"],
    "t": ["    s_t = torch.full_like(s_n, min(1.0, batch.step / max(1, batch.total_steps - 1)))"],
}
_SCALE_NAMES = {"std": "s_std", "p": "s_p", "pq": "(s_p * (1 - s_p))", "range": "s_range",
                "t": "s_t"}


def _code(node: Node, names: dict[str, str]) -> tuple[str, bool]:
    """(torch code, is a tensor) for ``node``; constants stay Python floats."""
    if not isinstance(node, tuple):
        return (names.get(node, node), True) if isinstance(node, str) else (f"{node!r}", False)
    op, *kids = node
    parts = [_code(k, names) for k in kids]
    (a, ta) = parts[0]
    if op == "neg":
        return f"(-{a})", ta
    if op == "sq":
        return f"({a} ** 2)", ta
    if op == "sqrt":
        return (f"{a}.clamp_min(0).sqrt()", True) if ta else (f"math.sqrt(max({a}, 0.0))", False)
    if op == "onem":
        return f"(1 - {a})", ta
    (b, tb) = parts[1]
    if op in ("add", "sub", "mul"):
        return f"({a} {BINARY[op]} {b})", ta or tb
    fn = {"min": "clamp_max", "max": "clamp_min"}[op]
    if ta and tb:
        return f"torch.{'minimum' if op == 'min' else 'maximum'}({a}, {b})", True
    if ta:
        return f"{a}.{fn}({b})", True
    if tb:
        return f"{b}.{fn}({a})", True
    return f"{op}({a}, {b})", False


def render_reward(node: Node) -> list[str]:
    """The body of ``shape_reward(batch)`` computing ``r = node``."""
    lines = ["    correct = batch.correct.float()                                  # (N,)"]
    used = variables(node)
    for var in ("valid", "lfrac", "t", "p"):
        if var in used:
            lines += _REWARD_CODE[var]
    code, tensor = _code(node, {})
    lines.append(f"    return {code}" if tensor else f"    return torch.full_like(correct, {code})")
    return lines


def render_scale(node: Node) -> list[str]:
    """Lines computing ``scale`` (B,), the floored group scale ``max(node, SCALE_FLOOR)``;
    the caller has ``group``, ``g``, ``w`` and ``rewards``."""
    lines = ["    s_n = rewards.new_zeros(g).index_add_(0, group, w)              # (B,)"]
    used = variables(node)
    if "pq" in used:
        used.add("p")
    for var in ("std", "p", "range", "t"):
        if var in used:
            lines += _SCALE_CODE[var]
    code, tensor = _code(node, _SCALE_NAMES)
    if not tensor:
        code = f"torch.full_like(s_n, {code})"
    lines.append(f"    scale = ({code}).clamp_min(SCALE_FLOOR)  # (B,) s_g, floored")
    return lines


__all__ = ["ExprError", "parse", "unparse", "infix", "simplify", "evaluate", "probe",
           "shape", "admissible", "mutate", "compose", "random_tree", "render_reward",
           "render_scale", "VARIABLES", "CONSTANTS", "UNARY", "BINARY", "SCALE_FLOOR"]
