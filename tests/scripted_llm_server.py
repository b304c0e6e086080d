"""A scripted OpenAI-compatible chat server on 127.0.0.1 for the crash, hostile-loop and
bad-input tests (no network, no key); tests/llm_server.py is the request-recording one.

    with LLMServer(reply=deterministic_reply, delay_s=0.0) as server:
        env["OPENAI_BASE_URL"] = server.url            # http://127.0.0.1:PORT/v1
        ...                                            # python -m graph.run --model openai:m
    server.requests                                    # every request: role, body, times

``reply(role, body) -> str`` writes the assistant message; ``role`` is read from the
system prompt (objective, scientist, coder, verifier, analyst). ``deterministic_reply``
answers from the request alone, so a killed and resumed run gets the same answers as an
uninterrupted one. ``delay_s`` (a number, or ``role -> seconds``) makes the server slow:
``in_flight()`` says how many requests are being held, so a test can kill a run during
an LLM call. Kept out of conftest.py on purpose: tests import it.
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Callable

from llm_server import completion
from local_http import LocalHTTPServer, send_json

ROLE_MARKERS = (("consistency judge", "verifier"), ("You are the analyst", "analyst"),
                ("You are the coder", "coder"), ("objective spec", "objective"),
                ("You are the scientist", "scientist"))


def role_of(body: dict) -> str:
    system = next((m.get("content") or "" for m in body.get("messages", [])
                   if m.get("role") == "system"), "")
    return next((role for marker, role in ROLE_MARKERS if marker in system), "unknown")


def _user_text(body: dict) -> str:
    return "\n".join(str(m.get("content") or "") for m in body.get("messages", [])
                     if m.get("role") == "user")


def deterministic_reply(role: str, body: dict) -> str:
    """A valid answer for each agent, derived from the request only."""
    text = _user_text(body)
    if role == "objective":
        directive = re.search(r"concise|short", text) is not None
        return json.dumps({"directive": "x", "length_weight": 0.2 if directive else 0.0,
                           "accuracy_tolerance": 1.0})
    if role == "scientist":
        taken = re.search(r"Names already taken \(yours must differ\): (.*)", text)
        n = len(re.findall(r"[a-z0-9-]+", taken.group(1))) if taken else 0
        return json.dumps({
            "name": f"llm-len-{n}", "hypothesis": "penalize length of correct answers",
            "mechanism": "the reward penalizes length on correct answers only",
            "math": f"r_i = c_i * (1 - {0.05 * (n + 1):.2f} * L_i / L_max)",
            "changes": ["shape_reward"], "crossover_with": None, "rationale": []})
    if role == "coder":
        name = re.search(r'"name": "([a-z0-9-]+)"', text)
        alpha = re.search(r"\(1 - ([0-9.]+) \*", text)
        return CODE.format(name=name.group(1) if name else "llm-len",
                           alpha=alpha.group(1) if alpha else "0.1")
    if role == "verifier":
        return json.dumps({"consistent": True, "reason": "the reward matches the math"})
    if role == "analyst":
        return json.dumps({"text": "Length fell on correct answers; accuracy held.",
                           "tags": ["length-collapse"]})
    return "I do not know this request."


CODE = '''```python
NAME = "{name}"
ALPHA = {alpha}


def shape_reward(batch):
    frac = batch.length.float() / batch.max_length
    return batch.correct.float() * (1.0 - ALPHA * frac)
```'''


class LLMServer:
    """``/v1/chat/completions`` answered by ``reply``, optionally after ``delay_s``."""

    def __init__(self, reply: Callable[[str, dict], str] = deterministic_reply,
                 delay_s: float | Callable[[str], float] = 0.0):
        self.reply, self.delay_s = reply, delay_s
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._holding = 0
        self._http = LocalHTTPServer(self._handler())

    @property
    def url(self) -> str:
        return f"{self._http.url}/v1"

    def in_flight(self) -> int:
        with self._lock:
            return self._holding

    def __enter__(self) -> "LLMServer":
        self._http.start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.close()

    def _delay(self, role: str) -> float:
        return self.delay_s(role) if callable(self.delay_s) else float(self.delay_s)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                role = role_of(body)
                record = {"path": self.path, "role": role, "body": body,
                          "received": time.time()}
                with server._lock:
                    server.requests.append(record)
                    server._holding += 1
                try:
                    if self.path != "/v1/chat/completions":
                        self.send_error(404)
                        return
                    time.sleep(server._delay(role))
                    send_json(self, 200,
                              completion(body.get("model", "m"), server.reply(role, body)))
                    record["answered"] = time.time()
                except (BrokenPipeError, ConnectionResetError):
                    record["dropped"] = True   # the client went away (killed) mid-call
                finally:
                    with server._lock:
                        server._holding -= 1

            def log_message(self, *args):
                pass

        return Handler


def closed_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
