"""What the memory commands share: one-line errors (exit 2), the --home option, and
opening an existing archive without creating anything."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from sqlalchemy.exc import SQLAlchemyError

from memory.archive import Archive
from memory.schema import ArchiveError

USAGE_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line on stderr and exits 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (see --help)")


def fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(USAGE_ERROR)


def add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=None,
                        help="POISE home (default: $POISE_HOME, else ./.poise); "
                             "$POISE_DB_URL overrides its archive.db")


def open_existing(home: str | None) -> Archive:
    """The archive at ``home``; never creates one (ArchiveError if there is none)."""
    return Archive(home, create=False)


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; an ArchiveError or a database error becomes one line + exit 2."""
    try:
        return main(argv)
    except ArchiveError as e:
        fail(str(e))
    except SQLAlchemyError as e:
        fail(f"archive database error: {type(e).__name__}: "
             f"{str(getattr(e, 'orig', None) or e).splitlines()[0]}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
