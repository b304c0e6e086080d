"""API keys never leave the environment: not into the archive, the vector store, the
checkpoints, the run folder, the saved run config, the stored errors of failed
candidates, or the CLI's output.

One tiny run of ``python -m graph.run`` with LLM agents (ChatOpenAI against a local
OpenAI-compatible server on 127.0.0.1 with scripted replies), planted keys in the
environment, and a server that answers one scientist call with a 401 whose message
echoes the key it received (as some proxies do): that candidate fails with the error
stored. Then every file under the home is read as bytes, and the captured output too.
"""
import json
import os
import subprocess
import sys
import traceback
import uuid
from pathlib import Path

import pytest

from agents.redact import REDACTED, redact
from agents.structured import ModelCallError, invoke_parsed
from fakes import (HTTPError, OpenAIServer, ScriptedChat, candidate_reply, proposal_reply,
                   role_of)
from memory.archive import Archive

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "data" / "tiny_context.json"
TOKEN = uuid.uuid4().hex
OPENAI_KEY = f"sk-poise-PLANTED-{TOKEN}"
LANGSMITH_KEY = f"lsv2_pt_PLANTED{TOKEN[::-1]}_x1"
NEEDLES = [OPENAI_KEY, LANGSMITH_KEY, TOKEN, TOKEN[::-1]]



def scripted_agents():
    """Replies by agent role; the first scientist call is refused with the key echoed."""
    scientist_calls = []

    def respond(body, auth):
        role = role_of(body)
        if role == "objective":
            return json.dumps({"directive": "x", "length": "minimize", "margin": 2.5})
        if role == "scientist":
            scientist_calls.append(auth)
            if len(scientist_calls) == 1:
                received = (auth or "").removeprefix("Bearer ")
                return HTTPError(401, {"error": {
                    "message": f"Incorrect API key provided: {received}. You can find "
                               "your API key at https://platform.openai.com/account.",
                    "type": "invalid_request_error", "code": "invalid_api_key"}})
            return proposal_reply(name="gated-len")
        if role == "coder":
            return candidate_reply("gated-len")
        if role == "judge":
            return json.dumps({"consistent": True, "reason": "the penalty is gated"})
        if role == "analyst":
            return json.dumps({"text": "What happened: shorter answers. Why: the gate. "
                                       "Next: tune alpha.", "tags": ["improvement"]})
        raise ValueError(f"unexpected request for role {role}")

    return respond


def leaks(data: bytes) -> list[str]:
    return [n for n in NEEDLES if n.encode() in data or n.encode("utf-16-le") in data]


@pytest.mark.reliability
def test_no_key_in_any_file_or_output_of_a_run(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
           and not k.startswith(("POISE_MODEL", "LANGCHAIN_", "LANGSMITH_"))}
    with OpenAIServer(scripted_agents()) as server:
        env.update(OPENAI_API_KEY=OPENAI_KEY, LANGSMITH_API_KEY=LANGSMITH_KEY,
                   LANGSMITH_TRACING="false", OPENAI_BASE_URL=server.base_url,
                   NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(REPO),
                   POISE_HOME=str(tmp_path / "unused"))
        proc = subprocess.run(
            [sys.executable, "-m", "graph.run", "--directive", "accurate and concise",
             "--model", "openai:test-model", "--home", str(home), "--candidates", "2",
             "--width", "1", "--no-smoke", "--config", str(TINY), "--quiet"],
            cwd=REPO, env=env, capture_output=True, timeout=540)
        requests = list(server.requests)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]

    # The key was really in use (every request carried it), and the refusal happened.
    assert requests and all(r["auth"] == f"Bearer {OPENAI_KEY}" for r in requests)
    assert not leaks(json.dumps([r["body"] for r in requests]).encode())  # not in prompts
    with Archive(home) as a:
        run = a.runs()[-1]
        cands = a.candidates(run.id)
        assert [c.status for c in cands] == ["evaluated", "failed_proposal", "evaluated"]
        failed = cands[1]
        assert "scientist failed" in failed.error and "401" in failed.error, failed.error
        assert REDACTED in failed.error  # the echoed key, replaced
        assert run.config["objective"]["margin"] == 2.5  # the LLM's spec was used

    files = [p for p in home.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"graph.db", "summary.json"} <= names and any("chroma" in str(p) for p in files)
    found = {str(p.relative_to(home)): leaks(p.read_bytes()) for p in files}
    assert not {p: n for p, n in found.items() if n}, "a key was written under the home"
    assert not leaks(output), "a key was printed"


# ----------------------------------------------------------------------------- units

def test_redact_replaces_secret_env_values_and_key_shapes(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789abcdef")
    monkeypatch.setenv("POISE_MODEL", "openai:gpt-4o-mini")  # not a secret: kept
    text = (f"401: bad key {OPENAI_KEY}; other sk-proj-abcdefghijklmnopqrstuvwx; "
            "Authorization: Bearer abc.def-123456789; tok-0123456789abcdef; "
            "lsv2_pt_0123456789abcdef0123456789abcdef_12; model openai:gpt-4o-mini; "
            "sk-short")
    out = redact(text)
    assert not leaks(out.encode()) and "sk-proj-abc" not in out and "abc.def" not in out
    assert "tok-0123456789abcdef" not in out and "lsv2_pt_0123" not in out
    assert "openai:gpt-4o-mini" in out and "sk-short" in out and "401: bad key" in out
    assert redact("nothing secret here") == "nothing secret here"


def test_a_failing_model_call_raises_model_call_error_without_the_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)

    class Refusing(ScriptedChat):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            raise PermissionError(f"Error code: 401 - Incorrect API key provided: "
                                  f"{OPENAI_KEY}")

    with pytest.raises(ModelCallError) as err:
        invoke_parsed(Refusing(), [("user", "hi")], str, what="probe", retry_hint="")
    shown = "".join(traceback.format_exception(err.value))
    assert "PermissionError" in str(err.value) and "401" in str(err.value)
    assert REDACTED in str(err.value) and not leaks(shown.encode())
