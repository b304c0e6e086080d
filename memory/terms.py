"""Terms both selection rules share (memory.selection's ``potential``, memory.gpucb):
the lineage graph's children and descendant depths, signature diversity and Pareto
layers. Nodes are ``memory.selection.Node`` (read by attribute)."""
from __future__ import annotations

from collections import deque
from typing import Mapping, Sequence

import numpy as np


def children(nodes: Sequence) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for n in sorted(nodes, key=lambda n: n.id):
        for p in dict.fromkeys(n.parents):
            out.setdefault(p, []).append(n.id)
    return out


def descendant_depths(root: int, children: Mapping[int, list[int]]) -> dict[int, int]:
    """Shortest depth of every descendant of ``root`` (BFS; safe on a bad cycle)."""
    depth: dict[int, int] = {}
    queue = deque([(root, 0)])
    while queue:
        node, d = queue.popleft()
        for child in children.get(node, ()):
            if child != root and child not in depth:
                depth[child] = d + 1
                queue.append((child, d + 1))
    return depth


def diversity(node, pool: Sequence) -> float:
    others = [n for n in pool if n.id != node.id]
    if not others or not node.signature:
        return 0.0
    return float(np.mean([jaccard_distance(node.signature, n.signature) for n in others]))


def jaccard_distance(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return 1.0 - len(a & b) / union if union else 0.0


def pareto_layers(pool: Sequence, objectives: Sequence[str] | None = None
                   ) -> dict[int, int]:
    """Non-dominated layer (1 = front) per node over ``objectives`` (None: those every
    node shares); {} when fewer than two of them are shared."""
    keys = sorted(set.intersection(*(set(n.objectives) for n in pool)))
    if objectives is not None:
        keys = [k for k in keys if k in set(objectives)]
    if len(keys) < 2:
        return {}
    points = {n.id: np.array([float(n.objectives[k]) for k in keys]) for n in pool}
    layers: dict[int, int] = {}
    remaining = set(points)
    layer = 1
    while remaining:
        front = {i for i in remaining
                 if not any(dominates(points[j], points[i]) for j in remaining if j != i)}
        layers.update({i: layer for i in front})
        remaining -= front
        layer += 1
    return layers


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a >= b) and np.any(a > b))
