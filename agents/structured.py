"""Structured replies from any chat model: plain chat, parse, validate, repair.

Provider-native structured output is not used: local OpenAI-compatible servers often lack
it, and plain chat + parse works everywhere. ``invoke_structured`` appends the JSON
schema to the request, extracts one JSON object from the reply (bare, in a ```json
fence, or with prose around it), validates it with pydantic and, when anything is wrong,
sends the model a repair message that says exactly what (the JSON error, or each
validation error with its field), at most ``max_repairs`` times; then it raises
``AgentOutputError`` with the last problem. ``invoke_parsed`` is the same loop for any
parser, e.g. ``extract_python_code`` for the coder. A call that fails outright
(network, authentication) raises ``ModelCallError``, its message free of secrets.

Whatever the reply, a call ends in a valid value or ``AgentOutputError`` after at most
``1 + max_repairs`` model calls: a bad reply of any shape (too deep, a number too long,
invalid unicode, a runaway length) is a ``ReplyError`` for the model, never another
exception. Each repair turn echoes at most ``ECHO_CHARS`` of the reply and
``PROBLEM_CHARS`` of the problem, so prompts stay bounded. Lone UTF-16 surrogates and NUL
characters in a reply become U+FFFD: they cannot be stored (SQLite/PostgreSQL) or sent
back to a server as UTF-8. Parsing is linear in the reply's length.
"""
from __future__ import annotations

import json
import re
from typing import Annotated, Any, Callable, Sequence, TypeVar

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import AfterValidator, BaseModel, ValidationError

from agents.redact import redact
from agents.text import reply_text, storable
from trainers.source import compile_source

MAX_REPLY_CHARS = 200_000   # a longer reply is runaway generation, not an answer
ECHO_CHARS = 4_000          # how much of a bad reply goes back into the conversation
PROBLEM_CHARS = 2_000       # how much of what was wrong goes back (and into the error)
MAX_LISTED_ERRORS = 8       # validation errors listed in one repair message

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# A reasoning model's scratch work opens the reply; "<think>" later on is content (a
# proposal may well be about think tags) and stays.
_THINK = re.compile(r"\A\s*<think>.*?(</think>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE_OPEN = re.compile(r"[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)")
_FENCE_CLOSE = re.compile(r"[ \t]*```[ \t]*")
_PYTHON_TAGS = {"python", "py", "python3"}


def _nonblank(value: str) -> str:
    value = value.strip()  # Python's notion of whitespace, as the archive checks it
    if not value:
        raise ValueError("must contain text, not only whitespace")
    return value


NonBlank = Annotated[str, AfterValidator(_nonblank)]
"""A required text field of a reply: stripped, and refused when only whitespace."""


class AgentOutputError(RuntimeError):
    """A model gave no usable reply within the bounded repairs. ``problems`` lists what
    was wrong with each attempt, the last one last."""

    def __init__(self, what: str, problems: list[str]):
        super().__init__(f"{what}: no usable reply after {len(problems)} attempt(s); "
                         f"last problem: {problems[-1] if problems else 'none'}")
        self.what = what
        self.problems = problems


class ModelCallError(RuntimeError):
    """The chat-model call itself failed (network, authentication, server error), after
    the client's own retries. The message names the original error type and carries its
    message with secrets redacted (agents/redact.py); the original exception is not
    chained, since its text may hold the API key that a server echoed."""


class ReplyError(ValueError):
    """What is wrong with one reply, phrased for the model that wrote it."""


# ----------------------------------------------------------------------------- replies

def _clean_reply(text: str) -> str:
    if len(text) > MAX_REPLY_CHARS:
        raise ReplyError(f"the reply is {len(text):,} characters long, over the "
                         f"{MAX_REPLY_CHARS:,}-character cap; reply with only what was "
                         "asked, nothing else")
    text = _THINK.sub("", storable(text), count=1).strip()
    if not text:
        raise ReplyError("the reply was empty")
    return text


def _storable_value(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_storable_value(v) for v in value]
    if isinstance(value, dict):
        return {storable(k): _storable_value(v) for k, v in value.items()}
    return value


def code_fences(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of each closed ``` fenced block, in one pass over the lines.

    An opening line is ```` ```tag ```` (anything may follow the tag); the block ends at
    the next line that is only ```` ``` ````. A block never closed is not returned."""
    lines = text.split("\n")
    closes = [i for i, line in enumerate(lines) if _FENCE_CLOSE.fullmatch(line)]
    fences, c, i = [], 0, 0
    while i < len(lines) - 1:
        opened = _FENCE_OPEN.match(lines[i])
        if opened is None:
            i += 1
            continue
        while c < len(closes) and closes[c] <= i:
            c += 1
        if c == len(closes):
            break  # never closed, nor is any block opened after it
        end = closes[c]
        fences.append((opened.group(1), "".join(f"{line}\n" for line in lines[i + 1:end])))
        i = end + 1
    return fences


# ----------------------------------------------------------------------------- JSON

def extract_json(text: str) -> dict:
    """The one JSON object in ``text``: the whole reply, a ```json fence, or an object
    with prose around it. Raises ``ReplyError`` saying what is wrong."""
    text = _clean_reply(text)
    if text[0] in "{[":
        try:
            return _as_object(_loads(text))
        except json.JSONDecodeError:
            pass  # prose or a second object after it: search below
    for tag, body in code_fences(text):
        if tag.lower() in ("json", ""):
            try:
                return _as_object(_loads(body))
            except (json.JSONDecodeError, ReplyError):
                continue
    found, first_error = [], None
    for start, end, closed in _brace_spans(text):
        try:
            value = _loads(text[start:end])
        except json.JSONDecodeError as e:
            if first_error is None and (not closed or '"' in text[start:end]):
                first_error = (e, closed)  # prose like "{x}" is no attempt at JSON
            continue
        if isinstance(value, dict):
            found.append(value)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ReplyError(f"the reply holds {len(found)} separate JSON objects; reply with "
                         "exactly one")
    if first_error is None:
        raise ReplyError("no JSON object found in the reply")
    e, closed = first_error
    hint = "" if closed else " (the object is never closed: was the reply cut off?)"
    raise ReplyError(f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno}){hint}")


def _loads(text: str) -> Any:
    """``json.loads``, whose other failures (nesting too deep for the parser, an integer
    too long to convert) read as ``JSONDecodeError`` too; strings made storable."""
    try:
        return _storable_value(json.loads(text))
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("the JSON is nested too deeply", text, 0) from None
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) ..."
        raise json.JSONDecodeError(str(e).split(";")[0], text, 0) from None


def _as_object(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ReplyError(f"the JSON is a {type(value).__name__}, not an object")
    return value


def _brace_spans(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, closed) of each top-level {...} span, string-aware, in one pass; an
    unclosed span runs to the end. Objects nested in a span are part of it, so a
    truncated object never yields one of its inner objects."""
    spans, depth, start, in_str, escaped = [], 0, 0, False, False
    for i, c in enumerate(text):
        if depth == 0:
            if c == "{":
                depth, start = 1, i
        elif in_str:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1, True))
    if depth > 0:
        spans.append((start, len(text), False))
    return spans


def validation_problems(error: ValidationError) -> str:
    """Each pydantic error as 'field: message (got value)', one per line."""
    errors = error.errors()
    lines = []
    for err in errors[:MAX_LISTED_ERRORS]:
        loc = ".".join(str(p) for p in err.get("loc", ()))[:80] or "(the object)"
        got = err.get("input")
        shown = "" if err.get("type") == "missing" else f" (got {_short(got)})"
        lines.append(f"- {loc}: {str(err.get('msg', 'invalid'))[:200]}{shown}")
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"- ... and {len(errors) - MAX_LISTED_ERRORS} more errors")
    return "\n".join(lines)


def _short(value: Any, limit: int = 120) -> str:
    try:
        text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    except (RecursionError, ValueError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def schema_instructions(schema: type[BaseModel]) -> str:
    return ("Reply with exactly one JSON object, and nothing else, that validates against "
            "this JSON schema:\n```json\n"
            + json.dumps(schema.model_json_schema(), separators=(",", ":")) + "\n```")


def parse_model(text: str, schema: type[M], check: Callable[[M], None] | None = None) -> M:
    """``text`` -> a validated ``schema`` instance; ``check`` may raise ``ValueError``
    for a problem the schema cannot express (e.g. a name already taken)."""
    data = extract_json(text)
    try:
        value = schema.model_validate(data)
    except ValidationError as e:
        raise ReplyError(f"the JSON does not match the schema:\n{validation_problems(e)}") \
            from None
    if check is not None:
        try:
            check(value)
        except ValueError as e:
            raise ReplyError(str(e)) from None
    return value


# ----------------------------------------------------------------------------- code

def extract_python_code(text: str) -> str:
    """The module in the reply's one ```python fence; it must compile.
    Raises ``ReplyError`` telling the model to use a ```python fence."""
    text = _clean_reply(text)
    fences = code_fences(text)
    python = [body for tag, body in fences if tag.lower() in _PYTHON_TAGS]
    if not python:
        if fences:
            tags = sorted({tag[:20] or "(no language)" for tag, _ in fences})[:5]
            raise ReplyError(f"the reply has a code block tagged {', '.join(tags)}, not "
                             "python; put the complete module in one ```python fenced block")
        if re.search(r"^[ \t]*```", text, re.MULTILINE):
            raise ReplyError("the ``` code block is not closed (was the reply cut off?); "
                             "put the complete module in one closed ```python fenced block")
        raise ReplyError("no code block found; put the complete module in one ```python "
                         "fenced block")
    if len(python) > 1:
        raise ReplyError(f"the reply has {len(python)} ```python blocks; put the complete "
                         "module in exactly one")
    code = python[0].strip("\n") + "\n"
    try:
        compile_source(code)
    except SyntaxError as e:
        where = f"line {e.lineno}: " if e.lineno else ""
        raise ReplyError(f"the module does not parse: {where}{e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        # CPython's parser gives up on deep nesting with MemoryError/RecursionError
        raise ReplyError(f"the module does not compile: {type(e).__name__}: "
                         f"{str(e)[:200] or 'nested too deeply'}") from None
    return code


# ----------------------------------------------------------------------------- the loop

Messages = Sequence[BaseMessage | tuple[str, str]]


def invoke_parsed(model: Any, messages: Messages, parse: Callable[[str], T], *,
                  what: str, retry_hint: str, max_repairs: int = 2,
                  budget: Any = None) -> T:
    """Call ``model``, ``parse`` its reply; on ``ReplyError`` tell the model what was wrong
    and ask again, at most ``max_repairs`` times, then raise ``AgentOutputError``.

    A repair *replaces* the previous failed turn: the request is always the prompt plus
    at most one failed reply and what was wrong with it, so it never grows past the
    prompt's size plus ``ECHO_CHARS + PROBLEM_CHARS`` (less, to fit ``budget``, an
    ``agents.budget.Budget``). A server refusing the prompt as over its context raises
    ``agents.budget.ContextOverflow`` (the caller refits the prompt)."""
    base = [_as_message(m) for m in messages]
    history = list(base)
    problems: list[str] = []
    for attempt in range(max_repairs + 1):
        text = reply_text(_call(model, history, what))
        try:
            return parse(text)
        except ReplyError as e:
            problems.append(_cap(str(e), PROBLEM_CHARS))
        repair = (f"Your previous reply could not be used: {problems[-1]}\n\n{retry_hint}")
        room = ECHO_CHARS if budget is None else \
            min(ECHO_CHARS, budget.chars_left(base) - len(repair))
        echo = _cap(storable(text), max(200, room))
        history = base + [AIMessage(content=echo or "(empty reply)"),
                          HumanMessage(content=repair)]
    raise AgentOutputError(what, problems)


def _call(model: Any, history: list[BaseMessage], what: str) -> Any:
    from agents.budget import overflow_from
    from agents.calls import ReplayError, call

    try:
        return call(model, history)
    except ReplayError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised, typed, with secrets redacted
        overflow = overflow_from(e)
        message = redact(f"{type(e).__name__}: {e}")
    if overflow is not None:
        overflow.sent = history
        raise overflow
    raise ModelCallError(f"{what}: the model call failed: {_cap(message, PROBLEM_CHARS)}")


def invoke_structured(model: Any, messages: Messages, schema: type[M], *,
                      max_repairs: int = 2, check: Callable[[M], None] | None = None,
                      budget: Any = None) -> M:
    """Ask ``model`` for one JSON object matching ``schema`` and return it validated.

    The schema is appended to the last user message (some chat templates reject two user
    turns in a row). Raises ``AgentOutputError`` after ``max_repairs`` failed repairs."""
    return invoke_parsed(
        model, with_schema(messages, schema), lambda text: parse_model(text, schema, check),
        what=schema.__name__, max_repairs=max_repairs, budget=budget,
        retry_hint="Reply again with only one JSON object that validates against the "
                   "schema given above.")


def with_schema(messages: Messages, schema: type[BaseModel]) -> list[BaseMessage]:
    """``messages`` with the schema's instructions appended to the last user message."""
    history = [_as_message(m) for m in messages]
    instructions = schema_instructions(schema)
    if history and isinstance(history[-1], HumanMessage) \
            and isinstance(history[-1].content, str):
        history[-1] = HumanMessage(content=history[-1].content + "\n\n" + instructions)
    else:
        history.append(HumanMessage(content=instructions))
    return history


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else \
        text[:limit] + f" [... {len(text) - limit:,} more characters cut]"


def _as_message(m: BaseMessage | tuple[str, str]) -> BaseMessage:
    if isinstance(m, BaseMessage):
        return m
    role, content = m
    if role == "system":
        return SystemMessage(content=content)
    if role in ("human", "user"):
        return HumanMessage(content=content)
    if role in ("ai", "assistant"):
        return AIMessage(content=content)
    raise ValueError(f"unknown message role {role!r}")


__all__ = ["invoke_structured", "invoke_parsed", "with_schema", "parse_model", "extract_json",
           "extract_python_code", "reply_text", "schema_instructions",
           "validation_problems", "code_fences", "storable", "NonBlank", "AgentOutputError",
           "ModelCallError", "ReplyError", "MAX_REPLY_CHARS", "ECHO_CHARS", "PROBLEM_CHARS"]
