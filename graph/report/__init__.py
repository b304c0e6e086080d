"""The run report: one self-contained HTML page (plots embedded, no external assets).

    python -m graph.report RUN_ID [--home DIR] [--out FILE] [--quiet]

Writes ``<home>/runs/<RUN_ID>/report.html`` (or FILE) and, next to it, the plots as PNG
files (``report-genealogy.png``, ``report-curves.png``, ``report-leaderboard.png``,
``report-pareto.png``):

- the genealogy tree, coloured by fitness and status; inline SVG, one ``.node`` element
  per candidate (``data-candidate-id``), a click opens the candidate;
- learning curves of the best candidates against the seed baseline (and other baselines);
- the leaderboard: mean fitness over seeds with 95% t intervals, and the paired
  difference to the seed baseline;
- Overall against response length, with the Pareto front and GRPO marked;
- per candidate: proposal, code diff against its first parent, status and error,
  reflections.

Read-only: safe while the run is still writing (see ``graph.report.data``). Every text
from the archive (LLM-written) is HTML-escaped. Bad input (unknown run, no home, a
corrupt archive) is one line on stderr and exit code 2.
"""
from __future__ import annotations

import base64
import difflib
import html
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from memory.archive import Archive, resolve_home
from memory.cli import Parser, add_home, fail
from graph.summary import val_means
from graph.report.data import CandidateView, RunSnapshot, Standing, ci_text, load_snapshot

REPORT_FILE = "report.html"
TOP_K = 4                           # best candidates in the learning curves
STEPS = ("reading the archive", "genealogy tree", "learning curves", "leaderboard",
         "candidates", "writing")

e = html.escape                     # every archive string goes through this


def default_path(home: Path, run_id: int) -> Path:
    return home / "runs" / str(run_id) / REPORT_FILE


def write_report(home: str | Path | None, run_id: int, out: str | Path | None = None,
                 step: Callable[[str], None] = lambda _: None) -> Path:
    """Write run ``run_id``'s report and its PNGs; returns the HTML path. ``step`` is
    called with each stage's name (progress display). Raises ArchiveError for an unknown
    run or an unreadable archive, OSError when the files cannot be written."""
    from graph.report import plots

    home = resolve_home(home)
    out = Path(out) if out is not None else default_path(home, run_id)
    step(STEPS[0])
    with Archive(home, create=False, index=False) as archive:
        snap = load_snapshot(archive, run_id)
    board = snap.leaderboard()
    step(STEPS[1])
    tree = plots.genealogy(snap)
    step(STEPS[2])
    best = snap.best(TOP_K)
    curves = plots.learning_curves(snap, best)
    step(STEPS[3])
    chart = plots.leaderboard_chart(snap, board)
    pareto = plots.pareto_plot(_pareto_points(snap, board),
                               f"run {snap.run.id}: Overall vs length "
                               f"(objective: {_objective(snap.run.config)})")
    step(STEPS[4])
    pngs = {"genealogy": tree.png if tree else None, "curves": curves, "leaderboard": chart,
            "pareto": pareto}
    names = {k: f"{out.stem}-{k}.png" for k in pngs}
    body = "\n".join([_header(snap, board),
                      _genealogy_section(tree.svg if tree else None, names["genealogy"]),
                      _curves_section(curves, best, snap, names["curves"]),
                      _leaderboard_section(snap, board, chart, names["leaderboard"]),
                      _pareto_section(pareto, names["pareto"]),
                      _llm_section(home, run_id),
                      _candidates_section(snap, _llm_by_candidate(home, run_id))])
    page = _page(f"POISE run {snap.run.id}: {snap.run.directive}", body)
    step(STEPS[5])
    out.parent.mkdir(parents=True, exist_ok=True)
    for key, png in pngs.items():
        if png is not None:
            _atomic_write(out.parent / names[key], png)
    _atomic_write(out, page.encode())
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers (a browser refreshing the page) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- sections

def _header(snap: RunSnapshot, board: list[Standing]) -> str:
    run = snap.run
    counts = Counter(c.status for c in snap.candidates)
    count_text = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
    seed = snap.seed_baseline
    lines = [f"<p class='directive'>directive: <b>{e(run.directive)}</b></p>",
             f"<p>objective: {e(_objective(run.config))}</p>",
             f"<p>status: <b>{e(run.status)}</b>; started {_when(run.started)}"
             + (f", finished {_when(run.finished)}" if run.finished else "")
             + f"; {len(snap.candidates)} candidates ({e(count_text) or 'none yet'})</p>"]
    top = next((s for s in board if not s.candidate.is_baseline), None)
    if top is not None:
        versus = (f" vs {e(seed.name)} {seed.fitness:.3f}" if seed is not None and seed.ranked
                  else "")
        lines.append(f"<p>best candidate: {_link(top.candidate)} fitness "
                     f"{e(ci_text(top.ci, 3))}{versus}</p>")
    if run.status == "running":
        lines.append("<p class='live'>run in progress: this page shows what was archived "
                     f"at {_when(datetime.now(timezone.utc))}; rerun the command to refresh."
                     "</p>")
    nav = " · ".join(f"<a href='#{k}'>{t}</a>" for k, t in (
        ("genealogy", "genealogy"), ("curves", "learning curves"),
        ("leaderboard", "leaderboard"), ("pareto", "Overall vs length"),
        ("candidates", "candidates")))
    return (f"<header><h1>POISE run {run.id}</h1>{''.join(lines)}<nav>{nav}</nav>"
            "</header>")


def _objective(config: dict) -> str:
    try:
        from evals.objective import ObjectiveSpec

        return ObjectiveSpec.model_validate(config["objective"]).describe()
    except Exception:  # noqa: BLE001 - an older or hand-made run: say so, don't fail
        return "(not recorded)"


def _genealogy_section(svg: str | None, png_name: str) -> str:
    if svg is None:
        return "<section id='genealogy'><h2>Genealogy</h2><p>no candidates yet</p></section>"
    return ("<section id='genealogy'><h2>Genealogy</h2>"
            "<p class='note'>One node per candidate, arrows parent → child. Fill: fitness; "
            "red crosses, squares and diamonds: failed verification, training, evaluation; "
            "black ring: baseline; gold ring: best. Hover a node for its numbers, click it "
            f"for its proposal, diff and reflection. PNG: <code>{e(png_name)}</code>.</p>"
            f"<div class='tree'>{svg}</div></section>")


def _curves_section(png: bytes | None, best: list[CandidateView], snap: RunSnapshot,
                    png_name: str) -> str:
    head = "<section id='curves'><h2>Learning curves</h2>"
    if png is None:
        return head + "<p>no evaluated candidate has learning curves yet</p></section>"
    names = ", ".join(_link(c) for c in best) or "none beyond the baselines yet"
    bases = ", ".join(_link(c) for c in snap.baselines())
    return (head + f"<p class='note'>Best candidates: {names}; baselines: {bases}. Training "
            f"batches (sampled), mean over seeds. PNG: <code>{e(png_name)}</code>.</p>"
            + _img(png, "learning curves of the best candidates vs the baselines",
                   "plot-curves") + "</section>")


def _leaderboard_section(snap: RunSnapshot, board: list[Standing], png: bytes | None,
                         png_name: str) -> str:
    parts = ["<section id='leaderboard'><h2>Leaderboard</h2>"]
    if png is not None:
        parts.append(_img(png, "leaderboard: mean fitness with 95% CIs", "plot-leaderboard"))
        parts.append(f"<p class='note'>PNG: <code>{e(png_name)}</code>. 95% CI: Student t "
                     "interval over seeds; Δ: paired by seed against the seed baseline.</p>")
    seed = snap.seed_baseline
    head = ["#", "candidate", "round", "parents", "trained on", "fitness", "95% CI", "seeds",
            f"Δ vs {seed.name if seed else 'seed'}", "val Overall", "val length"]
    rows = [_board_row(i, s) for i, s in enumerate(board, 1)]
    parts.append(_table("leaderboard", head, rows) if rows else
                 "<p>no evaluated candidate yet</p>")
    failed = [c for c in snap.candidates if not c.ranked]
    if failed:
        parts.append("<h3>Not on the leaderboard</h3>")
        parts.append(_table("unranked", ["candidate", "round", "status", "error"], [
            (f"<tr data-candidate-id='{c.id}'><td>{_link(c)}</td><td>{c.round}</td>"
             f"<td>{_badge(c.status)}</td><td>{e(_first_line(c.error, 200))}</td></tr>")
            for c in failed]))
    return "".join(parts) + "</section>"


def _pareto_points(snap: RunSnapshot, board: list[Standing]) -> list[dict]:
    """Each ranked candidate's mean val Overall and length; the seed baseline is GRPO."""
    seed = snap.seed_baseline
    out = []
    for s in board:
        c = s.candidate
        overall, length = _val_value(c, "overall"), _val_value(c, "length")
        kind = ("grpo" if seed is not None and c.id == seed.id else
                "baseline" if c.is_baseline else "candidate")
        out.append({"name": c.name, "overall": overall, "length": length, "kind": kind})
    return out


def _pareto_section(png: bytes | None, png_name: str) -> str:
    if png is None:
        return ("<section id='pareto'><h2>Overall vs length</h2>"
                "<p>no evaluated candidate yet</p></section>")
    return ("<section id='pareto'><h2>Overall vs length</h2>"
            "<p class='note'>Mean val Overall and greedy response length over seeds; the "
            "red steps join the candidates no other candidate beats on both. PNG: "
            f"<code>{e(png_name)}</code>.</p>"
            + _img(png, "Overall against response length, Pareto front", "plot-pareto")
            + "</section>")


def _board_row(rank: int, s: Standing) -> str:
    c = s.candidate
    ci = "n=1, no CI" if s.ci.n < 2 else f"[{s.ci.ci_low:.3f}, {s.ci.ci_high:.3f}]"
    delta = "-" if s.vs_seed is None else e(ci_text(s.vs_seed, 3, signed=True))
    cls = " class='baseline'" if c.is_baseline else ""
    return (f"<tr data-candidate-id='{c.id}'{cls}><td>{rank}</td><td>{_link(c)}</td>"
            f"<td>{c.round}</td><td>{_parents(c)}</td>"
            f"<td class='backend'>{e(', '.join(c.backends))}</td><td>{s.ci.mean:.3f}</td>"
            f"<td>{ci}</td><td>{s.ci.n}</td><td>{delta}</td>"
            f"<td>{_val_mean(c, 'overall')}</td><td>{_val_mean(c, 'length')}</td></tr>")


def _val_mean(c: CandidateView, key: str) -> str:
    value = _val_value(c, key)
    return "-" if value is None else f"{value:.1f}"


def _val_value(c: CandidateView, key: str) -> float | None:
    return val_means(c.evaluations)[key]


def _llm_usage(home: Path, run_id: int) -> dict:
    from agents import calls

    if not (home / calls.LEDGER_FILE).is_file():
        return {}
    return calls.Ledger(home).totals(run_id)


def _llm_by_candidate(home: Path, run_id: int) -> dict:
    return _llm_usage(home, run_id).get("by_candidate", {})


def _llm_section(home: Path, run_id: int) -> str:
    """The run's LLM calls by role: calls, tokens, cost (agents.calls' ledger)."""
    from agents.prices import PRICES_AS_OF

    usage = _llm_usage(home, run_id)
    if not usage.get("calls"):
        return ""
    rows = [f"<tr><td>{e(role)}</td><td>{u['calls']}</td><td>{u['cached_calls']}</td>"
            f"<td>{u['input_tokens']:,}</td><td>{u['output_tokens']:,}</td>"
            f"<td>{u['cost_usd']:.4f}</td></tr>"
            for role, u in [*usage["by_role"].items(), ("total", usage)]]
    notes = []
    if usage["estimated_calls"]:
        notes.append(f"{usage['estimated_calls']} call(s) had no usage metadata: their "
                     "tokens are estimated")
    if usage["unpriced_calls"]:
        notes.append(f"{usage['unpriced_calls']} call(s) to models without a price cost 0")
    return ("<section id='llm'><h2>LLM calls</h2>"
            + _table("llm", ["role", "calls", "cached", "input tokens", "output tokens",
                             "USD"], rows)
            + f"<p class='note'>USD at list prices of {PRICES_AS_OF} (agents/prices.py)"
            + "".join(f"; {e(n)}" for n in notes) + ".</p></section>")


def _candidates_section(snap: RunSnapshot, llm: dict | None = None) -> str:
    return ("<section id='candidates'><h2>Candidates</h2>"
            + "".join(_candidate(snap, c, (llm or {}).get(c.info.key))
                      for c in snap.candidates) + "</section>")


def _candidate(snap: RunSnapshot, c: CandidateView, llm: dict | None = None) -> str:
    fit = "-" if c.fitness is None else f"{c.fitness:.3f}"
    seeds = ", ".join(f"seed {k}: {v:.3f}" for k, v in sorted(c.seed_fitness.items()))
    genes = c.info.genes or []
    parts = [f"<article class='candidate' id='cand-{c.id}' data-candidate-id='{c.id}'>",
             f"<h3>{e(c.name)} <small>#{c.id} · round {c.round}</small> {_badge(c.status)}"
             "</h3>",
             f"<p>parents: {_parents(c) or 'none (a root)'} · trained on "
             f"{e(', '.join(c.backends) or '-')} · fitness {fit}"
             + (f" ({e(seeds)})" if len(c.seed_fitness) > 1 else "") + "</p>"]
    if c.info.origin:
        o = c.info.origin
        parts.append(f"<p class='origin'>copied from run {e(str(o.get('run')))} (#"
                     f"{e(str(o.get('candidate')))} {e(str(o.get('name')))}) by --from-run, "
                     "with its results: not re-trained in this run</p>")
    if genes:
        parts.append("<p class='genes'>" + " ".join(f"<code>{e(str(g))}</code>"
                                                     for g in genes) + "</p>")
    if c.error:
        parts.append(f"<pre class='error'>{e(c.error)}</pre>")
    if llm and llm.get("calls"):
        parts.append(f"<p class='llm'>LLM: {llm['calls']} call(s), {llm['tokens']:,} "
                     f"tokens, ${llm['cost_usd']:.4f}</p>")
    if c.shown:
        from memory.show import shown_text

        parts.append("<p class='shown'>the scientist was shown: "
                     + e(shown_text(c.shown)).replace("\n", "<br>") + "</p>")
    for j in c.info.judge:
        if j.get("judge_error"):
            parts.append(f"<p class='error'>the consistency judge failed: "
                         f"{e(j['judge_error'])} (the builtin rule judged instead)</p>")
    parts.append(f"<h4>Proposal</h4><pre class='text'>{e(c.proposal or '(none)')}</pre>")
    parent = snap.by_id.get(c.parents[0]) if c.parents else None
    parts.append(_diff_block(parent, c))
    parts.append("<h4>Reflection</h4>")
    if not c.reflections:
        parts.append("<p class='note'>(no reflection yet)</p>")
    for r in c.reflections:
        tags = " ".join(f"<span class='tag'>{e(str(t))}</span>" for t in r.tags or [])
        parts.append(f"<pre class='text reflection'>{e(r.text)}</pre>{tags}")
    return "".join(parts) + "</article>"


def code_diff(parent: CandidateView, cand: CandidateView) -> list[str]:
    """Unified diff lines of ``cand``'s code against ``parent``'s."""
    return list(difflib.unified_diff(
        (parent.code or "").splitlines(), (cand.code or "").splitlines(),
        f"{parent.name}.py (parent #{parent.id})", f"{cand.name}.py (#{cand.id})",
        lineterm=""))


def _diff_block(parent: CandidateView | None, c: CandidateView) -> str:
    if c.code is None:
        return ("<h4>Code</h4><p class='note'>no code (it failed before the coder wrote "
                "any)</p>")
    full = (f"<details><summary>full code ({len(c.code.splitlines())} lines)</summary>"
            f"<pre class='code'>{e(c.code)}</pre></details>")
    if parent is None:
        return f"<h4>Code</h4><p class='note'>a root: no parent to diff against</p>{full}"
    if parent.code is None:
        return f"<h4>Code</h4><p class='note'>its parent has no code</p>{full}"
    lines = code_diff(parent, c)
    if not lines:
        return f"<h4>Diff vs {e(parent.name)}</h4><p class='note'>identical code</p>{full}"
    kinds = (("+++", "meta"), ("---", "meta"), ("@@", "hunk"), ("+", "add"), ("-", "del"))
    out = []
    for line in lines:
        kind = next((k for prefix, k in kinds if line.startswith(prefix)), "ctx")
        out.append(f"<span class='{kind}'>{e(line)}</span>")
    return (f"<h4>Diff vs {_link(parent)}</h4><pre class='diff'>" + "".join(out)
            + f"</pre>{full}")


# ----------------------------------------------------------------------------- html bits

def _link(c: CandidateView) -> str:
    return f"<a href='#cand-{c.id}'>{e(c.name)}</a>"


def _parents(c: CandidateView) -> str:
    return ", ".join(f"<a href='#cand-{p}'>#{p}</a>" for p in c.parents)


def _badge(status: str) -> str:
    kind = "bad" if status.startswith("failed") else (
        "good" if status == "evaluated" else "other")
    return f"<span class='badge {kind}'>{e(status.replace('_', ' '))}</span>"


def _first_line(text: str | None, limit: int) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _when(t: datetime | None) -> str:
    return "-" if t is None else e(t.strftime("%Y-%m-%d %H:%M:%S UTC"))


def _img(png: bytes, alt: str, ident: str) -> str:
    data = base64.b64encode(png).decode()
    return f"<img id='{ident}' class='plot' alt='{e(alt)}' src='data:image/png;base64,{data}'>"


def _table(cls: str, head: list[str], rows: list[str]) -> str:
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    return (f"<table class='{cls}'><thead><tr>{th}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;margin:0;
 background:#f6f7f9}
header,section{max-width:1280px;margin:0 auto;padding:12px 24px}
header{background:#fff;border-bottom:1px solid #ddd}
h1{margin:8px 0 4px}h2{border-bottom:2px solid #4c72b0;padding-bottom:4px}
nav a{margin-right:6px}.note{color:#555;font-size:13px}.live{color:#b35c00;font-weight:600}
.tree{overflow-x:auto;background:#fff;border:1px solid #ddd;border-radius:6px}
.tree svg{max-width:100%;height:auto}.tree .node{cursor:pointer}
img.plot{max-width:100%;background:#fff;border:1px solid #ddd;border-radius:6px}
table{border-collapse:collapse;background:#fff;margin:10px 0;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th:nth-child(2),td:nth-child(2){text-align:left}
table.unranked td,table.unranked th{text-align:left}
tr.baseline{background:#f0f0f0}
article.candidate{background:#fff;border:1px solid #ddd;border-radius:6px;padding:4px 16px;
 margin:14px 0}
article.candidate:target{outline:3px solid #e0a100}
h3 small{color:#777;font-weight:normal}
.badge{font-size:12px;padding:2px 8px;border-radius:10px;vertical-align:middle}
.badge.good{background:#d5f0dd;color:#1b5e20}.badge.bad{background:#fadbd8;color:#a93226}
.badge.other{background:#eee;color:#444}
pre{background:#fbfbfc;border:1px solid #e3e3e3;padding:8px;overflow-x:auto;font-size:12.5px}
pre.text{white-space:pre-wrap}pre.error{background:#fdf0ee;border-color:#e6b0aa;
 color:#922b21;white-space:pre-wrap}
pre.diff span{display:block;min-height:1.25em}
pre.diff .add{background:#e6ffec;color:#1a7f37}pre.diff .del{background:#ffebe9;color:#cf222e}
pre.diff .hunk{color:#0550ae}pre.diff .meta{color:#666;font-weight:600}
.genes code,.tag{font-size:12px;background:#eef2f8;padding:1px 6px;border-radius:4px;
 margin-right:4px}
footer{max-width:1280px;margin:0 auto;padding:16px 24px;color:#777;font-size:12px}
"""


def _page(title: str, body: str) -> str:
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>\n{body}\n"
            f"<footer>written {made} by python -m graph.report; self-contained (no "
            "external assets)</footer></body></html>\n")


# ----------------------------------------------------------------------------- cli

def build_parser() -> Parser:
    p = Parser(prog="python -m graph.report",
               description="Write a run's HTML report (genealogy, curves, leaderboard).")
    p.add_argument("run_id", type=int, metavar="RUN_ID", help="the run (see graph.run output)")
    add_home(p)
    p.add_argument("--out", type=Path, default=None,
                   help=f"HTML file (default <home>/runs/RUN_ID/{REPORT_FILE}); PNGs go "
                        "next to it")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    args = build_parser().parse_args(argv)
    home = resolve_home(args.home)
    if not os.environ.get("POISE_DB_URL") and not home.is_dir():
        fail(f"no POISE home at {home}: pass --home DIR (a directory graph.run wrote)")
    if args.out is not None and args.out.is_dir():
        fail(f"--out {args.out} is a directory: give an HTML file path")
    console = Console(stderr=True)
    with Progress(TextColumn("report: {task.description}"), BarColumn(),
                  MofNCompleteColumn(), console=console, transient=True,
                  disable=args.quiet or not console.is_terminal) as bar:
        task = bar.add_task(STEPS[0], total=len(STEPS))

        def step(name: str) -> None:
            bar.update(task, description=name, completed=STEPS.index(name))
        try:
            path = write_report(home, args.run_id, args.out, step=step)
        except OSError as err:
            fail(f"cannot write the report: {err.strerror or err} "
                 f"({err.filename or args.out or default_path(home, args.run_id)})")
    print(f"report: {path}")
    return 0

