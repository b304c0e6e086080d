"""Prompt templates are data: ``<name>.md`` files in this folder with ``{placeholder}``s.

A template holds a system part and a user part, each opened by a marker line
``<!-- system -->`` / ``<!-- user -->``. Placeholders are ``{lowercase_name}``; other
braces (JSON examples) are left alone, and substituted values are never scanned again,
so a value that contains ``{directive}`` stays literal text.

Material from the archive (reflections, references, past code, verifier output) goes in
through ``quote_data`` / ``quote_text``: inside a ``<data name="...">`` block that it
cannot close, which the system prompts declare to be quoted evidence, never instructions.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

HERE = Path(__file__).parent
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_PART = re.compile(r"^<!--\s*(system|user)\s*-->\s*$", re.MULTILINE)
_CLOSE = re.compile(r"</(data)", re.IGNORECASE)


@lru_cache(maxsize=None)
def template(name: str) -> str:
    path = HERE / f"{name}.md"
    if not path.is_file():
        raise FileNotFoundError(f"no prompt template {name!r} in {HERE}")
    return path.read_text()


def render(name: str, **values: Any) -> str:
    """The template ``name`` with every ``{placeholder}`` filled; ``KeyError`` names the
    placeholders that have no value."""
    text = template(name)
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise KeyError(f"prompt {name!r} needs values for: {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def messages(name: str, **values: Any) -> list[tuple[str, str]]:
    """The rendered template as chat messages: [("system", ...), ("user", ...)]."""
    text = render(name, **values)
    parts = _PART.split(text)
    # split -> [preamble, role, body, role, body, ...]
    out = [(role, body.strip()) for role, body in zip(parts[1::2], parts[2::2])]
    if [r for r, _ in out] != ["system", "user"]:
        raise ValueError(f"prompt {name!r} must have a <!-- system --> part then a "
                         "<!-- user --> part")
    return [("system" if r == "system" else "human", body) for r, body in out]


def quote_data(name: str, items: Iterable[Any]) -> str:
    """Items as JSON lines inside a ``<data>`` block. '<' is written as the JSON escape
    \\u003c, so no item can close the block or open a new one."""
    lines = [json.dumps(item, ensure_ascii=False, default=str).replace("<", "\\u003c")
             for item in items]
    return f'<data name="{name}">\n' + ("\n".join(lines) or "(none)") + "\n</data>"


def quote_text(name: str, text: str, *, lang: str = "") -> str:
    """Free text (code, verifier output) inside a ``<data>`` block it cannot close."""
    body = _CLOSE.sub(r"<\\/\1", text.strip("\n")) or "(none)"
    if lang:
        body = f"```{lang}\n{body}\n```"
    return f'<data name="{name}">\n{body}\n</data>'


__all__ = ["render", "messages", "template", "quote_data", "quote_text"]
