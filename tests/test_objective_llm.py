"""The LLM scientist writes the objective spec; bad replies fall back to the keywords."""
import json

from agents.objective import objective_for
from fakes import ScriptedChat


def _fake(*replies):
    return ScriptedChat.of(*replies)


def test_llm_spec_is_used_and_the_directive_kept_verbatim():
    reply = json.dumps({"directive": "something else", "length": "minimize",
                        "margin": 0.5, "penalty": 20})
    spec, how = objective_for("accurate, and keep it brief", _fake(reply))
    assert (spec.length, spec.margin, spec.penalty) == ("minimize", 0.5, 20)
    assert spec.directive == "accurate, and keep it brief"
    assert how == "written by the LLM scientist"


def test_out_of_range_then_repaired():
    bad = json.dumps({"directive": "d", "length": "minimize", "margin": 70})
    good = json.dumps({"directive": "d", "length": "minimize", "margin": 2})
    spec, how = objective_for("concise", _fake(bad, good))
    assert spec.margin == 2 and how.startswith("written")


def test_no_valid_spec_falls_back_to_keywords():
    spec, how = objective_for("accurate and concise", _fake("no", "still no", "nope"))
    assert spec.length == "minimize" and spec.margin == 1  # the builtin "concise"
    assert how.startswith("builtin keyword mapping (the LLM gave no valid spec")
    spec, how = objective_for("accurate", None)
    assert spec.length == "ignore" and how == "builtin keyword mapping"
