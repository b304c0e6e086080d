"""The LLM path through the whole graph with scripted fake chat models (no network, no
key): malformed JSON, a wrong code fence, code that crashes, code that hangs, and code
that contradicts its proposal. Real LangGraph, SQLite, Chroma, embeddings and sandbox."""
import json
from pathlib import Path

from langgraph.checkpoint.memory import InMemorySaver

from evals.objective import objective_from_directive
from fakes import ScriptedChat, candidate_code, candidate_reply, proposal_reply
from graph.context import Context
from graph.graph import builder
from memory.archive import Archive

TINY = json.loads((Path(__file__).parent / "data" / "tiny_context.json").read_text())


def _fake(replies):
    return ScriptedChat.of(*replies)


def _proposal(name, hypothesis, mechanism, changes):
    return proposal_reply(name=name, hypothesis=hypothesis, mechanism=mechanism,
                          changes=changes, math="r_i = c_i * (1 - 0.3 * L_i / L_max)")


CRASHES = candidate_reply("{name}").replace(
    "return batch.correct", "raise RuntimeError('boom')\n    return batch.correct")
HANGS = '''```python
NAME = "{name}"


def compute_advantages(batch, rewards):
    while True:
        pass
```'''
CONTRADICTS = '''```python
NAME = "{name}"


def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
    loss = -(advantages * logp * mask).sum() / mask.sum()
    return loss, {{}}
```'''


def test_llm_agents_through_the_graph(tmp_path):
    home = tmp_path / "home"
    scientist = _fake([
        '{"name": "gated-len", "hypothesis": "shorter',                       # truncated
        _proposal("gated-len", "penalize length of correct answers only",
                  "the reward penalizes length on correct answers", ["shape_reward"]),
        _proposal("hang-adv", "a new advantage baseline", "advantage baseline change",
                  ["compute_advantages"]),
        _proposal("len-reward", "a length penalty in the reward",
                  "the reward gets a length penalty", ["shape_reward"]),
    ])
    coder = _fake([
        "```javascript\nconsole.log('hi')\n```",                             # wrong fence
        CRASHES.format(name="gated-len"),                                     # crashes
        candidate_reply("gated-len"),                                         # fixed
        HANGS.format(name="hang-adv"), HANGS.format(name="hang-adv"),
        HANGS.format(name="hang-adv"),                                        # gives up
        CONTRADICTS.format(name="len-reward"), CONTRADICTS.format(name="len-reward"),
        CONTRADICTS.format(name="len-reward"),                                # contradicts
    ])
    analyst = _fake([json.dumps({"text": "Length fell on correct answers; accuracy held.",
                                 "tags": ["Length collapse", "made-up-tag"]})])
    ctx = Context(home=str(home), candidates=3, width=1, seeds=1, smoke=False,
                  verify_timeout_s=5, warm_config=TINY["warm_config"],
                  train_overrides=TINY["train_overrides"],
                  chat_models={"scientist": scientist, "coder": coder, "analyst": analyst})
    spec = objective_from_directive("accurate and concise")
    with Archive(home) as a:
        run_id = a.start_run(spec.directive, {})
    app = builder.compile(checkpointer=InMemorySaver())
    app.invoke({"run_id": run_id, "directive": spec.directive,
                "objective": spec.model_dump(), "round": 0, "reference": None},
               {"configurable": {"thread_id": "t"}, "recursion_limit": 200}, context=ctx)
    with Archive(home) as a:
        by_name = {c.name: c for c in a.candidates(run_id)}
        assert set(by_name) == {"grpo", "gated-len", "hang-adv", "len-reward"}
        good = by_name["gated-len"]
        assert good.status == "evaluated", good.error
        assert good.code == candidate_code("gated-len")  # the fixed reply, archived
        refl = a.reflections(good.id)[0]
        assert refl.text.startswith("Length fell") and refl.tags == ["length-collapse"]
        hang = by_name["hang-adv"]
        assert hang.status == "failed_verification"
        assert "timeout" in hang.error.lower() or "time" in hang.error.lower(), hang.error
        bad = by_name["len-reward"]
        assert bad.status == "failed_verification" and "consistency" in bad.error, bad.error
        for c in (hang, bad):  # failures are evidence: archived with a reflection
            assert a.reflections(c.id)
            assert a.parents(c.id)
    # the graph tells the LLM scientist the run's objective, a contract under "concise"
    assert scientist.calls and all(
        f"the run's objective:\n\n    {spec.describe()}" in call[0].content
        for call in scientist.calls)
