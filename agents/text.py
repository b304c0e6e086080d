"""The text of a chat reply, made storable (shared by agents.structured and agents.calls)."""
from __future__ import annotations

import re
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL, UTF-16 surrogates


def reply_text(message: Any) -> str:
    """The text of a chat reply (a message, a string, or content blocks)."""
    if isinstance(message, str):
        return message
    content = getattr(message, "content", message)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b if isinstance(b, str) else str(b.get("text", ""))
                       for b in content if isinstance(b, (str, dict)))
    return str(content)


def storable(text: str) -> str:
    """``text`` with surrogate pairs joined and lone surrogates and NULs as U+FFFD: what
    UTF-8 files, SQLite/PostgreSQL text and JSON requests can carry."""
    if not _UNSTORABLE.search(text):
        return text
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text.replace("\x00", "\ufffd")


__all__ = ["reply_text", "storable"]
