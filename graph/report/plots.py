"""The run report's figures, drawn with matplotlib's object API (no pyplot: no global
backend state, so drawing inside a running graph changes nothing around it).

- ``genealogy``: the tree, one node per candidate laid out in layers by round, edges
  parent -> child; fill = fitness (viridis), shape and colour = status (failures are red
  crosses/squares/diamonds). Returned as PNG bytes and as SVG text whose node groups
  carry ``class="node"`` and ``data-candidate-id`` so a browser (or a test) can find them.
- ``learning_curves``: the best candidates against the baselines, mean over seeds.
- ``leaderboard_chart``: mean fitness with 95% t intervals over seeds.
- ``pareto_plot``: Overall against response length, the non-dominated front drawn,
  GRPO and the other baselines marked (the run report and the campaign's test split).
"""
from __future__ import annotations

import html
import io
import math
import re
import textwrap
from dataclasses import dataclass

import numpy as np
from matplotlib import rc_context
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from memory.terms import dominates
from graph.report.data import (CURVE_KEYS, CandidateView, RunSnapshot, Standing, ci_text,
                               mean_curve)

FITNESS_CMAP = "viridis"
DPI = 90
FAILED_FILL, FAILED_EDGE = "#fadbd8", "#c0392b"
# status -> (marker, fill (None: by fitness), edge colour, legend label)
STATUS_STYLE = {
    "evaluated": ("o", None, "#222222", "evaluated (fill = fitness)"),
    "failed_proposal": ("P", FAILED_FILL, FAILED_EDGE, "failed proposal"),
    "failed_coding": ("v", FAILED_FILL, FAILED_EDGE, "failed coding"),
    "failed_verification": ("X", FAILED_FILL, FAILED_EDGE, "failed verification"),
    "failed_training": ("s", FAILED_FILL, FAILED_EDGE, "failed training"),
    "failed_evaluation": ("D", FAILED_FILL, FAILED_EDGE, "failed evaluation"),
    "duplicate": ("h", "#dddddd", "#777777", "duplicate (not trained)"),
}
IN_PROGRESS = ("o", "#ffffff", "#888888", "in progress")
BASELINE_EDGE, BEST_EDGE = "#000000", "#e0a100"
IMPORTED_EDGE = "#7a5195"                 # a --from-run copy
CURVE_TITLES = {"reward": "reward", "accuracy": "train accuracy", "entropy": "entropy",
                "response_length": "response length (tokens)",
                "validity": "validity rate", "kl_to_start": "KL to start"}
NODE_ID = "poise-node-{}"


@dataclass(frozen=True)
class TreeFigure:
    png: bytes
    svg: str          # inline-ready: no XML prolog; nodes marked up (see module doc)


# ----------------------------------------------------------------------------- tree

def layout(snapshot: RunSnapshot) -> dict[int, tuple[float, float]]:
    """(x, y) per candidate: y = round (top to bottom); within a round, nodes sit near
    the mean x of their parents, at least 1 apart, the layer shifted to stay centred."""
    pos: dict[int, tuple[float, float]] = {}
    for r in sorted({c.round for c in snapshot.candidates}):
        layer = [c for c in snapshot.candidates if c.round == r]
        want = {c.id: float(np.mean([pos[p][0] for p in c.parents if p in pos]))
                if any(p in pos for p in c.parents) else 0.0 for c in layer}
        layer.sort(key=lambda c: (want[c.id], c.id))
        xs: list[float] = []
        for c in layer:
            xs.append(want[c.id] if not xs else max(want[c.id], xs[-1] + 1.0))
        shift = float(np.mean([x - want[c.id] for x, c in zip(xs, layer)]))
        for x, c in zip(xs, layer):
            pos[c.id] = (x - shift, float(r))
    return pos


def fitness_norm(values: list[float]) -> Normalize:
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return Normalize(lo, hi)


def genealogy(snapshot: RunSnapshot) -> TreeFigure | None:
    """The genealogy tree, or None for a run without candidates yet."""
    cands = snapshot.candidates
    if not cands:
        return None
    pos = layout(snapshot)
    rounds = sorted({c.round for c in cands})
    xs = [x for x, _ in pos.values()]
    width = min(30.0, max(7.5, 1.8 * (max(xs) - min(xs)) + 4.5))
    height = min(50.0, max(4.5, 1.25 * (max(rounds) - min(rounds)) + 3.0))
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    norm = fitness_norm([c.fitness for c in cands if c.ranked])
    cmap = ScalarMappable(norm, FITNESS_CMAP)
    board = snapshot.leaderboard()
    best = next((s.candidate.id for s in board if not s.candidate.is_baseline), None)
    for c in cands:
        for i, p in enumerate(c.parents):
            if p in pos:
                span = abs(pos[c.id][1] - pos[p][1])   # bend past the rounds between
                bend = 0.0 if span <= 1 else 0.3 / span
                edge = ax.annotate("", xy=pos[c.id], xytext=pos[p], zorder=1,
                                   arrowprops=dict(arrowstyle="-|>", color="#8a8a8a", lw=1.2,
                                                   linestyle="-" if i == 0 else "--",
                                                   connectionstyle=f"arc3,rad={bend:.3f}",
                                                   shrinkA=13, shrinkB=13))
                edge.set_in_layout(False)
    for c in cands:
        _draw_node(ax, c, pos[c.id], cmap, best)
    ax.set_yticks(rounds, [f"round {r}" for r in rounds])
    ax.set_xticks([])
    for side in ("bottom", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(max(rounds) + 0.7, min(rounds) - 0.4)   # round 0 on top
    ax.set_title(f"run {snapshot.run.id}: genealogy ({len(cands)} candidates; "
                 "arrows parent -> child, dashed = second parent)")
    fig.colorbar(cmap, ax=ax, fraction=0.03, pad=0.01, label="fitness (mean over seeds)")
    handles = _legend(cands, best)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
               fontsize=8, frameon=False)
    png = _png(fig)
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "poise"}):
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
    return TreeFigure(png, _mark_nodes(buf.getvalue(), snapshot))


def _draw_node(ax, c: CandidateView, xy, cmap: ScalarMappable, best: int | None) -> None:
    marker, fill, edge, _ = STATUS_STYLE.get(c.status, IN_PROGRESS)
    if fill is None:
        fill = cmap.to_rgba(c.fitness) if c.fitness is not None else "#ffffff"
    lw = 1.2
    if c.is_baseline:
        edge, lw = BASELINE_EDGE, 2.8
    if c.info.origin:                   # copied from an earlier run (--from-run)
        edge, lw = IMPORTED_EDGE, 2.4
    if c.id == best:
        edge, lw = BEST_EDGE, 3.2
    (node,) = ax.plot(*xy, marker=marker, markersize=19, markerfacecolor=fill,
                      markeredgecolor=edge, markeredgewidth=lw, linestyle="none", zorder=3)
    node.set_gid(NODE_ID.format(c.id))
    node.set_url(f"#cand-{c.id}")                   # SVG: a click opens its section
    name = c.name if len(c.name) <= 20 else c.name[:19] + "…"
    if c.info.origin:
        name += f" (run {c.info.origin.get('run')})"
    if c.ranked:
        what = f"{c.fitness:.2f}"
    else:
        what = c.status.replace("_", " ")
    label = ax.annotate(f"{name}\n{what}", xy, xytext=(0, -15), textcoords="offset points",
                        ha="center", va="top", fontsize=7.5, zorder=4,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8),
                        color=FAILED_EDGE if c.status.startswith("failed") else "#222222")
    label.set_in_layout(False)


def _legend(cands: list[CandidateView], best: int | None) -> list[Line2D]:
    present = {c.status for c in cands}
    handles = []
    for status, (marker, fill, edge, label) in STATUS_STYLE.items():
        if status in present:
            handles.append(Line2D([], [], marker=marker, linestyle="none", markersize=10,
                                  markerfacecolor=fill or "#5ec962", markeredgecolor=edge,
                                  label=label))
    if present - set(STATUS_STYLE):
        marker, fill, edge, label = IN_PROGRESS
        handles.append(Line2D([], [], marker=marker, linestyle="none", markersize=10,
                              markerfacecolor=fill, markeredgecolor=edge, label=label))
    handles.append(Line2D([], [], marker="o", linestyle="none", markersize=10,
                          markerfacecolor="#ffffff", markeredgecolor=BASELINE_EDGE,
                          markeredgewidth=2.8, label="baseline (seed GRPO)"))
    if any(c.info.origin for c in cands):
        handles.append(Line2D([], [], marker="o", linestyle="none", markersize=10,
                              markerfacecolor="#ffffff", markeredgecolor=IMPORTED_EDGE,
                              markeredgewidth=2.4, label="copied from an earlier run"))
    if best is not None:
        handles.append(Line2D([], [], marker="o", linestyle="none", markersize=10,
                              markerfacecolor="#ffffff", markeredgecolor=BEST_EDGE,
                              markeredgewidth=3.2, label="best candidate"))
    return handles


def _mark_nodes(svg: str, snapshot: RunSnapshot) -> str:
    """Drop the XML prolog; give each node group its class, data attributes and a
    tooltip. Raises if a node is missing: the tree and the archive must agree."""
    svg = svg[svg.index("<svg"):]

    def mark(m: re.Match) -> str:
        c = snapshot.by_id[int(m.group(1))]
        fit = "-" if c.fitness is None else f"{c.fitness:.3f}"
        tip = html.escape(f"#{c.id} {c.name} (round {c.round}): {c.status}, fitness {fit}")
        return (f'<g id="{NODE_ID.format(c.id)}" class="node" data-candidate-id="{c.id}" '
                f'data-status="{html.escape(c.status)}"><title>{tip}</title>')

    svg, n = re.subn(r'<g id="poise-node-(\d+)">', mark, svg)
    svg = re.sub(r'(<a xlink:href="#cand-\d+") target="_blank"', r"\1", svg)
    if n != len(snapshot.candidates):
        raise RuntimeError(f"the genealogy SVG has {n} nodes for "
                           f"{len(snapshot.candidates)} candidates")
    return svg


# ----------------------------------------------------------------------------- curves

def learning_curves(snapshot: RunSnapshot, best: list[CandidateView]) -> bytes | None:
    """Training curves (mean over seeds, band = +-sd across seeds, smoothed as in
    ``trainers.local.compare``) of ``best`` against the baselines; None without curves."""
    baselines = snapshot.baselines()
    base_ids = {c.id for c in baselines}
    shown = [(c, True) for c in baselines] + [(c, False) for c in best if c.id not in base_ids]
    shown = [(c, b) for c, b in shown if any(ev.curves for ev in c.evaluations)]
    if not shown:
        return None
    fig = Figure(figsize=(14, 7.5))
    axes = fig.subplots(2, 3)
    colors = iter(["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"])
    styles = {c.id: dict(color="#000000" if i == 0 else "#7f7f7f", linestyle="--", lw=2.0)
              if base else dict(color=next(colors), linestyle="-", lw=1.8)
              for i, (c, base) in enumerate(shown)}
    for ax, key in zip(axes.flat, CURVE_KEYS):
        for c, base in shown:
            steps, mean, sd = mean_curve(c, key)
            if steps.size == 0:
                continue
            w = max(1, steps.size // 20)
            kernel = np.ones(w) / w
            x = steps[w - 1:]
            y, band = (np.convolve(v, kernel, mode="valid") for v in (mean, sd))
            label = f"{c.name} ({'baseline, ' if base else ''}fitness {_fit(c)}, " \
                    f"{len(c.evaluations)} seed{'s' if len(c.evaluations) != 1 else ''})"
            ax.plot(x, y, label=label, marker="o" if x.size < 12 else None, ms=3,
                    **styles[c.id])
            if band.any():
                ax.fill_between(x, y - band, y + band, color=styles[c.id]["color"],
                                alpha=0.12, lw=0)
        ax.set_title(CURVE_TITLES[key])
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"run {snapshot.run.id}: learning curves of the {len(best)} best candidates "
                 "vs the baselines (dashed); mean over seeds, band = ±1 sd")
    fig.tight_layout()
    return _png(fig)


def _fit(c: CandidateView) -> str:
    return "-" if c.fitness is None else f"{c.fitness:.2f}"


# ----------------------------------------------------------------------------- leaderboard

def leaderboard_chart(snapshot: RunSnapshot, board: list[Standing],
                      limit: int = 30) -> bytes | None:
    """Horizontal bars of mean fitness with 95% t intervals (none for one seed)."""
    if not board:
        return None
    rows = board[:limit]
    fig = Figure(figsize=(10, max(2.6, 0.42 * len(rows) + 1.4)))
    ax = fig.subplots()
    y = np.arange(len(rows))
    means = np.array([s.ci.mean for s in rows])
    colors = ["#9e9e9e" if s.candidate.is_baseline else "#4c72b0" for s in rows]
    ax.barh(y, means, color=colors, height=0.62, zorder=2)
    ends = []
    for i, s in enumerate(rows):
        has_ci = s.ci.n >= 2 and math.isfinite(s.ci.ci_low)
        if has_ci:
            err = [[s.ci.mean - s.ci.ci_low], [s.ci.ci_high - s.ci.mean]]
            ax.errorbar(s.ci.mean, i, xerr=err, color="#222222", capsize=4, lw=1.3, zorder=3)
        ends.append(max(s.ci.mean, 0.0, s.ci.ci_high if has_ci else s.ci.mean))
        ax.annotate(ci_text(s.ci), (ends[-1], i), va="center", fontsize=8,
                    xytext=(6, 0), textcoords="offset points")
    seed = snapshot.seed_baseline
    if seed is not None and seed.ranked:
        ax.axvline(seed.fitness, color="#000000", linestyle="--", lw=1,
                   label=f"{seed.name} (seed baseline)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, [s.candidate.name for s in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("fitness (mean over seeds, 95% t interval)")
    lows = [s.ci.ci_low if s.ci.n >= 2 and math.isfinite(s.ci.ci_low) else s.ci.mean
            for s in rows]
    lo, hi = min(0.0, *lows), max(max(ends), 1e-9)
    ax.set_xlim(lo - 0.05 * (hi - lo), hi + 0.35 * (hi - lo))
    ax.grid(axis="x", alpha=0.3, zorder=0)
    more = f" (top {limit} of {len(board)})" if len(board) > limit else ""
    ax.set_title(f"run {snapshot.run.id}: leaderboard{more}")
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------- pareto

def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point dominates (Overall at least as high and length at
    least as short, one of them strictly), shortest first."""
    score = [np.array([p["overall"], -p["length"]]) for p in points]
    front = [p for i, p in enumerate(points)
             if not any(dominates(q, score[i]) for q in score)]
    return sorted(front, key=lambda p: p["length"])


PARETO_STYLE = {  # kind -> (marker, colour, size, legend label)
    "grpo": ("*", "#000000", 260, "GRPO"),
    "baseline": ("s", "#9e9e9e", 70, "shipped baseline"),
    "candidate": ("o", "#4c72b0", 45, "candidate"),
    "winner": ("D", "#e0a100", 110, "winner"),
}


def pareto_plot(points: list[dict], title: str, split: str = "val") -> bytes | None:
    """Overall (up) against mean response length (left is shorter) for ``points``
    (``name``, ``overall``, ``length``, ``kind`` in PARETO_STYLE); the non-dominated
    front as a step line; every non-candidate point and the front's points named."""
    points = [p for p in points if p.get("overall") is not None
              and p.get("length") is not None]
    if not points:
        return None
    fig = Figure(figsize=(8, 5.2))
    ax = fig.subplots()
    front = pareto_front(points)
    ax.step([p["length"] for p in front], [p["overall"] for p in front], where="post",
            color="#c44e52", lw=1.2, alpha=0.8, zorder=1, label="Pareto front")
    for kind, (marker, colour, size, label) in PARETO_STYLE.items():
        mine = [p for p in points if p["kind"] == kind]
        if mine:
            ax.scatter([p["length"] for p in mine], [p["overall"] for p in mine],
                       marker=marker, c=colour, s=size, edgecolors="#222222", lw=0.6,
                       zorder=3 if kind != "candidate" else 2, label=label)
    named = {id(p) for p in front} | {id(p) for p in points if p["kind"] != "candidate"}
    for p in points:
        if id(p) in named:
            ax.annotate(p["name"], (p["length"], p["overall"]), fontsize=7,
                        xytext=(5, 4), textcoords="offset points")
    ax.set_xlabel(f"mean response length, {split} (tokens; left is shorter)")
    ax.set_ylabel(f"Overall, {split} (points)")
    ax.grid(alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(textwrap.fill(title, 100), fontsize=9)  # an objective's text is long
    fig.tight_layout()
    return _png(fig)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
