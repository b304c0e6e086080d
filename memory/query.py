"""Semantic search over past reflections.

    python -m memory.query "entropy collapse" [--status failed] [--run ID] [--tag T]...
        [--directive TEXT] [-k 5] [--json] [--home DIR]

Shows the nearest reflections as a table (candidate, generation, parent, status,
fitness, similarity, reflection); ``--json`` prints a JSON list of objects (candidate_id,
candidate_name, similarity, status, fitness, reflection, tags, ...). ``--status failed``
matches every failure status. Bad input, or a home with no archive, is one line on
stderr and exit code 2; nothing is created.
"""
from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from memory.cli import Parser, add_home, open_existing, run_cli
from memory.evidence import Evidence
from memory.schema import FAILED, STATUSES


def build_parser() -> Parser:
    p = Parser(prog="python -m memory.query",
               description="Semantic search over the archive's reflections.")
    p.add_argument("query", help="a proposal draft or a diagnosis, e.g. 'entropy collapse'")
    p.add_argument("--status", choices=("failed",) + STATUSES, default=None, metavar="S",
                   help=f"candidate status; 'failed' = any of {', '.join(FAILED)}")
    p.add_argument("--run", type=int, default=None, metavar="ID", help="only this run")
    p.add_argument("--tag", action="append", default=[], metavar="T",
                   help="only reflections with this tag (repeat: all of them)")
    p.add_argument("--directive", default=None, help="only runs with this exact directive")
    p.add_argument("-k", type=int, default=5, help="number of hits (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_home(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.query.strip():
        Parser(prog="python -m memory.query").error("empty query: say what to search for")
    if args.k < 1:
        Parser(prog="python -m memory.query").error(f"-k must be >= 1, got {args.k}")
    archive = open_existing(args.home)
    if args.run is not None:
        archive.run(args.run)  # an unknown run is an error, not an empty answer
    if not archive.reflections_count():
        if args.json:
            print("[]")
        else:
            print(f"the archive at {archive.where} has no reflections yet: run python -m "
                  "graph.run to produce some", file=sys.stderr)
        return 0
    hits = archive.similar_reflections(args.query, k=args.k, run_id=args.run,
                                       status=args.status, tags=args.tag,
                                       directive=args.directive)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
    else:
        Console().print(hits_table(args.query, hits))
    return 0


def hits_table(query: str, hits: list[Evidence]) -> Table:
    table = Table(title=f"reflections nearest to {query!r}", show_lines=True)
    for name, kw in (("candidate", {"no_wrap": True}), ("gen", {"justify": "right"}),
                     ("parent", {}), ("status", {"no_wrap": True}),
                     ("fitness", {"justify": "right"}),
                     ("sim", {"justify": "right"}), ("reflection", {"ratio": 1})):
        table.add_column(name, **kw)
    for h in hits:
        parent = ", ".join(f"#{p}" for p in h.parent_ids) or "seed"
        fitness = "-" if h.fitness is None else f"{h.fitness:.3f}"
        tags = f"\n[dim]tags: {', '.join(h.tags)}[/dim]" if h.tags else ""
        status = f"[red]{h.status}[/red]" if h.status in FAILED else h.status
        table.add_row(f"{h.candidate_name} #{h.candidate_id}", str(h.generation), parent,
                      status, fitness, f"{h.similarity:.3f}", escape(h.reflection) + tags)
    if not hits:
        table.caption = "no reflection matches these filters"
    return table


if __name__ == "__main__":
    sys.exit(run_cli(main))
