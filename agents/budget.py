"""The context budget: every prompt fits the model's window, with room for the reply.

A role's *window* (tokens) comes, in order, from ``Context.context_tokens`` (one number
for every role, or ``{"role": tokens}``), ``POISE_CONTEXT_TOKENS``, the model server
(``GET {OPENAI_BASE_URL}/models``: vLLM's ``max_model_len``, llama.cpp's ``n_ctx``
(``meta.n_ctx_train``), OpenRouter-style ``context_length``), a table of known hosted
models, else ``DEFAULT_WINDOW``, a size every current chat model serves. The prompt may
use the window less ``REPLY_TOKENS[role]``, kept for the answer.

Tokens are estimated from characters (``chars_per_token``, 3.0 by default: pessimistic
for English and code, so an estimate is rarely short). A server that still answers
"over the context" (HTTP 400, as vLLM and llama.cpp do) raises ``ContextOverflow``; the
role rebuilds its prompt under the window the server named, with the characters per
token the server's count implies, at most ``MAX_REFITS`` times.

Each role builds its prompt at trim *levels* (0: everything; higher: fewer reflections,
references and feedback, shorter code), and ``fit`` takes the first level that fits;
even the last level over budget is ``ContextBudgetError``, a one-line reason.
"""
from __future__ import annotations

import json
import math
import os
import re
import urllib.request
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Callable, Sequence

from langchain_core.messages import BaseMessage

DEFAULT_WINDOW = 8192
MIN_WINDOW = 1024
CHARS_PER_TOKEN = 3.0
MESSAGE_OVERHEAD = 8          # template tokens per message
MAX_REFITS = 2
REPLY_TOKENS = {"scientist": 1200, "coder": 1600, "analyst": 700, "verifier": 600,
                "objective": 400, "steer": 400}
KNOWN_WINDOWS = {"gpt-5": 400_000, "gpt-4.1": 1_047_576, "gpt-4o": 128_000,
                 "o3": 200_000, "o4-mini": 200_000, "claude": 200_000}


class ContextBudgetError(ValueError):
    """A prompt cannot be made to fit the model's window."""


class ContextOverflow(RuntimeError):
    """The server refused a request as over its context window."""

    def __init__(self, message: str, window: int | None, prompt_tokens: int | None):
        super().__init__(message)
        self.window, self.prompt_tokens = window, prompt_tokens


@dataclass(frozen=True)
class Budget:
    window: int
    reply: int
    chars_per_token: float = CHARS_PER_TOKEN
    source: str = "default"

    @property
    def prompt_tokens(self) -> int:
        return max(256, self.window - self.reply)

    def tokens(self, messages: Sequence[BaseMessage | tuple[str, str]]) -> int:
        chars = sum(len(_content(m)) for m in messages)
        return math.ceil(chars / self.chars_per_token) + MESSAGE_OVERHEAD * len(messages)

    def chars_left(self, messages: Sequence[Any]) -> int:
        """Characters that may still be added to ``messages``."""
        return max(0, int((self.prompt_tokens - self.tokens(messages) - MESSAGE_OVERHEAD)
                          * self.chars_per_token))

    def learned(self, overflow: ContextOverflow, sent: Sequence[Any]) -> "Budget":
        """This budget corrected by what the server said about a refused request."""
        window = overflow.window or self.window
        if window > self.window:   # never trust a refusal to grow the window
            window = self.window
        cpt = self.chars_per_token
        if overflow.prompt_tokens:
            chars = sum(len(_content(m)) for m in sent)
            cpt = min(cpt, 0.9 * chars / overflow.prompt_tokens)
        else:
            cpt = cpt * 0.7
        reply = min(self.reply, window // 3)
        return replace(self, window=window, reply=reply, chars_per_token=max(cpt, 0.5),
                       source=f"the server's refusal ({window} tokens)")


def _content(m: Any) -> str:
    if isinstance(m, tuple):
        return str(m[1])
    content = getattr(m, "content", m)
    return content if isinstance(content, str) else str(content)


# ----------------------------------------------------------------------------- the window

def budget_for(role: str, ctx: Any = None, model: Any = None) -> Budget:
    """The budget of ``role``'s prompts (see the module docstring)."""
    reply = REPLY_TOKENS.get(role, 800)
    explicit = getattr(ctx, "context_tokens", None) if ctx is not None else None
    if isinstance(explicit, dict):
        explicit = explicit.get(role) or explicit.get("default")
    if explicit:
        return _sized(int(explicit), reply, "the run's context_tokens")
    env = os.environ.get("POISE_CONTEXT_TOKENS", "").strip()
    if env:
        try:
            return _sized(int(env), reply, "POISE_CONTEXT_TOKENS")
        except ValueError:
            raise ContextBudgetError(f"POISE_CONTEXT_TOKENS={env!r} is not a number of "
                                     "tokens") from None
    from agents.calls import model_id

    name = model_id(model).split(":", 1)[-1] if model is not None else ""
    served = server_window(os.environ.get("OPENAI_BASE_URL", ""), name) \
        if _served_over_openai(model) else None
    if served:
        return _sized(served, reply, "the model server")
    for prefix, window in sorted(KNOWN_WINDOWS.items(), key=lambda kv: -len(kv[0])):
        if name.lower().startswith(prefix):
            return _sized(window, reply, "the known-models table")
    return _sized(DEFAULT_WINDOW, reply, "the default")


def _sized(window: int, reply: int, source: str) -> Budget:
    window = max(MIN_WINDOW, window)
    return Budget(window=window, reply=min(reply, window // 3), source=source)


def _served_over_openai(model: Any) -> bool:
    from agents.calls import model_id

    return model is not None and model_id(model).startswith("openai:") and \
        bool(os.environ.get("OPENAI_BASE_URL", "").strip())


@lru_cache(maxsize=32)
def server_window(base_url: str, model: str, timeout_s: float = 3.0) -> int | None:
    """The context window ``base_url``'s ``/models`` lists for ``model`` (or for its only
    model), or None when it says nothing (or cannot be asked)."""
    if not base_url:
        return None
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models",
                                    timeout=timeout_s) as r:
            data = json.loads(r.read(1_000_000))
    except (OSError, ValueError):
        return None
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return None
    matching = [e for e in entries if isinstance(e, dict) and e.get("id") == model] or \
        ([entries[0]] if len(entries) == 1 and isinstance(entries[0], dict) else [])
    for e in matching:
        meta = e.get("meta") if isinstance(e.get("meta"), dict) else {}
        for value in (e.get("max_model_len"), e.get("context_length"),
                      e.get("context_window"), meta.get("n_ctx"), meta.get("n_ctx_train")):
            if isinstance(value, int) and value > 0:
                return value
    return None


# ----------------------------------------------------------------------------- overflow

_WINDOW = re.compile(r"(?:maximum context length|context (?:size|window|length)|n_ctx)"
                     r"[^0-9]{0,40}?(\d{3,7})", re.IGNORECASE)
_REQUESTED = re.compile(r"(?:requested|request has|prompt (?:has|is)|resulted in|"
                        r"input (?:has|is)?)\s*(?:about\s*)?(\d{2,8})\s*tokens",
                        re.IGNORECASE)
_OVERFLOW = re.compile(r"context length|context size|context window|n_ctx|"
                       r"too many tokens|maximum context|exceeds? the (?:available )?context",
                       re.IGNORECASE)


def overflow_from(error: BaseException) -> ContextOverflow | None:
    """The ``ContextOverflow`` an exception from a model call stands for, if it is one
    (a 400 whose message talks about the context), with the window and prompt size the
    message names."""
    text = str(error)
    status = getattr(error, "status_code", None) or getattr(
        getattr(error, "response", None), "status_code", None)
    if status not in (None, 400, 413) or not _OVERFLOW.search(text):
        return None
    w = _WINDOW.search(text)
    p = _REQUESTED.search(text)
    window = int(w.group(1)) if w else None
    prompt = int(p.group(1)) if p else None
    return ContextOverflow(text[:300], window, prompt)


# ----------------------------------------------------------------------------- fitting

Build = Callable[[int], list]


def fit(build: Build, levels: int, budget: Budget, what: str) -> list:
    """The prompt ``build(level)`` of the first level in ``range(levels)`` that fits."""
    for level in range(levels):
        prompt = build(level)
        if budget.tokens(prompt) <= budget.prompt_tokens:
            return prompt
    raise ContextBudgetError(
        f"{what}: even the smallest prompt is ~{budget.tokens(prompt):,} tokens, over the "
        f"budget of {budget.prompt_tokens:,} ({budget.window:,}-token window from "
        f"{budget.source}, less {budget.reply:,} for the reply); set context_tokens "
        "(--config) or POISE_CONTEXT_TOKENS to the model's real window, or use a larger "
        "model")


def ask(build: Build, levels: int, budget: Budget | None, what: str,
        send: Callable[[list, Budget | None], Any]) -> Any:
    """``send(prompt, budget)`` with the prompt fitted to ``budget`` (None: level 0, no
    budget); a ``ContextOverflow`` from the server refits under what it said."""
    if budget is None:
        return send(build(0), None)
    for attempt in range(MAX_REFITS + 1):
        prompt = fit(build, levels, budget, what)
        try:
            return send(prompt, budget)
        except ContextOverflow as e:
            if attempt == MAX_REFITS:
                raise
            budget = budget.learned(e, getattr(e, "sent", prompt))
    raise AssertionError("unreachable")


__all__ = ["Budget", "budget_for", "fit", "ask", "ContextBudgetError", "ContextOverflow",
           "overflow_from", "server_window", "REPLY_TOKENS", "DEFAULT_WINDOW"]
