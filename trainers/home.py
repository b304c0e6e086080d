"""The POISE home: the one folder a run keeps everything in (archive, vectors, graph
checkpoints, runs, caches such as warm starts). Every entry point and library that needs
it resolves it here, the same way: an explicit ``home``, else ``$POISE_HOME``, else
``./.poise``. An empty value counts as not given (``--home ""`` or ``POISE_HOME=`` would
otherwise mean the current directory).

It sits on the trainers floor, the lowest one that needs a home (warm-start caches), so
every floor above can use it.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT = ".poise"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """``home``, else ``$POISE_HOME``, else ``./.poise`` (empty strings count as unset)."""
    return Path(str(home) if home not in (None, "") else
                os.environ.get("POISE_HOME") or DEFAULT)
