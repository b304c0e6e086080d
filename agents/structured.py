"""Structured replies from any chat model: plain chat, parse, validate, repair.

Provider-native structured output is not used: local OpenAI-compatible servers often lack
it, and plain chat + parse works everywhere. ``invoke_structured`` appends the JSON
schema to the request, extracts one JSON object from the reply (bare, in a ```json
fence, or with prose around it), validates it with pydantic and, when anything is wrong,
sends the model a repair message that says exactly what (the JSON error, or each
validation error with its field), at most ``max_repairs`` times; then it raises
``AgentOutputError`` with the last problem. ``invoke_parsed`` is the same loop for any
parser, e.g. ``extract_python_code`` for the coder.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Sequence, TypeVar

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ValidationError

from trainers.algorithm import compile_source

MAX_REPLY_CHARS = 200_000   # a longer reply is runaway generation, not an answer
ECHO_CHARS = 4_000          # how much of a bad reply goes back into the conversation

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

_THINK = re.compile(r"<think>.*?(</think>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$",
                    re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"python", "py", "python3"}


class AgentOutputError(RuntimeError):
    """A model gave no usable reply within the bounded repairs. ``problems`` lists what
    was wrong with each attempt, the last one last."""

    def __init__(self, what: str, problems: list[str]):
        super().__init__(f"{what}: no usable reply after {len(problems)} attempt(s); "
                         f"last problem: {problems[-1] if problems else 'none'}")
        self.what = what
        self.problems = problems


class ReplyError(ValueError):
    """What is wrong with one reply, phrased for the model that wrote it."""


# ----------------------------------------------------------------------------- replies

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


def _clean_reply(text: str) -> str:
    if len(text) > MAX_REPLY_CHARS:
        raise ReplyError(f"the reply is {len(text):,} characters long, over the "
                         f"{MAX_REPLY_CHARS:,}-character cap; reply with only what was "
                         "asked, nothing else")
    text = _THINK.sub("", text).strip()  # reasoning models' scratch work is not the answer
    if not text:
        raise ReplyError("the reply was empty")
    return text


# ----------------------------------------------------------------------------- JSON

def extract_json(text: str) -> dict:
    """The one JSON object in ``text``: the whole reply, a ```json fence, or an object
    with prose around it. Raises ``ReplyError`` saying what is wrong."""
    text = _clean_reply(text)
    if text[0] in "{[":
        try:
            return _as_object(json.loads(text))
        except json.JSONDecodeError:
            pass  # prose or a second object after it: search below
    for tag, body in _FENCE.findall(text):
        if tag.lower() in ("json", ""):
            try:
                return _as_object(json.loads(body))
            except (json.JSONDecodeError, ReplyError):
                continue
    found, first_error = [], None
    for start, end, closed in _brace_spans(text):
        try:
            value = json.loads(text[start:end])
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
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(the object)"
        got = err.get("input")
        shown = "" if err.get("type") == "missing" else f" (got {_short(got)})"
        lines.append(f"- {loc}: {err.get('msg', 'invalid')}{shown}")
    return "\n".join(lines)


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
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
    fences = _FENCE.findall(text)
    python = [body for tag, body in fences if tag.lower() in _PYTHON_TAGS]
    if not python:
        if fences:
            tags = sorted({tag or "(no language)" for tag, _ in fences})
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
        raise ReplyError(f"the module does not parse: line {e.lineno}: {e.msg}") from None
    return code


# ----------------------------------------------------------------------------- the loop

Messages = Sequence[BaseMessage | tuple[str, str]]


def invoke_parsed(model: Any, messages: Messages, parse: Callable[[str], T], *,
                  what: str, retry_hint: str, max_repairs: int = 2) -> T:
    """Call ``model``, ``parse`` its reply; on ``ReplyError`` tell the model what was wrong
    and ask again, at most ``max_repairs`` times, then raise ``AgentOutputError``."""
    history = [_as_message(m) for m in messages]
    problems: list[str] = []
    for attempt in range(max_repairs + 1):
        text = reply_text(model.invoke(history))
        try:
            return parse(text)
        except ReplyError as e:
            problems.append(str(e))
        echo = text if len(text) <= ECHO_CHARS else \
            text[:ECHO_CHARS] + f"\n[... {len(text) - ECHO_CHARS:,} more characters cut]"
        history += [AIMessage(content=echo or "(empty reply)"),
                    HumanMessage(content=f"Your previous reply could not be used: "
                                         f"{problems[-1]}\n\n{retry_hint}")]
    raise AgentOutputError(what, problems)


def invoke_structured(model: Any, messages: Messages, schema: type[M], *,
                      max_repairs: int = 2, check: Callable[[M], None] | None = None) -> M:
    """Ask ``model`` for one JSON object matching ``schema`` and return it validated.

    The schema is appended to the last user message (some chat templates reject two user
    turns in a row). Raises ``AgentOutputError`` after ``max_repairs`` failed repairs."""
    history = [_as_message(m) for m in messages]
    instructions = schema_instructions(schema)
    if history and isinstance(history[-1], HumanMessage) \
            and isinstance(history[-1].content, str):
        history[-1] = HumanMessage(content=history[-1].content + "\n\n" + instructions)
    else:
        history.append(HumanMessage(content=instructions))
    return invoke_parsed(
        model, history, lambda text: parse_model(text, schema, check),
        what=schema.__name__, max_repairs=max_repairs,
        retry_hint="Reply again with only one JSON object that validates against the "
                   "schema given above.")


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


__all__ = ["invoke_structured", "invoke_parsed", "parse_model", "extract_json",
           "extract_python_code", "reply_text", "schema_instructions",
           "validation_problems", "AgentOutputError", "ReplyError", "MAX_REPLY_CHARS"]
