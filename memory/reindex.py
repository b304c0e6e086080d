"""Rebuild the vector store from the SQL archive (the source of truth).

    python -m memory.reindex [--home DIR] [--sync-only]

Drops the reflection and proposal collections and re-embeds every row (use it after
losing or moving the vector directory, or switching to a Chroma server). ``--sync-only``
repairs without dropping: upserts rows not yet indexed and deletes orphan vectors.
"""
from __future__ import annotations

import sys

from rich.console import Console

from memory.cli import Parser, add_home, open_existing, run_cli


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m memory.reindex", description=__doc__.splitlines()[0])
    p.add_argument("--sync-only", action="store_true",
                   help="repair (upsert missing, delete orphans) instead of rebuilding")
    add_home(p)
    args = p.parse_args(argv)
    archive = open_existing(args.home)
    console = Console()
    with console.status("embedding and indexing ..."):
        report = archive.sync() if args.sync_only else archive.reindex()
    console.print(f"{'synced' if args.sync_only else 'reindexed'} {archive.where}: "
                  f"{report.upserted} vectors upserted, {report.deleted} orphans deleted; "
                  f"store holds {archive.store('reflections').count()} reflections, "
                  f"{archive.store('proposals').count()} proposals")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
