"""The tests' stand-ins for language models, in one place, and the canonical candidate.

- ``ScriptedChat``: a LangChain chat model (a real ``BaseChatModel``: ``invoke``,
  callbacks, ``with_config`` work as with ChatOpenAI) answering from a list of replies
  (the last one repeats) or from a function of the prompt; ``calls`` keeps every prompt.
  Use it wherever a test hands a model object to an agent or the graph.
- ``OpenAIServer``: an OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 (an
  ephemeral port), for tests that run a CLI in a child process pointed at it with
  ``OPENAI_BASE_URL=server.base_url``. It answers ``respond(body, auth)`` (text, or an
  ``HTTPError``), optionally after a per-role delay, and records every request (path,
  body, Authorization header, agent role, when it came and whether it was answered);
  ``in_flight()`` says how many it is holding, so a test can kill a run during a call.
  ``OpenAIServer.scripted(reply)`` answers ``reply(role, body)``; the default,
  ``deterministic_reply``, is a valid answer for each agent derived from the request
  alone, so a killed and resumed run gets the same answers as an uninterrupted one.
- The canonical candidate: ``PROPOSAL`` (a valid LLM scientist reply: a length penalty
  on correct answers), ``proposal_reply``, ``CANDIDATE`` (its module, ``{name}`` to fill)
  and ``candidate_reply`` (the module in a fence, as the coder answers).
- ``LocalHTTPServer`` / ``send_json``: the plumbing, also used by test_tracing's
  LangSmith stand-in; ``closed_port``: a port with nothing listening.

Kept out of conftest.py on purpose: tests import it.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Sequence, Union

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

# ----------------------------------------------------------------------------- the candidate

PROPOSAL = {"name": "gated-length-grpo",
            "hypothesis": "Penalizing length only on correct answers shortens them "
                          "without paying wrong short answers.",
            "mechanism": "shape_reward: r = correct * (1 - alpha * length / max_length)",
            "math": "r_i = 1[c_i] (1 - 0.3 L_i / L_max)",
            "changes": ["shape_reward"], "crossover_with": None, "rationale": []}

CANDIDATE = '''NAME = "{name}"
ALPHA = {alpha}


def shape_reward(batch):
    frac = batch.length.float() / batch.max_length
    return batch.correct.float() * (1.0 - ALPHA * frac)
'''


def proposal_reply(**fields: Any) -> str:
    """The scientist's JSON reply: ``PROPOSAL`` with ``fields`` replaced."""
    return json.dumps({**PROPOSAL, **fields})


def candidate_code(name: str = PROPOSAL["name"], alpha: float | str = 0.3) -> str:
    return CANDIDATE.format(name=name, alpha=alpha)


def candidate_reply(name: str = PROPOSAL["name"], alpha: float | str = 0.3) -> str:
    """The coder's reply: the candidate module in one python fence."""
    return f"```python\n{candidate_code(name, alpha)}```"


# ----------------------------------------------------------------------------- chat model

Respond = Callable[[list[BaseMessage]], str]


class ScriptedChat(BaseChatModel):
    """``replies``: answers in order, the last repeated once they run out (no replies:
    empty answers). ``respond``, when given, computes each answer from the prompt
    instead. ``calls`` holds the messages of every call, in order."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    replies: list[str] = Field(default_factory=list)
    respond: Any = None
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    lock: Any = Field(default_factory=threading.Lock, exclude=True)

    @classmethod
    def of(cls, *replies: str) -> "ScriptedChat":
        return cls(replies=list(replies))

    @classmethod
    def answering(cls, respond: Respond) -> "ScriptedChat":
        return cls(respond=respond)

    @property
    def _llm_type(self) -> str:
        return "poise-scripted"

    def _generate(self, messages: list[BaseMessage], stop: Sequence[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        with self.lock:
            index = len(self.calls)
            self.calls.append(list(messages))
        if self.respond is not None:
            text = self.respond(list(messages))
        elif self.replies:
            text = self.replies[min(index, len(self.replies) - 1)]
        else:
            text = ""
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def prompt_chars(messages: Sequence[BaseMessage]) -> int:
    """Characters sent in one call (all message contents)."""
    return sum(len(m.content) if isinstance(m.content, str) else len(str(m.content))
               for m in messages)


def last_human(call: Sequence[BaseMessage]) -> str:
    """The last user message of one recorded call."""
    return [m for m in call if m.type == "human"][-1].content


# ----------------------------------------------------------------------------- HTTP plumbing

class LocalHTTPServer:
    """``handler`` served on 127.0.0.1 once started; ``close`` (or leaving the ``with``
    block) shuts it down and waits for the serving thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "LocalHTTPServer":
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def send_json(handler: BaseHTTPRequestHandler, status: int, payload) -> None:
    out = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(out)))
    handler.end_headers()
    handler.wfile.write(out)


def closed_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the server

@dataclass
class HTTPError:
    status: int
    body: dict


ServerRespond = Callable[[dict, Union[str, None]], Union[str, HTTPError]]


def completion(model: str, content: str, usage: tuple[int, int] | None = (1, 1)) -> dict:
    """A chat completion; ``usage`` (prompt, completion tokens), None: no usage field."""
    out = {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
           "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content}}]}
    if usage is not None:
        out["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                        "total_tokens": usage[0] + usage[1]}
    return out


_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: each word and each punctuation mark is a token (close to a
    BPE tokenizer on code and JSON, a little above it on English)."""
    return len(_TOKEN.findall(text))


def request_tokens(body: dict) -> int:
    """The prompt tokens of a chat request, as a server with ``count_tokens`` counts
    them (message contents plus 4 per message for the chat template)."""
    return sum(count_tokens(str(m.get("content") or "")) + 4
               for m in body.get("messages", []))


ROLE_OPENINGS = (("objective", "turn it into the run's objective spec"),
                 ("scientist", "You are the scientist of POISE"),
                 ("coder", "You are the coder of POISE"),
                 ("judge", "You are the consistency judge of POISE"),
                 ("analyst", "You are the analyst of POISE"))


def role_of(body: dict) -> str:
    """Which POISE agent sent a request, from its system prompt (agents/prompts):
    objective, scientist, coder, judge, analyst, or unknown."""
    system = next((m.get("content") or "" for m in body.get("messages", [])
                   if m.get("role") == "system"), "")
    return next((role for role, opening in ROLE_OPENINGS if opening in system), "unknown")


class OpenAIServer:
    """``/v1/chat/completions`` answered by ``respond(body, auth)``, after
    ``delay_s`` (seconds, or ``role -> seconds``)."""

    def __init__(self, respond: ServerRespond,
                 delay_s: float | Callable[[str], float] = 0.0,
                 usage: Callable[[dict, str], tuple[int, int] | None] | None = None,
                 models: dict | None = None):
        """``usage(body, reply)``: the (prompt, completion) tokens the reply reports
        (default 1, 1; None: no usage field); ``models``: the ``GET /v1/models`` body
        (default: 404, as servers that do not list models)."""
        self.respond, self.delay_s = respond, delay_s
        self.usage = usage or (lambda body, reply: (1, 1))
        self.models = models
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self._holding = 0
        self.http = LocalHTTPServer(self._handler())

    @classmethod
    def scripted(cls, reply: Callable[[str, dict], Union[str, "HTTPError"]] | None = None,
                 delay_s: float | Callable[[str], float] = 0.0, **options: Any
                 ) -> "OpenAIServer":
        """A server whose answers are ``reply(role, body)`` (``deterministic_reply``);
        ``options``: ``usage``, ``models`` as for the constructor."""
        reply = reply or deterministic_reply
        return cls(lambda body, _auth: reply(role_of(body), body), delay_s=delay_s,
                   **options)

    @property
    def base_url(self) -> str:
        return f"{self.http.url}/v1"

    def in_flight(self) -> int:
        with self.lock:
            return self._holding

    def start(self) -> "OpenAIServer":
        self.http.start()
        return self

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _delay(self, role: str) -> float:
        return self.delay_s(role) if callable(self.delay_s) else float(self.delay_s)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                if self.path == "/v1/models" and server.models is not None:
                    send_json(self, 200, server.models)
                else:
                    send_json(self, 404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                record = {"path": self.path, "body": body,
                          "auth": self.headers.get("Authorization"), "role": role_of(body),
                          "received": time.time()}
                with server.lock:
                    server.requests.append(record)
                    server._holding += 1
                try:
                    if self.path != "/v1/chat/completions":
                        send_json(self, 404, {"error": {"message": f"no route {self.path}"}})
                        return
                    time.sleep(server._delay(record["role"]))
                    try:
                        reply = server.respond(body, record["auth"])
                    except Exception as e:  # noqa: BLE001 - a test bug: tell the client
                        send_json(self, 500, {"error": {"message": f"test server: {e!r}"}})
                        return
                    if isinstance(reply, HTTPError):
                        send_json(self, reply.status, reply.body)
                    else:
                        send_json(self, 200, completion(body.get("model", "m"), reply,
                                                        server.usage(body, reply)))
                    record["answered"] = time.time()
                except (BrokenPipeError, ConnectionResetError):
                    record["dropped"] = True   # the client went away (killed) mid-call
                finally:
                    with server.lock:
                        server._holding -= 1

            def log_message(self, *args):
                pass

        return Handler


# ----------------------------------------------------------------------------- scripted agents

def _user_text(body: dict) -> str:
    return "\n".join(str(m.get("content") or "") for m in body.get("messages", [])
                     if m.get("role") == "user")


def deterministic_reply(role: str, body: dict) -> str:
    """A valid answer for each agent, derived from the request only: the scientist
    proposes the canonical length penalty under a fresh name, its weight set by how many
    names are taken; the coder writes it; the judge and the analyst agree."""
    text = _user_text(body)
    if role == "objective":
        concise = re.search(r"concise|short", text) is not None
        return json.dumps({"directive": "x", "length": "minimize" if concise else "ignore",
                           "margin": 1.0})
    if role == "scientist":
        taken = re.search(r'<data name="taken_names">\n(.*?)\n</data>', text, re.DOTALL)
        n = len(re.findall(r'"[a-z0-9-]+"', taken.group(1))) if taken else 0
        return proposal_reply(
            name=f"llm-len-{n}", hypothesis="penalize length of correct answers",
            mechanism="the reward penalizes length on correct answers only",
            math=f"r_i = c_i * (1 - {0.05 * (n + 1):.2f} * L_i / L_max)")
    if role == "coder":
        name = re.search(r'"name": "([a-z0-9-]+)"', text)
        alpha = re.search(r"\(1 - ([0-9.]+) \*", text)
        return candidate_reply(name.group(1) if name else "llm-len",
                               alpha.group(1) if alpha else "0.1")
    if role == "judge":
        return json.dumps({"consistent": True, "reason": "the reward matches the math"})
    if role == "analyst":
        return json.dumps({"text": "Length fell on correct answers; accuracy held.",
                           "tags": ["length-collapse"]})
    return "I do not know this request."


__all__ = ["ScriptedChat", "OpenAIServer", "HTTPError", "LocalHTTPServer", "PROPOSAL",
           "CANDIDATE", "proposal_reply", "candidate_code", "candidate_reply",
           "deterministic_reply", "role_of", "completion", "send_json", "closed_port",
           "count_tokens", "request_tokens",
           "prompt_chars", "last_human"]
