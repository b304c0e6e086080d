"""The LLM path as a researcher runs it (issue 14): what each role's prompt holds,
every role mix, a 4,096-token server, token and cost caps, resume without paying twice,
and offline replays. Real LangGraph, SQLite, Chroma, embeddings, sandbox and trainer;
models are scripted chat models or a scripted OpenAI-compatible server on 127.0.0.1."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from rich.console import Console

from agents import calls
from agents.budget import Budget, ContextBudgetError, fit, overflow_from
from evals.objective import objective_from_directive
from fakes import (PROPOSAL, HTTPError, OpenAIServer, ScriptedChat, candidate_code, candidate_reply,
                   closed_port, deterministic_reply, last_human, proposal_reply,
                   request_tokens)
from graph.context import Context
from graph.graph import builder
from graph.request import RunRequest
from memory.archive import Archive

REPO = Path(__file__).resolve().parents[1]
TINY_FILE = REPO / "tests" / "data" / "tiny_context.json"
TINY = json.loads(TINY_FILE.read_text())


def _data(prompt: str, name: str) -> str:
    """The body of one ``<data name=...>`` block of a prompt ('' if absent)."""
    m = re.search(rf'<data name="{name}">\n(.*?)\n</data>', prompt, re.DOTALL)
    return m.group(1) if m else ""


def _invoke(home: Path, ctx: Context, directive: str = "accurate and concise") -> int:
    spec = objective_from_directive(directive)
    with Archive(home) as a:
        run_id = a.start_run(spec.directive, {})
    app = builder.compile(checkpointer=InMemorySaver())
    app.invoke({"run_id": run_id, "directive": spec.directive,
                "objective": spec.model_dump(), "round": 0, "reference": None},
               {"configurable": {"thread_id": "t"}, "recursion_limit": 400}, context=ctx)
    return run_id


# ----------------------------------------------------------------------------- prompts

CRASHING = candidate_code("{name}").replace(
    "    frac =", "    raise RuntimeError('boom-in-my-first-attempt')\n    frac =")


def test_each_role_sees_what_it_needs_through_the_real_graph(tmp_path):
    """Evidence named (candidate, mechanism, parent), its ids archived and shown by
    memory.show, /why and the report; the coder's repair gets its own failed module; a
    crossover's coder gets the other parent's module; the analyst gets every seed and
    the parent's and GRPO's numbers; a failed candidate gets a real diagnosis; a judge
    that errors is recorded; a scientist failure is failed_proposal."""
    home = tmp_path / "home"
    n_sci = {"i": 0}

    def scientist(messages):
        prompt = last_human(messages)
        n_sci["i"] += 1
        i = n_sci["i"]
        if i >= 4:
            return "I would rather not propose anything today."   # -> failed_proposal
        refs = re.findall(r'"name": "([a-z0-9-]+)"', _data(prompt, "references"))
        mate = refs[0] if i == 2 and refs else None
        name, hypothesis, what = (
            ("rep-one", "Penalizing the length of correct answers shortens them.",
             "shape_reward penalizes length on correct answers"),
            ("cross-two", "Combining the parent with a second lineage's reward keeps "
             "the best of both when groups disagree.",
             "a crossover that averages two reward definitions across lineages"),
            ("static-bad", "Reading the environment tunes the reward scale per machine.",
             "the reward scale is read from an environment variable"))[i - 1]
        return proposal_reply(name=name, crossover_with=mate, hypothesis=hypothesis,
                              mechanism=f"{name} mechanism: {what}",
                              math="r_i = c_i * (1 - 0.3 * L_i / L_max)")

    def coder(messages):
        prompt = last_human(messages)
        name = re.search(r'"name": "([a-z0-9-]+)"', _data(prompt, "proposal")).group(1)
        if name == "static-bad":
            return "```python\nimport os\n" + candidate_code(name) + "```"
        if name == "rep-one" and "previous_code" not in prompt:
            return "```python\n" + CRASHING.format(name=name) + "```"
        return candidate_reply(name)

    def judge(messages):
        raise RuntimeError("the judge's server is down")

    analyst_reply = json.dumps({"text": "What happened: length fell on correct answers.",
                                "tags": ["length-collapse"]})
    sci, cod, jud = (ScriptedChat.answering(f) for f in (scientist, coder, judge))
    ana = ScriptedChat.of(analyst_reply)
    ctx = Context(home=str(home), candidates=4, width=1, seeds=2, smoke=False,
                  verify_timeout_s=20, warm_config=TINY["warm_config"],
                  train_overrides=TINY["train_overrides"],
                  chat_models={"scientist": sci, "coder": cod, "verifier": jud,
                               "analyst": ana})
    run_id = _invoke(home, ctx)

    with Archive(home) as a:
        by = {c.name: c for c in a.candidates(run_id)}
        assert by["rep-one"].status == "evaluated", by["rep-one"].error
        assert by["cross-two"].status == "evaluated", by["cross-two"].error
        assert by["static-bad"].status == "failed_verification"
        failed = [c for c in by.values() if c.status == "failed_proposal"]
        assert len(failed) == 1 and "scientist failed" in failed[0].error

        # the scientist of round 2 saw rep-one's reflection, named, with its mechanism
        prompt2 = last_human(sci.calls[1])
        refl = [json.loads(line) for line in _data(prompt2, "reflections").splitlines()]
        about = [r for r in refl if r.get("candidate") == "rep-one"]
        assert about, refl
        assert about[0]["mechanism"].startswith("rep-one mechanism")
        assert about[0]["parent"] == "grpo" and about[0]["status"] == "evaluated"
        assert "overall" in about[0]["metrics"] and about[0]["text"].startswith("What happened")
        assert {r["candidate"] for r in refl} >= {"grpo", "rep-one"}
        # ... and the ids it was shown are archived, and shown by memory.show and /why
        cross = by["cross-two"]
        assert cross.info.evidence and cross.info.crossover_with
        from memory.cards import shown as shown_to

        shown = shown_to(a, cross.id)
        assert "rep-one" in {e["candidate"] for e in shown["evidence"]}
        assert shown["references"] and shown["references"][0]["name"] == \
            cross.info.crossover_with
        from graph.session import why_text
        from memory.show import candidate_record

        assert candidate_record(a, cross)["shown"] == shown
        assert "the scientist was shown evidence: reflection #" in why_text(a, cross.id)

        # the coder's repair saw its own failed module and the verifier's findings
        rep_calls = [last_human(c) for c in cod.calls if '"name": "rep-one"' in last_human(c)]
        assert len(rep_calls) == 2 and "previous_code" not in rep_calls[0]
        assert "boom-in-my-first-attempt" in _data(rep_calls[1], "previous_code")
        assert "boom-in-my-first-attempt" in _data(rep_calls[1], "verifier_feedback")
        # a crossover's coder saw both parents' modules
        mate = cross.info.crossover_with
        cross_prompt = [last_human(c) for c in cod.calls
                        if '"name": "cross-two"' in last_human(c)][0]
        assert f'NAME = "{mate}"' in _data(cross_prompt, "mate_code")
        assert _data(cross_prompt, "parent_code")

        # the analyst saw both seeds, and the parent's and GRPO's numbers side by side
        first = last_human(ana.calls[0])
        assert _data(first, "curve_seed_0") and _data(first, "curve_seed_1")
        seeds = [json.loads(x) for x in _data(first, "seeds").splitlines()]
        assert [s["seed"] for s in seeds] == [0, 1]
        compare = [json.loads(x) for x in _data(first, "compare").splitlines()]
        assert {k for row in compare for k in row} >= {"candidate", "parent", "grpo"}
        # a failed candidate's diagnosis: what failed, the likely cause, what to try
        failure_prompts = [last_human(c) for c in ana.calls if "What failed:" in last_human(c)]
        assert failure_prompts and "import" in _data(failure_prompts[0], "failure")
        refl_bad = a.reflections(by["static-bad"].id)[0].text
        assert refl_bad.startswith("What happened") or "What failed" in refl_bad
        builtin = a.reflections(failed[0].id)[0].text
        assert "What failed:" in builtin and "Likely cause:" in builtin and "Next:" in builtin

        # the judge's failure is recorded (the builtin rule judged instead)
        judged = by["rep-one"].info.judge
        assert judged and all("judge_error" in j for j in judged)
        assert "the judge's server is down" in judged[-1]["judge_error"]
        assert "the consistency judge failed" in why_text(a, by["rep-one"].id)

    from graph.report import write_report

    page = write_report(home, run_id).read_text()
    assert "the scientist was shown" in page and "the consistency judge failed" in page
    assert "LLM calls" in page  # the ledger's section: these calls were recorded
    ledger = calls.Ledger(home).totals(run_id)
    assert set(ledger["by_role"]) == {"scientist", "coder", "verifier", "analyst"}
    assert ledger["estimated_calls"] == ledger["calls"] - ledger["failed_calls"]  # no usage


# ----------------------------------------------------------------------------- role mixes

def _server_env(monkeypatch, server, **models):
    for k in list(os.environ):
        if k.startswith(("POISE_MODEL", "LANGSMITH_", "LANGCHAIN_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    for role, spec in models.items():
        monkeypatch.setenv(f"POISE_MODEL_{role.upper()}", spec)


MIXES = {  # role -> model; the rest builtin
    "all-llm": {"scientist": "openai:m", "coder": "openai:m", "verifier": "openai:m",
                "analyst": "openai:m", "objective": "openai:m"},
    "coder-only": {"coder": "openai:m"},
    "analyst-only": {"analyst": "openai:m"},
    "judge-only": {"verifier": "openai:m"},
    "objective-only": {"objective": "openai:m"},
}


def test_every_role_mix_completes_a_two_candidate_run(tmp_path, monkeypatch):
    """Each mix through the runner as graph.run starts it (per-role POISE_MODEL_<ROLE>
    variables, ChatOpenAI against a local server): the run finishes with 2 candidates,
    and the server heard from exactly the roles given a model that have work to do (a
    builtin proposal's code is its rendered genome: an LLM coder or judge has none)."""
    from graph.runner import run

    home = tmp_path / "home"
    with OpenAIServer.scripted() as server:
        for mix, models in MIXES.items():
            _server_env(monkeypatch, server, **models)
            before = len(server.requests)
            summary = run(RunRequest(directive="accurate and concise", home=str(home),
                                     candidates=2, width=2, smoke=False,
                                     config=TINY_FILE, quiet=True), Console(quiet=True))
            heard = {r["role"] for r in server.requests[before:]}
            statuses = [c["status"] for c in summary["candidates"]]
            assert len(statuses) == 3 and statuses[0] == "evaluated", (mix, summary)
            assert all(s in ("evaluated", "duplicate") for s in statuses), (mix, statuses)
            llm_scientist = "scientist" in models
            expected = {r for r in models if r in ("analyst", "objective")} | (
                {"scientist", "coder", "judge"} if llm_scientist else set())
            assert heard == {"judge" if r == "verifier" else r for r in expected}, (mix, heard)
            with Archive(home) as a:
                saved = a.run(summary["run_id"]).config["context"]["models"]
            llm_roles = {r: m for r, m in saved.items() if m != "builtin"}
            assert llm_roles == {**models, **({"steer": "openai:m"} if llm_scientist
                                              else {})}, mix
            assert summary["llm"]["calls"] == len(server.requests) - before


def test_an_llm_scientist_with_a_builtin_coder_is_refused_up_front(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("POISE_MODEL")}
    env.update(POISE_MODEL_SCIENTIST="openai:gpt-4o-mini", OPENAI_API_KEY="sk-test",
               OPENAI_BASE_URL=f"http://127.0.0.1:{closed_port()}/v1", PYTHONPATH=str(REPO))
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-m", "graph.run", "--directive", "accurate",
                           "--home", str(home)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "POISE_MODEL_SCIENTIST" in lines[0]
    assert "builtin coder" in lines[0] and "POISE_MODEL_CODER" in lines[0]
    assert not home.exists()  # before anything was written


# ----------------------------------------------------------------------------- 4,096 tokens

WINDOW = 4096
LONG = " ".join(["the group baseline shifts toward correct short answers"] * 25)
TOPICS = ("An entropy bonus on rare tokens keeps exploration alive late in training.",
          "Widening only the upper clip bound lets unlikely good tokens grow faster.",
          "Whitening advantages within each prompt group removes the difficulty bias.",
          "Annealing the KL weight toward the start policy stabilizes the first steps.",
          "Masking invalid samples out of the group statistics stops format noise.",
          "Scaling the loss by the analytic variance of binary rewards evens groups.")
THINKING = " ".join(["Let me think about which hook to change, step by step."] * 90)


def _small_window_reply(role: str, body: dict):
    if request_tokens(body) > WINDOW:   # as vLLM answers (llama.cpp's is alike)
        return HTTPError(400, {"error": {
            "message": f"This model's maximum context length is {WINDOW} tokens. However, "
                       f"you requested {request_tokens(body)} tokens "
                       f"({request_tokens(body)} in the messages, 0 in the completion). "
                       "Please reduce the length of the messages or completion.",
            "type": "BadRequestError", "param": None, "code": 400}})
    last = str(body["messages"][-1].get("content") or "")
    if role == "scientist" and "could not be used" not in last:
        return THINKING   # unusable: the repair turn echoes it back
    reply = deterministic_reply(role, body)
    if role == "scientist":  # long fields: the archive's evidence grows quickly
        data = json.loads(reply)
        topic = TOPICS[int(data["name"].rsplit("-", 1)[1]) % len(TOPICS)]
        data.update(hypothesis=" ".join([topic] * 14),
                    mechanism=f"{topic}. " + LONG[:900])
        return json.dumps(data)
    if role == "analyst":
        return json.dumps({"text": "What happened: " + LONG, "tags": []})
    return reply


def test_a_4096_token_server_refusing_longer_prompts_still_gets_candidates(
        tmp_path, monkeypatch):
    """The issue's server: it does not list its window, the scientist's first reply is
    unusable (long prose), and its repair turn no longer fits: the server answers HTTP
    400, the scientist refits under the window the refusal names (fewer reflections and
    references, shorter code, a shorter echo) and the loop goes on: every candidate is
    archived, none lost to the context."""
    from graph.runner import run

    home = tmp_path / "home"
    with OpenAIServer.scripted(_small_window_reply) as server:
        _server_env(monkeypatch, server, scientist="openai:small", coder="openai:small",
                    verifier="openai:small", analyst="openai:small")
        summary = run(RunRequest(directive="accurate and concise", home=str(home),
                                 candidates=5, width=1, smoke=False, config=TINY_FILE,
                                 quiet=True), Console(quiet=True))
        requests = list(server.requests)
    sizes = [(r["role"], request_tokens(r["body"])) for r in requests]
    refused = [s for s in sizes if s[1] > WINDOW]
    assert refused, f"no prompt passed the window; the test needs longer evidence: {sizes}"
    statuses = [c["status"] for c in summary["candidates"]]
    assert len(statuses) == 6 and statuses.count("evaluated") >= 5, \
        [(c["status"], c["error"]) for c in summary["candidates"]]
    assert not [c for c in summary["candidates"] if c["status"].startswith("failed")]
    # each refusal was followed by a request that fit
    for i, r in enumerate(requests):
        if request_tokens(r["body"]) > WINDOW:
            later = [q for q in requests[i + 1:] if q["role"] == r["role"]]
            assert later and request_tokens(later[0]["body"]) <= WINDOW
    assert summary["llm"]["failed_calls"] == len(refused)
    print("\nrequest tokens by role (max):",
          {role: max(t for r2, t in sizes if r2 == role) for role, _ in sizes},
          f"refused {len(refused)}")


# ----------------------------------------------------------------------------- caps, replay

PROMPT_TOKENS, COMPLETION_TOKENS = 1000, 100   # what the server reports for every call


def _cli(args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "graph.run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _archive_view(home: Path, run_id: int) -> list:
    with Archive(home) as a:
        return [(c.name, c.generation, c.status, c.code, c.proposal,
                 None if c.fitness is None else round(c.fitness, 9),
                 [r.text for r in a.reflections(c.id)],
                 [round(e.fitness, 9) for e in a.evaluations(c.id) if e.fitness is not None])
                for c in a.candidates(run_id)]


def test_a_cost_capped_run_stops_resumes_and_replays_offline(tmp_path):
    """--max-cost stops at a round boundary with a clear message; --resume with a
    higher cap finishes; summary.json's totals are the sum of the recorded calls; and
    --replay re-executes the run with the server gone, to an identical archive."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
           and not k.startswith(("POISE_MODEL", "LANGCHAIN_", "LANGSMITH_"))}
    env.update(OPENAI_API_KEY="sk-test", NO_PROXY="127.0.0.1,localhost",
               PYTHONPATH=str(REPO), POISE_HOME=str(tmp_path / "unused"))
    per_call = (PROMPT_TOKENS * 0.15 + COMPLETION_TOKENS * 0.60) / 1e6  # gpt-4o-mini
    # objective (1 call) + one candidate (scientist, coder, judge, analyst: 4 calls) fit;
    # a second candidate would not
    cap = 7.5 * per_call
    common = ["--home", str(home), "--no-smoke", "--config", str(TINY_FILE), "--quiet"]
    with OpenAIServer.scripted(usage=lambda body, reply: (PROMPT_TOKENS,
                                                          COMPLETION_TOKENS)) as server:
        env["OPENAI_BASE_URL"] = server.base_url
        first = _cli(["--directive", "accurate and concise", "--model", "openai:gpt-4o-mini",
                      "--candidates", "3", "--width", "1", "--max-cost", f"{cap:.8f}",
                      *common], env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "LLM cap reached" in first.stdout and "--resume 1 --max-cost" in first.stdout
        summary = json.loads((home / "runs" / "1" / "summary.json").read_text())
        assert summary["stopped"] and len(summary["candidates"]) == 2  # seed + 1
        assert summary["llm"]["cost_usd"] == pytest.approx(5 * per_call)
        assert summary["llm"]["cost_usd"] <= cap
        with Archive(home) as a:
            assert a.run(1).status == "running"   # not finished: it can continue

        again = _cli(["--resume", "1", "--max-cost", "1", *common], env)
        assert again.returncode == 0, again.stderr[-3000:]
        n_requests = len(server.requests)
    summary = json.loads((home / "runs" / "1" / "summary.json").read_text())
    assert summary["stopped"] is None and len(summary["candidates"]) == 4
    rows = calls.Ledger(home).rows(1)
    assert len(rows) == n_requests == summary["llm"]["calls"]  # every call, once
    assert summary["llm"]["input_tokens"] == sum(r["input_tokens"] for r in rows)
    assert summary["llm"]["output_tokens"] == sum(r["output_tokens"] for r in rows)
    assert summary["llm"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert summary["llm"]["cost_usd"] == pytest.approx(n_requests * per_call)
    assert set(summary["llm"]["by_role"]) == {"objective", "scientist", "coder",
                                              "verifier", "analyst"}

    # the server is closed: a replay must not need it
    env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{closed_port()}/v1"
    replay = _cli(["--replay", "1", "--home", str(home), "--no-smoke", "--quiet"], env)
    assert replay.returncode == 0, replay.stderr[-3000:]
    target = home / "replays" / "run-1"
    assert _archive_view(target, 1) == _archive_view(home, 1)
    assert calls.Ledger(target).totals(1)["cost_usd"] == 0.0


# ----------------------------------------------------------------------------- units

def test_the_ledger_answers_a_repeated_call_from_its_recording(tmp_path):
    """A resumed process (a new Ledger on the same file) sends nothing for a call it
    already paid for; a different prompt, or a second identical call, goes out."""
    model = ScriptedChat.of("first", "second", "third")
    msgs = [("human", "hello")]
    from agents.structured import _as_message

    history = [_as_message(m) for m in msgs]
    with calls.scope(calls.Ledger(tmp_path), 1, "1:1:0", "coder"):
        assert calls.call(model, history).content == "first"
    with calls.scope(calls.Ledger(tmp_path), 1, "1:1:0", "coder"):   # "after a restart"
        assert calls.call(model, history).content == "first"         # cached
        assert calls.call(model, history).content == "second"        # a second one: sent
    assert len(model.calls) == 2
    rows = calls.Ledger(tmp_path).rows(1)
    assert [r["cached"] for r in rows] == [0, 1, 0]
    assert calls.totals(rows)["cached_calls"] == 1


def test_budget_fits_by_level_and_reads_a_servers_refusal():
    budget = Budget(window=2048, reply=512)
    build = lambda level: [("human", "x" * (9000 // (level + 1)))]  # noqa: E731
    prompt = fit(build, 4, budget, "scientist")
    assert budget.tokens(prompt) <= budget.prompt_tokens and len(prompt[0][1]) < 9000
    with pytest.raises(ContextBudgetError, match="even the smallest prompt"):
        fit(lambda level: [("human", "x" * 90_000)], 3, budget, "scientist")

    class BadRequest(Exception):
        status_code = 400

    e = overflow_from(BadRequest("Error code: 400 - This model's maximum context length "
                                 "is 4096 tokens. However, you requested 5000 tokens "
                                 "(5000 in the messages, 0 in the completion)."))
    assert e is not None and (e.window, e.prompt_tokens) == (4096, 5000)
    llama = overflow_from(BadRequest("the request exceeds the available context size, "
                                     "try increasing it (n_ctx: 4096)"))
    assert llama is not None and llama.window == 4096
    assert overflow_from(BadRequest("invalid api key")) is None
    learned = Budget(window=8192, reply=1200).learned(e, [("human", "y" * 15_000)])
    assert learned.window == 4096 and learned.chars_per_token < 3.0


def test_a_run_killed_between_two_calls_of_a_node_does_not_pay_for_the_first_again(
        tmp_path):
    """The scientist's first reply is unusable; the run dies during the repair call (the
    node never finishes, so the checkpoint is before it). Resumed in a "new process" (a
    new ledger object, a new model), the node reruns: the first call is answered from the
    ledger and only the repair is sent."""
    home = tmp_path / "home"
    garbage = "No JSON from me this time."

    def dying(messages):
        if "could not be used" in last_human(messages):
            raise KeyboardInterrupt  # the kill, mid-call
        return garbage

    first = ScriptedChat.answering(dying)
    ctx = Context(home=str(home), candidates=1, width=1, seeds=1, smoke=False,
                  warm_config=TINY["warm_config"], train_overrides=TINY["train_overrides"],
                  chat_models={"scientist": first, "coder": ScriptedChat.of(candidate_reply())})
    spec = objective_from_directive("accurate")
    with Archive(home) as a:
        run_id = a.start_run(spec.directive, {})
    app = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}, "recursion_limit": 200}
    with pytest.raises(KeyboardInterrupt):
        app.invoke({"run_id": run_id, "directive": spec.directive,
                    "objective": spec.model_dump(), "round": 0, "reference": None},
                   config, context=ctx)
    assert len(first.calls) == 2   # the first call, answered; the repair, killed

    calls._ledgers.clear()         # a new process: nothing of the old one in memory
    second = ScriptedChat.answering(lambda m: proposal_reply())
    ctx.chat_models["scientist"] = second
    app.invoke(None, config, context=ctx)
    assert len(second.calls) == 1 and "could not be used" in last_human(second.calls[0])
    assert garbage in second.calls[0][-2].content   # the cached reply, echoed back
    rows = [r for r in calls.Ledger(home).rows(run_id) if r["role"] == "scientist"]
    assert [r["cached"] for r in rows] == [0, 1, 0]  # sent, answered from the ledger, sent
    with Archive(home) as a:
        assert [c.status for c in a.candidates(run_id)] == ["evaluated", "evaluated"]


def test_the_window_is_read_from_the_server_and_the_prompts_name_the_backend(monkeypatch):
    from agents.backend import describe
    from agents.budget import budget_for
    from agents.coder import write_code_llm

    listing = {"object": "list", "data": [{"id": "small", "object": "model",
                                           "max_model_len": 4096}]}
    probe = ("from agents.budget import budget_for; from agents.llm import get_model; "
             "b = budget_for('coder', None, get_model('coder', {'model': 'openai:small'})); "
             "print(b.window, b.source)")
    with OpenAIServer.scripted(models=listing) as server:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("POISE_", "OPENAI_")) and "proxy" not in k.lower()}
        env.update(OPENAI_BASE_URL=server.base_url, PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "4096 the model server", out.stderr[-2000:]
    assert budget_for("coder", Context(context_tokens={"coder": 2048})).window == 2048

    model = ScriptedChat.of(candidate_reply())
    write_code_llm(model, PROPOSAL, "", backend=describe("verl"))
    prompt = model.calls[0][0].content
    assert "verl on GPUs" in prompt and "a KL term you compute is the KL that trains" in prompt
    assert "response tokens of the model's tokenizer" in prompt
    write_code_llm(model, PROPOSAL, "")
    assert "local trainer on the CPU testbed" in model.calls[1][0].content


@pytest.mark.parametrize("directive,length,expect,absent", [
    # an LLM objective read "keep it tight" as a length contract: the builtin scientist
    # follows the spec, not the directive's words
    ("keep it tight", "minimize", "the objective minimizes length", "asks for 'concise'"),
    # and "concise" read as accuracy only: no length rule fires
    ("concise", "ignore", None, "length"),
])
def test_the_builtin_scientist_follows_the_runs_objective_not_the_words(
        tmp_path, directive, length, expect, absent):
    from evals.objective import ObjectiveSpec

    home = tmp_path / "home"
    spec = ObjectiveSpec(directive=directive, length=length)
    ctx = Context(home=str(home), candidates=3, width=1, seeds=1, smoke=False, seed=1,
                  warm_config=TINY["warm_config"], train_overrides=TINY["train_overrides"])
    with Archive(home) as a:
        run_id = a.start_run(spec.directive, {})
    builder.compile(checkpointer=InMemorySaver()).invoke(
        {"run_id": run_id, "directive": spec.directive, "objective": spec.model_dump(),
         "round": 0, "reference": None},
        {"configurable": {"thread_id": "t"}, "recursion_limit": 400}, context=ctx)
    with Archive(home) as a:
        proposals = [c.proposal for c in a.candidates(run_id)][1:]
    assert len(proposals) == 3
    text = "\n".join(proposals)
    hypotheses = "\n".join(p.split("\nmechanism:")[0] for p in proposals)
    assert absent not in hypotheses
    if expect:
        assert expect in text
        # the parent (GRPO) held its own Overall: the contract's push on the length term
        assert "spend the slack on a stronger length term" in text
