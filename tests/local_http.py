"""The HTTP plumbing the tests' local servers share: a ThreadingHTTPServer on 127.0.0.1
(an ephemeral port) served from a daemon thread, and a JSON reply. Used by
tests/llm_server.py, tests/scripted_llm_server.py and test_tracing's LangSmith stand-in.
Kept out of conftest.py on purpose: tests import it."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
