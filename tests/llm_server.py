"""A local OpenAI-compatible chat server for tests: ``/v1/chat/completions`` on
127.0.0.1, answering from a function of each request, recording every request (path,
JSON body, Authorization header). It serves other processes too (a ``python -m
graph.run`` child pointed at it with ``OPENAI_BASE_URL``).

    with OpenAIServer(respond) as server:
        env["OPENAI_BASE_URL"] = server.base_url
        ...
        server.requests  # [{"path", "body", "auth"}, ...]

``respond(body, auth)`` returns the reply's text, or an ``HTTPError(status, body)`` to
answer with an error status and JSON body instead.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Callable, Union

from local_http import LocalHTTPServer, send_json


@dataclass
class HTTPError:
    status: int
    body: dict


Respond = Callable[[dict, Union[str, None]], Union[str, HTTPError]]


def completion(model: str, content: str) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class OpenAIServer:
    def __init__(self, respond: Respond):
        self.respond = respond
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization")
                with server.lock:
                    server.requests.append({"path": self.path, "body": body, "auth": auth})
                if self.path != "/v1/chat/completions":
                    send_json(self, 404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    reply = server.respond(body, auth)
                except Exception as e:  # noqa: BLE001 - a test bug: say it to the client
                    send_json(self, 500, {"error": {"message": f"test server: {e!r}"}})
                    return
                if isinstance(reply, HTTPError):
                    send_json(self, reply.status, reply.body)
                else:
                    send_json(self, 200, completion(body.get("model", "?"), reply))

            def log_message(self, *args):
                pass

        self.http = LocalHTTPServer(Handler)

    @property
    def base_url(self) -> str:
        return f"{self.http.url}/v1"

    def __enter__(self) -> "OpenAIServer":
        self.http.start()
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()


def role_of(body: dict) -> str:
    """Which POISE agent sent a request, from its system prompt (agents/prompts)."""
    system = next((m.get("content", "") for m in body.get("messages", [])
                   if m.get("role") == "system"), "")
    for role, opening in (("objective", "turn it into the run's objective spec"),
                          ("scientist", "You are the scientist of POISE"),
                          ("coder", "You are the coder of POISE"),
                          ("judge", "You are the consistency judge of POISE"),
                          ("analyst", "You are the analyst of POISE")):
        if opening in system:
            return role
    return "unknown"


__all__ = ["OpenAIServer", "HTTPError", "completion", "role_of"]
