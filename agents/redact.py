"""Secrets out of text: ``redact`` replaces API keys and tokens with ``[redacted]``.

Used on every error that comes back from a chat-model call (``agents.structured``):
such errors become failed candidates' stored reasons, reflections, checkpoints, the run
summary and the console, and a server or proxy may echo the key it received ("Incorrect
API key provided: sk-..."). Redacted:

- the value of every environment variable whose name ends in KEY, TOKEN, SECRET,
  PASSWORD or CREDENTIAL(S) (``OPENAI_API_KEY``, ``LANGSMITH_API_KEY``, ``HF_TOKEN``...),
  when it is at least ``MIN_SECRET_CHARS`` long (a short value would match by chance);
- text shaped like a key even when it is not ours: ``sk-...``, ``lsv2_...``, ``hf_...``,
  ``ghp_...``, ``AKIA...``, and the credential after ``Bearer``.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$")
_KEY_SHAPES = re.compile(
    r"(?<![A-Za-z0-9])(?:sk-[A-Za-z0-9_-]{16,}|lsv2_[A-Za-z0-9_]{16,}|hf_[A-Za-z0-9]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16})")
_BEARER = re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}")


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the secret-named variables in ``environ`` (default: os.environ),
    longest first."""
    env = os.environ if environ is None else environ
    values = {v.strip() for k, v in env.items()
              if _SECRET_NAME.search(k.upper()) and len(v.strip()) >= MIN_SECRET_CHARS}
    return sorted(values, key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every secret in it replaced by ``[redacted]``."""
    for value in secret_values(environ):
        if value in text:
            text = text.replace(value, REDACTED)
    text = _KEY_SHAPES.sub(REDACTED, text)
    return _BEARER.sub(lambda m: m.group(1) + REDACTED, text)


__all__ = ["redact", "secret_values", "REDACTED"]
