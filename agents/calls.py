"""Every LLM call, recorded: tokens, cost, the reply cache, and replays.

``call(model, messages)`` is how the agents reach a model (agents/structured.py calls it
for every request). Inside a ``scope`` (the graph's nodes open one per role and
candidate; a run's objective and a steering session open their own) each call is a row
of the run's *ledger*, ``<home>/llm_calls.db``:

- run, candidate key (``run:round:slot``), role, model string;
- input and output tokens from the provider's usage metadata (``usage_metadata`` /
  ``token_usage``), or estimated from the characters (``estimated=1``) when the reply has
  none; the cost from agents/prices.py (``priced=0`` when the model is not in the table);
- the prompt, its hash (model + parameters + every message) and the reply.

The ledger is also the *reply cache*: a call whose (run, candidate key, role, prompt
hash, occurrence) is already recorded gets the recorded reply and is not sent again, so
a resumed run never pays twice for the same call (the cached row costs 0 and is marked
``cached=1``); ``occurrence`` counts identical prompts within the scope. And it is what
``--replay`` reads: ``ReplayChat`` answers, in order, the replies recorded for the same
candidate slot and role in the run being replayed, with no model server at all.
"""
from __future__ import annotations

import contextvars
import hashlib
import json
import math
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

from agents.prices import cost as price_cost
from agents.text import reply_text, storable

LEDGER_FILE = "llm_calls.db"
CHARS_PER_TOKEN = 4.0   # the estimate for a reply without usage metadata (marked estimated)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER, key TEXT, role TEXT, model TEXT,
    prompt_hash TEXT, occurrence INTEGER,
    input_tokens INTEGER, output_tokens INTEGER, estimated INTEGER,
    cost_usd REAL, priced INTEGER, cached INTEGER,
    prompt TEXT, reply TEXT, error TEXT, created REAL);
CREATE INDEX IF NOT EXISTS calls_scope ON calls (run_id, key, role);
"""


class Ledger:
    """The LLM calls of every run in a home (thread-safe; one SQLite file)."""

    def __init__(self, home: str | Path):
        self.path = Path(home) / LEDGER_FILE
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._seen: dict[tuple, int] = {}   # (run, key, role, hash) -> occurrences so far

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def occurrence(self, run_id, key, role, prompt_hash) -> int:
        with self._lock:
            k = (run_id, key, role, prompt_hash)
            n = self._seen.get(k, 0)
            self._seen[k] = n + 1
            return n

    def cached(self, run_id, key, role, prompt_hash, occurrence) -> dict | None:
        with self._lock:
            row = self._db().execute(
                "SELECT reply, input_tokens, output_tokens FROM calls WHERE run_id IS ? "
                "AND key IS ? AND role=? AND prompt_hash=? AND occurrence=? AND cached=0 "
                "AND error IS NULL ORDER BY id LIMIT 1",
                (run_id, key, role, prompt_hash, occurrence)).fetchone()
        return None if row is None else {"reply": row[0], "input_tokens": row[1],
                                         "output_tokens": row[2]}

    def add(self, rows: Sequence[dict]) -> None:
        cols = ("run_id", "key", "role", "model", "prompt_hash", "occurrence",
                "input_tokens", "output_tokens", "estimated", "cost_usd", "priced",
                "cached", "prompt", "reply", "error", "created")
        with self._lock:
            db = self._db()
            with db:
                db.executemany(f"INSERT INTO calls ({', '.join(cols)}) VALUES "
                               f"({', '.join('?' * len(cols))})",
                               [tuple(r.get(c) for c in cols) for r in rows])

    def answered(self, run_id, key, role) -> int:
        """The calls of a scope answered by a model so far (not cached, not failed)."""
        if not self.path.is_file():
            return 0
        with self._lock:
            return self._db().execute(
                "SELECT COUNT(*) FROM calls WHERE run_id IS ? AND key IS ? AND role=? AND "
                "cached=0 AND error IS NULL", (run_id, key, role)).fetchone()[0]

    def rows(self, run_id: int, *, paid_only: bool = False) -> list[dict]:
        if not self.path.is_file():
            return []
        with self._lock:
            db = self._db()
            cur = db.execute("SELECT * FROM calls WHERE run_id=?" +
                             (" AND cached=0 AND error IS NULL" if paid_only else "") +
                             " ORDER BY id", (run_id,))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def totals(self, run_id: int) -> dict:
        """The run's calls summed: overall, by role and by candidate key. Cached replies
        count as calls but cost nothing (they were not sent)."""
        return totals(self.rows(run_id))


def totals(rows: Sequence[dict]) -> dict:
    def add(acc: dict, r: dict) -> None:
        acc["calls"] += 1
        acc["cached_calls"] += int(bool(r["cached"]))
        acc["failed_calls"] += int(r["error"] is not None)
        acc["estimated_calls"] += int(bool(r["estimated"]) and not r["cached"])
        acc["unpriced_calls"] += int(not r["priced"] and not r["cached"]
                                     and r["error"] is None)
        if not r["cached"]:
            acc["input_tokens"] += r["input_tokens"] or 0
            acc["output_tokens"] += r["output_tokens"] or 0
            acc["cost_usd"] += r["cost_usd"] or 0.0

    def zero() -> dict:
        return {"calls": 0, "cached_calls": 0, "failed_calls": 0, "estimated_calls": 0,
                "unpriced_calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}

    out, by_role, by_key = zero(), {}, {}
    for r in rows:
        add(out, r)
        add(by_role.setdefault(r["role"], zero()), r)
        add(by_key.setdefault(r["key"] or "-", zero()), r)
    out["tokens"] = out["input_tokens"] + out["output_tokens"]
    for d in (*by_role.values(), *by_key.values()):
        d["tokens"] = d["input_tokens"] + d["output_tokens"]
    return {**out, "by_role": by_role, "by_candidate": by_key}


# ----------------------------------------------------------------------------- scope

@dataclass
class Scope:
    """Where the calls made inside ``scope(...)`` are recorded. ``ledger`` None: the
    rows wait in ``pending`` (a run's objective is written before the run exists)."""
    ledger: Ledger | None
    run_id: int | None
    key: str | None
    role: str
    cache: bool = True
    pending: list[dict] = field(default_factory=list)


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("poise_llm_scope",
                                                                     default=None)
_ledgers: dict[str, Ledger] = {}
_ledgers_lock = threading.Lock()


def ledger_for(home: str | Path) -> Ledger:
    """One ledger per home per process."""
    with _ledgers_lock:
        key = str(Path(home).resolve())
        if key not in _ledgers:
            _ledgers[key] = Ledger(key)
        return _ledgers[key]


@contextmanager
def scope(ledger: Ledger | None, run_id: int | None, key: str | None, role: str, *,
          cache: bool = True) -> Iterator[Scope]:
    s = Scope(ledger, run_id, key, role, cache)
    token = _scope.set(s)
    try:
        yield s
    finally:
        _scope.reset(token)


def current_scope() -> Scope | None:
    return _scope.get()


# ----------------------------------------------------------------------------- the call

def model_id(model: Any) -> str:
    """The model string of a chat model: ``poise_model`` from agents.llm's metadata,
    else its own model name, else its type."""
    config = getattr(model, "config", None) or {}
    meta = config.get("metadata") or {}
    if meta.get("poise_model"):
        return str(meta["poise_model"])
    inner = getattr(model, "bound", model)
    for attr in ("model_name", "model", "model_id"):
        value = getattr(inner, attr, None)
        if isinstance(value, str) and value:
            return value
    return getattr(inner, "_llm_type", type(inner).__name__)


def _params(model: Any) -> str:
    inner = getattr(model, "bound", model)
    try:
        return inner._get_llm_string() if isinstance(inner, BaseChatModel) else repr(inner)
    except Exception:  # noqa: BLE001 - a model that cannot describe itself: its type
        return type(inner).__name__


def serialize(messages: Sequence[BaseMessage]) -> str:
    return json.dumps([[m.type, m.content] for m in messages], ensure_ascii=False)


def prompt_hash(model: Any, messages: Sequence[BaseMessage]) -> str:
    h = hashlib.sha256()
    for part in (model_id(model), _params(model), serialize(messages)):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def usage(message: Any, prompt: str, reply: str) -> tuple[int, int, bool]:
    """(input tokens, output tokens, estimated?) of a reply."""
    meta = getattr(message, "usage_metadata", None) or {}
    if meta.get("input_tokens") is not None and meta.get("output_tokens") is not None:
        return int(meta["input_tokens"]), int(meta["output_tokens"]), False
    info = (getattr(message, "response_metadata", None) or {}).get("token_usage") or {}
    if info.get("prompt_tokens") is not None and info.get("completion_tokens") is not None:
        return int(info["prompt_tokens"]), int(info["completion_tokens"]), False
    return estimate_tokens(prompt), estimate_tokens(reply), True


def call(model: Any, messages: Sequence[BaseMessage]) -> Any:
    """``model.invoke(messages)``, recorded in the current scope's ledger and answered
    from it when the same call was already made (see the module docstring)."""
    s = current_scope()
    if s is None:
        return model.invoke(list(messages))
    spec, prompt = model_id(model), serialize(messages)
    digest = prompt_hash(model, messages)
    ledger = s.ledger
    n = ledger.occurrence(s.run_id, s.key, s.role, digest) if ledger else 0
    row = {"run_id": s.run_id, "key": s.key, "role": s.role, "model": spec,
           "prompt_hash": digest, "occurrence": n, "prompt": prompt, "created": time.time()}
    if ledger is not None and s.cache:
        hit = ledger.cached(s.run_id, s.key, s.role, digest, n)
        if hit is not None:
            ledger.add([{**row, "input_tokens": hit["input_tokens"],
                         "output_tokens": hit["output_tokens"], "estimated": 0,
                         "cost_usd": 0.0, "priced": 1, "cached": 1, "reply": hit["reply"]}])
            return AIMessage(content=hit["reply"])
    try:  # LangSmith traces carry where the call belongs
        message = model.invoke(list(messages), config={"metadata": {
            "poise_run": s.run_id, "poise_candidate": s.key, "poise_role": s.role}})
    except Exception as e:
        _record(s, {**row, "input_tokens": 0, "output_tokens": 0, "estimated": 0,
                    "cost_usd": 0.0, "priced": 1, "cached": 0, "reply": None,
                    "error": f"{type(e).__name__}"})
        raise
    reply = storable(reply_text(message))
    tin, tout, estimated = usage(message, prompt, reply)
    usd, priced = price_cost(spec, tin, tout)
    _record(s, {**row, "input_tokens": tin, "output_tokens": tout,
                "estimated": int(estimated), "cost_usd": usd, "priced": int(priced),
                "cached": 0, "reply": reply})
    return message


def _record(s: Scope, row: dict) -> None:
    if s.ledger is None:
        s.pending.append(row)
    else:
        s.ledger.add([row])


# ----------------------------------------------------------------------------- caps

class BudgetStop(Exception):
    """A run stopped at a round boundary: the next candidate would pass an LLM cap
    (``--max-cost`` / ``--max-llm-tokens``). The graph's checkpoint stays before the
    round, so ``--resume`` with a raised cap continues from there."""

    def __init__(self, message: str, spent: dict):
        super().__init__(message)
        self.spent = spent


def capped_width(ledger: Ledger, run_id: int, width: int, *,
                 max_cost_usd: float | None = None, max_tokens: int | None = None) -> int:
    """How many of the next ``width`` candidates fit under the caps: what the run spent
    so far (every recorded call, the objective's included; between rounds no call is in
    flight) plus, per candidate, the most any earlier candidate used. Raises
    ``BudgetStop`` when not even one fits."""
    t = ledger.totals(run_id)
    per = [v for k, v in t["by_candidate"].items() if k.count(":") == 2]
    caps = [(max_cost_usd, t["cost_usd"], max([v["cost_usd"] for v in per], default=0.0),
             "--max-cost", lambda x: f"${x:.4f}"),
            (max_tokens, t["tokens"], max([v["tokens"] for v in per], default=0),
             "--max-llm-tokens", lambda x: f"{x:,.0f} tokens")]
    fits = width
    for cap, spent, each, flag, fmt in caps:
        if cap is None:
            continue
        n = 0 if spent >= cap else width if each <= 0 else int((cap - spent) // each)
        if n == 0:
            raise BudgetStop(
                f"LLM cap reached: spent {fmt(spent)} of {flag} {fmt(cap)}; the next "
                f"candidate would need about {fmt(each)}. Continue with: python -m "
                f"graph.run --resume {run_id} {flag} HIGHER", t)
        fits = min(fits, n)
    return fits


# ----------------------------------------------------------------------------- replay

class ReplayError(RuntimeError):
    """A replayed run asked for a call its recording does not hold."""


class ReplayChat(BaseChatModel):
    """A chat model that answers with the replies recorded for a run: the n-th call a
    candidate slot's role makes gets the n-th reply that slot's role received in the
    recorded run (same round and slot; the run id may differ). No server is called."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    recorded: dict = Field(default_factory=dict)   # (round:slot, role) -> [reply, ...]
    source_run: int = 0
    served: dict = Field(default_factory=dict)
    prompts_differ: list = Field(default_factory=list)
    lock: Any = Field(default_factory=threading.Lock, exclude=True)
    model_name: str = "replay"

    @classmethod
    def of_run(cls, ledger: Ledger, run_id: int) -> "ReplayChat":
        recorded: dict = {}
        for r in ledger.rows(run_id, paid_only=True):
            recorded.setdefault((_slot(r["key"]), r["role"]), []).append(
                (r["reply"], r["prompt_hash"], r["model"]))
        return cls(recorded=recorded, source_run=run_id)

    @property
    def _llm_type(self) -> str:
        return "poise-replay"

    def _generate(self, messages: list[BaseMessage], stop: Any = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        s = current_scope()
        where = (_slot(s.key) if s else None, s.role if s else None)
        with self.lock:  # the scope's answered calls so far: a resumed replay goes on
            n = s.ledger.answered(s.run_id, s.key, s.role) if s and s.ledger else \
                self.served.get(where, 0)
            self.served[where] = n + 1
        replies = self.recorded.get(where, [])
        if n >= len(replies):
            raise ReplayError(f"run {self.source_run}'s recording has {len(replies)} "
                              f"{where[1]} call(s) for slot {where[0]}; the replay asked "
                              f"for call {n + 1}: it diverged from the recorded run")
        reply, digest, model = replies[n]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=reply))])


def _slot(key: str | None) -> str | None:
    """'run:round:slot' -> 'round:slot' (a replay has its own run id); other keys as is."""
    if key and key.count(":") == 2:
        return key.split(":", 1)[1]
    return key


__all__ = ["Ledger", "ledger_for", "scope", "BudgetStop", "capped_width", "current_scope",
           "call", "Scope", "totals",
           "ReplayChat", "ReplayError", "model_id", "prompt_hash", "estimate_tokens",
           "LEDGER_FILE"]
