"""One candidate, whole: outcome, lineage path to the root, proposal, code, evaluations
and reflections.

    python -m memory.show CANDIDATE [--json] [--home DIR]

CANDIDATE is an id or a name. An unknown candidate, or a home with no archive, is one
line on stderr and exit code 2.
"""
from __future__ import annotations

import json
import sys

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from memory.cards import shown
from memory.archive import Archive
from memory.cli import Parser, add_home, open_existing, run_cli
from memory.schema import Candidate


def build_parser() -> Parser:
    p = Parser(prog="python -m memory.show", description="Show one archived candidate.")
    p.add_argument("candidate", help="candidate id or name")
    p.add_argument("--json", action="store_true", help="print JSON instead of panels")
    add_home(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.candidate.strip():
        parser.error("empty candidate: give an id or a name")
    archive = open_existing(args.home)
    cand = archive.find_candidate(args.candidate.strip())
    record = candidate_record(archive, cand)
    if args.json:
        print(json.dumps(record, indent=2, default=str))
    else:
        Console().print(render(record))
    return 0


def candidate_record(archive: Archive, cand: Candidate) -> dict:
    """Everything the archive knows about ``cand``, as plain data."""
    run = archive.run(cand.run_id)
    return {
        "candidate": cand.model_dump(exclude={"indexed"}),
        "run": {"id": run.id, "directive": run.directive, "status": run.status},
        "parents": archive.parents(cand.id),
        "children": archive.children(cand.id),
        "lineage_path": [{"id": c.id, "name": c.name, "generation": c.generation,
                          "status": c.status, "fitness": c.fitness}
                         for c in archive.lineage_path(cand.id)],
        "evaluations": [e.model_dump() for e in archive.evaluations(cand.id)],
        "reflections": [{"id": r.id, "text": r.text, "tags": r.tags, "created": r.created}
                        for r in archive.reflections(cand.id)],
        "shown": shown(archive, cand.id),
    }


def render(record: dict) -> Group:
    c = record["candidate"]
    fitness = "-" if c["fitness"] is None else f"{c['fitness']:.4f}"
    head = (f"[bold]{escape(c['name'])}[/bold] #{c['id']}  run #{record['run']['id']} "
            f"({escape(record['run']['directive'])})  generation {c['generation']}\n"
            f"status [bold]{c['status']}[/bold]  fitness {fitness}  code hash "
            f"{c['code_hash'] or '-'}")
    if c["error"]:
        head += f"\n[red]error:[/red] {escape(c['error'])}"
    origin = (c.get("details") or {}).get("origin")
    if origin:
        head += (f"\ncopied from run #{origin.get('run')} (#{origin.get('candidate')} "
                 f"{escape(str(origin.get('name')))}) by --from-run, not re-trained")
    path = " <- ".join(f"{escape(p['name'])} #{p['id']} ({_fmt(p['fitness'])})"
                       for p in record["lineage_path"])
    parts = [Panel(head, title="candidate"), Panel(path, title="lineage (to the root)"),
             Panel(escape(c["proposal"] or "(none)"), title="proposal")]
    if c["code"]:
        parts.append(Panel(Syntax(c["code"], "python", line_numbers=True), title="code"))
    shown = record.get("shown") or {}
    if shown.get("evidence") or shown.get("references"):
        parts.append(Panel(escape(shown_text(shown)), title="what the scientist was shown"))
    judge = (c.get("details") or {}).get("judge") or []
    errors = [j["judge_error"] for j in judge if j.get("judge_error")]
    if errors:
        parts.append(Panel(escape("; ".join(errors)),
                           title="[red]the consistency judge failed[/red] (the builtin "
                                 "rule judged instead)"))
    parts.append(_evaluations(record["evaluations"]))
    for r in record["reflections"]:
        tags = f"  [dim]tags: {', '.join(r['tags'])}[/dim]" if r["tags"] else ""
        parts.append(Panel(escape(r["text"]) + tags, title=f"reflection #{r['id']}"))
    if not record["reflections"]:
        parts.append(Panel("(no reflection yet)", title="reflection"))
    return Group(*parts)


def shown_text(shown: dict) -> str:
    """One line each for the evidence and the references a proposal was made from."""
    lines = []
    if shown.get("evidence"):
        lines.append("evidence: " + ", ".join(
            f"reflection #{e['reflection_id']} on #{e['candidate_id']} {e['candidate']}"
            for e in shown["evidence"]))
    if shown.get("references"):
        lines.append("references: " + ", ".join(f"#{r['id']} {r['name']}"
                                               for r in shown["references"]))
    return "\n".join(lines)


def _evaluations(evals: list[dict]) -> Table:
    table = Table(title="evaluations")
    for name in ("seed", "backend", "fitness", "wall s", "metrics", "objectives"):
        table.add_column(name)
    for e in evals:
        metrics = "; ".join(f"{split}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in m.items())
                            if isinstance(m, dict) else f"{split}={_fmt(m)}"
                            for split, m in e["metrics"].items())
        objectives = ", ".join(f"{k}={_fmt(v)}" for k, v in e["objectives"].items())
        table.add_row(str(e["seed"]), e["backend"], _fmt(e["fitness"]),
                      _fmt(e["wall_time"]), escape(metrics) or "-", escape(objectives) or "-")
    if not evals:
        table.caption = "not evaluated"
    return table


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


if __name__ == "__main__":
    sys.exit(run_cli(main))
