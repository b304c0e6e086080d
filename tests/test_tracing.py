"""LangSmith tracing of ``python -m graph.run`` (graph/tracing.py), end to end.

The real langsmith client sends to a LangSmith stand-in on 127.0.0.1 started here (it
answers ``/info`` and ingests ``/runs/multipart``, ``/runs/batch``, ``/runs``); the LLM
agents are the real ChatOpenAI against a scripted OpenAI-compatible server on 127.0.0.1.
One traced run (2 candidates, LLM agents) and one untraced run (builtin agents) serve
every test. No network, no real key."""
from __future__ import annotations

import ast
import email
import gzip
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from fakes import (HTTPError, LocalHTTPServer, OpenAIServer, candidate_reply,
                   proposal_reply, role_of, send_json)

REPO = Path(__file__).resolve().parents[1]
TINY = Path(__file__).parent / "data" / "tiny_context.json"
# Planted keys, shaped so that LangSmith's default secret patterns miss them: only
# POISE's exact-value rules can strip them.
OPENAI_KEY = "poise-planted-openai-7d41c9e2b5"
LANGSMITH_KEY = "poise-planted-langsmith-3a8f06d1c4"
AGENT_NODES = ("scientist", "coder", "verifier", "analyst")
NODES = ("select_parent", "retrieve_evidence", "scientist", "coder", "verifier", "trainer",
         "evaluate", "analyst", "archive")


# ----------------------------------------------------------------------------- servers

class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 in a thread; subclasses define ``handle``."""

    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = _decode(body, self.headers.get("Content-Encoding"))
                req = {"method": self.command, "path": self.path, "body": body,
                       "headers": {k.lower(): v for k, v in self.headers.items()}}
                with outer.lock:
                    outer.requests.append(req)
                send_json(self, *outer.handle(req))

            do_GET = do_POST = do_PATCH = do_PUT = _serve

            def log_message(self, *args):
                pass

        self.http = LocalHTTPServer(Handler).start()
        self.url = self.http.url

    def close(self):
        self.http.close()


def _decode(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body),
                                                             read_across_frames=True)
        return reader.read()
    return body


class LangSmithStandIn(_Server):
    """Answers what langsmith 0.15's client calls to trace: ``GET /info``, then batches
    to ``POST /runs/multipart``, zstd-compressed as with LangSmith itself (``/runs/batch``,
    ``POST /runs``, ``PATCH /runs/<id>`` are accepted too). ``runs()`` rebuilds each run
    from its post and patches."""

    INFO = {"version": "0.0.0-test",
            "batch_ingest_config": {"use_multipart_endpoint": True, "size_limit": 100,
                                    "size_limit_bytes": 20_971_520,
                                    "scale_up_nthreads_limit": 16,
                                    "scale_up_qsize_trigger": 1000,
                                    "scale_down_nempty_trigger": 4},
            "instance_flags": {"zstd_compression_enabled": True}}

    def handle(self, req):
        path = req["path"].split("?")[0].rstrip("/")
        if req["method"] == "GET" and path == "/info":
            return 200, self.INFO
        if path in ("/runs/multipart", "/runs/batch", "/runs") or path.startswith("/runs/"):
            return 202, {}
        return 404, {"detail": f"not served here: {req['method']} {path}"}

    def operations(self) -> list[tuple[str, str, str, object]]:
        """(op, run id, field, value) of every ingested part, in arrival order; field
        "" is the run's main object."""
        ops = []
        for req in self.requests:
            path = req["path"].split("?")[0].rstrip("/")
            if path == "/runs/multipart":
                ops += _multipart_ops(req)
            elif path == "/runs/batch":
                data = json.loads(req["body"])
                for op in ("post", "patch"):
                    ops += [(op, str(r["id"]), "", r) for r in data.get(op) or []]
            elif path == "/runs" and req["method"] == "POST":
                r = json.loads(req["body"])
                ops.append(("post", str(r["id"]), "", r))
            elif path.startswith("/runs/") and req["method"] == "PATCH":
                ops.append(("patch", path.rsplit("/", 1)[1], "", json.loads(req["body"])))
        return ops

    def runs(self) -> dict[str, dict]:
        """Each run as LangSmith would store it: its post, then its patch on top."""
        parts: dict[str, dict[str, dict]] = {}
        for op, rid, field, value in self.operations():
            run = parts.setdefault(rid, {"post": {}, "patch": {}})[op]
            if field:
                run[field] = value
            else:
                run.update(value)
        return {rid: {**p["post"], **{k: v for k, v in p["patch"].items() if v is not None}}
                for rid, p in parts.items()}


def _multipart_ops(req) -> list:
    ctype = req["headers"]["content-type"]
    msg = email.message_from_bytes(f"Content-Type: {ctype}\r\n\r\n".encode() + req["body"],
                                   policy=HTTP)
    ops = []
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        op, rid, *field = name.split(".")
        if op not in ("post", "patch"):
            continue  # attachments, feedback
        ops.append((op, rid, field[0] if field else "", json.loads(part.get_content())))
    return ops


def openai_standin() -> OpenAIServer:
    """An OpenAI-compatible /v1/chat/completions (tests/fakes.py) answering by the agent's
    role with the canonical candidate. The analyst's request gets a 400 whose message
    echoes the bearer key back, as a misbehaving proxy would: the graph keeps the error
    as the candidate's diagnosis, so the key reaches the traced payloads unless it is
    stripped."""

    def respond(body, auth):
        role = role_of(body)
        if role == "objective":
            return json.dumps({"directive": "accurate and concise", "length": "minimize"})
        if role == "scientist":
            return proposal_reply(name="gated-len",
                                  hypothesis="penalize length of correct answers",
                                  mechanism="the reward penalizes length on correct answers",
                                  math="r_i = c_i * (1 - 0.3 * L_i / L_max)")
        if role == "coder":
            return candidate_reply("gated-len")
        if role == "judge":
            return json.dumps({"consistent": True,
                               "reason": "the reward is gated on correctness"})
        if role == "analyst":
            key = (auth or "").removeprefix("Bearer ")
            return HTTPError(400, {"error": {"message": f"model not enabled for key {key}",
                                             "type": "invalid_request_error"}})
        return HTTPError(400, {"error": {"message": "unexpected prompt"}})

    return OpenAIServer(respond).start()


# ----------------------------------------------------------------------------- runs

def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LANGSMITH_", "LANGCHAIN_", "POISE_", "OPENAI_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(REPO), **extra)
    return env


# Every LangSmith client and LangChain tracer the run creates is counted when it is made
# (counting the live ones after the run would depend on whether the garbage collector
# had already freed the tracer: it is only reachable through reference cycles by then).
PROBE = """\
import sys, threading
from langchain_core.tracers.langchain import LangChainTracer
from langsmith import Client
made = []
for cls in (Client, LangChainTracer):
    def init(self, *a, _init=cls.__init__, **k):
        made.append(type(self).__name__)
        _init(self, *a, **k)
    cls.__init__ = init
from graph.run import main
rc = main(sys.argv[1:])
print("PROBE " + repr({"rc": rc, "objects": sorted(set(made)),
                       "threads": sorted(t.name for t in threading.enumerate())}))
sys.exit(rc)
"""


class Loop:
    """``python -m graph.run`` (through ``main``, in a wrapper that reports, after the
    run, the kinds of LangSmith client and LangChain tracer it created and every live
    thread)."""

    def __init__(self, home: Path, env: dict, *args: str):
        self.home, self.log = home, home.parent / f"{home.name}.log"
        home.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", PROBE, "--home", str(home), "--directive",
                 "accurate and concise", "--config", str(TINY), "--no-smoke", "--quiet",
                 *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def finish(self) -> dict:
        """Wait; the probe's report. Fails with the output's tail if the run failed."""
        self.proc.wait(timeout=600)
        self.output = self.log.read_text()
        line = [ln for ln in self.output.splitlines() if ln.startswith("PROBE ")]
        assert self.proc.returncode == 0 and line, self.output[-3000:]
        return ast.literal_eval(line[-1][len("PROBE "):])


@pytest.fixture(scope="module")
def loops(tmp_path_factory):
    """Two tiny loops at once (seed baseline + 1 candidate each), each with its own
    LangSmith stand-in. Traced: LLM agents (the real ChatOpenAI against the OpenAI
    stand-in), the analyst call failing with the key echoed. Untraced: builtin agents,
    LangSmith endpoint and key set but tracing not switched on."""
    ls, ls_off, oa = LangSmithStandIn(), LangSmithStandIn(), openai_standin()
    root, started = tmp_path_factory.mktemp("loops"), []
    try:
        started.append(Loop(root / "traced", _env(
            LANGSMITH_TRACING="true", LANGSMITH_ENDPOINT=ls.url,
            LANGSMITH_API_KEY=LANGSMITH_KEY, LANGSMITH_PROJECT="poise-test",
            POISE_MODEL="openai:test-model", OPENAI_BASE_URL=oa.base_url,
            OPENAI_API_KEY=OPENAI_KEY), "--candidates", "1"))
        started.append(Loop(root / "untraced", _env(
            LANGSMITH_ENDPOINT=ls_off.url, LANGSMITH_API_KEY=LANGSMITH_KEY),
            "--candidates", "1"))
        on, off = started
        traced = {"probe": on.finish(), "ls": ls, "oa": oa, "home": on.home,
                  "runs": ls.runs()}
        untraced = {"probe": off.finish(), "ls": ls_off, "output": off.output}
        yield traced, untraced
    finally:
        for loop in started:
            if loop.proc.poll() is None:
                loop.proc.kill()
                loop.proc.wait()
        for server in (ls, ls_off, oa):
            server.close()


@pytest.fixture(scope="module")
def traced(loops):
    return loops[0]


def _named(runs: dict, name: str) -> dict:
    found = [r for r in runs.values() if r.get("name") == name]
    assert len(found) == 1, (name, len(found))
    return found[0]


def _meta(run: dict) -> dict:
    return (run.get("extra") or {}).get("metadata") or {}


def _below(runs: dict, top: dict) -> list[dict]:
    """Every run in ``top``'s subtree, ``top`` excluded."""
    return [r for r in runs.values()
            if r["dotted_order"].startswith(top["dotted_order"] + ".")]


def _archive(home) -> dict:
    con = sqlite3.connect(home / "archive.db")
    try:
        rows = con.execute("select id, name, status, fitness, details from candidate"
                           ).fetchall()
        evals = con.execute("select candidate_id, metrics from evaluation").fetchall()
    finally:
        con.close()
    return {"candidates": {r[0]: {"name": r[1], "status": r[2], "fitness": r[3],
                                  "details": json.loads(r[4])} for r in rows},
            "evals": {cid: json.loads(m) for cid, m in evals}}


# ----------------------------------------------------------------------------- traced

def test_run_and_candidates_are_named_and_carry_their_metadata(traced):
    runs = traced["runs"]
    assert {"Client", "RunTracer"} <= set(traced["probe"]["objects"])  # the probe sees them
    assert any("tracing" in t for t in traced["probe"]["threads"])
    root = _named(runs, "poise run 1")
    assert root.get("parent_run_id") is None and root["session_name"] == "poise-test"
    assert "poise" in root["tags"]
    assert (_meta(root)["run_id"], _meta(root)["directive"]) == (1, "accurate and concise")
    assert root.get("end_time") and root.get("outputs")  # its end was sent: flushed
    # the LLM set-up and spend travel with the run (agents/calls.py)
    assert _meta(root)["llm_models"]["scientist"] != "builtin"
    assert {"max_cost_usd", "max_llm_tokens", "llm_cost_usd_at_start"} <= set(_meta(root))

    cands = {r["name"]: r for r in runs.values() if r["name"].startswith("candidate")}
    assert set(cands) == {"candidate r0.s0", "candidate r1.s0"}
    arch = _archive(traced["home"])
    for rnd, name in enumerate(sorted(cands)):
        cand, m = cands[name], _meta(cands[name])
        assert str(cand["parent_run_id"]) == str(root["id"])
        assert (m["candidate_key"], m["round"], m["generation"], m["slot"], m["run_id"],
                m["directive"]) == (f"1:{rnd}:0", rnd, rnd, 0, 1, "accurate and concise")
        archived = arch["candidates"][m["candidate_id"]]
        assert archived["details"]["key"] == m["candidate_key"]
        assert (m["candidate_name"], m["status"], m["fitness"]) == \
            (archived["name"], "evaluated", pytest.approx(archived["fitness"]))
    assert _meta(cands["candidate r1.s0"])["candidate_name"] == "gated-len"


def test_nodes_and_llm_calls_carry_node_role_and_candidate(traced):
    runs = traced["runs"]
    below = _below(runs, _named(runs, "candidate r1.s0"))
    nodes = {r["name"]: r for r in below if r["name"] in NODES}
    assert set(nodes) == set(NODES)
    for name, node in nodes.items():
        m = _meta(node)
        assert {"poise", name} <= set(node["tags"]), node["tags"]
        assert (m["node"], m["candidate_key"], m["round"], m["generation"], m["slot"],
                m["run_id"], m["directive"]) == (name, "1:1:0", 1, 1, 0, 1,
                                                 "accurate and concise")
        if name in AGENT_NODES:
            assert f"role:{name}" in node["tags"] and m["role"] == name
        else:
            assert not any(t.startswith("role:") for t in node["tags"]), node["tags"]
    for role in AGENT_NODES:
        llm = [r for r in _below(runs, nodes[role]) if r["run_type"] == "llm"]
        assert [r["name"] for r in llm] == [f"{role} LLM"], [r["name"] for r in llm]
        m = _meta(llm[0])
        assert {"poise", role, f"role:{role}"} <= set(llm[0]["tags"])
        assert (m["role"], m["node"], m["candidate_key"], m["round"], m["run_id"]) == \
            (role, role, "1:1:0", 1, 1)
        assert (m["poise_role"], m["poise_candidate"], m["poise_run"]) == (role, "1:1:0", 1)
        assert llm[0].get("outputs") or llm[0].get("error")
    # the seed round makes no LLM call: GRPO as shipped, the builtin analyst
    seed = _below(runs, _named(runs, "candidate r0.s0"))
    assert {r["name"] for r in seed} >= set(NODES)
    assert not [r for r in seed if r["run_type"] == "llm"]


def test_trainer_run_carries_the_final_metrics(traced):
    runs, arch = traced["runs"], _archive(traced["home"])
    for name in ("candidate r0.s0", "candidate r1.s0"):
        cand = _named(runs, name)
        trainer = [r for r in _below(runs, cand) if r["name"] == "trainer"][0]
        cid = _meta(cand)["candidate_id"]
        final = arch["evals"][cid]["val"]  # one seed
        expected = {"overall": final["overall"], "add2_acc": final["add2/acc@1"],
                    "add3_acc": final["add3/acc@1"], "add5_acc": final["add5/acc@1"],
                    "length": final["length"], "validity": final["valid"],
                    "fitness": arch["candidates"][cid]["fitness"], "seeds": 1}
        for key, value in expected.items():
            assert trainer["outputs"]["metrics"][key] == pytest.approx(value), key
            assert _meta(trainer)[key] == pytest.approx(value), key
        assert trainer["outputs"]["results"][0]["final"]["overall"] == \
            pytest.approx(final["overall"])


def test_no_key_reaches_langsmith_and_the_echoed_one_is_redacted(traced):
    ls, runs = traced["ls"], traced["runs"]
    assert all(r["headers"].get("x-api-key") == LANGSMITH_KEY for r in ls.requests)
    assert traced["oa"].requests[0]["auth"] == f"Bearer {OPENAI_KEY}"
    bodies = b"".join(r["body"] for r in ls.requests)
    for key in (OPENAI_KEY, LANGSMITH_KEY):  # the keys went as auth headers, and only so
        assert key.encode() not in bodies
    # the stand-in echoed the OpenAI key into the analyst's error, which is traced
    # (the LLM run's error, the analyst's diagnosis, the archive node's input): redacted
    analyst = [r for r in _below(runs, _named(runs, "candidate r1.s0"))
               if r["name"] == "analyst"][0]
    text = analyst["outputs"]["diagnosis"]["text"]
    assert text.startswith("analyst failed:") and "for key [redacted]" in text, text
    llm = [r for r in _below(runs, analyst) if r["run_type"] == "llm"][0]
    assert "for key [redacted]" in llm["error"]


def test_trainer_metrics_are_means_over_seeds_and_fitness_is_the_evaluate_nodes():
    from graph.graph import evaluate
    from graph.tracing import final_metrics

    def final(overall, length, acc):
        return {"overall": overall, "length": length, "valid": 90.0 + acc,
                **{f"add{n}/acc@1": acc * n for n in (2, 3, 5)}, "add5/pass@16": 50.0}

    state = {"objective": {"directive": "accurate and concise", "length": "minimize"},
             "reference": {"overall": 30.0, "length": 20.0},
             "results": [{"final": final(31.0, 12.0, 1.0)}, {"final": final(29.5, 18.0, 3.0)}]}
    m = final_metrics(state, state["results"])
    assert m["seeds"] == 2 and m["overall"] == pytest.approx(30.25)
    assert (m["add2_acc"], m["add3_acc"], m["add5_acc"]) == (4.0, 6.0, 10.0)
    assert (m["length"], m["validity"]) == (15.0, 92.0)
    node = evaluate.__wrapped__(state, None)  # the graph's own fitness, mean over seeds
    assert m["fitness"] == pytest.approx(node["fitness"])
    assert final_metrics(state, [None]) == {}  # no seed trained: nothing to report


# ----------------------------------------------------------------------------- untraced

def test_untraced_run_creates_no_client_and_sends_nothing(loops):
    """LangSmith endpoint and key set, tracing not switched on: no request, no client,
    no tracer, no background thread."""
    untraced = loops[1]
    assert untraced["probe"]["objects"] == []
    assert not [t for t in untraced["probe"]["threads"] if "tracing" in t]
    assert untraced["ls"].requests == []
    assert "leaderboard" in untraced["output"]
