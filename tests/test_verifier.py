"""The verifier (agents/verifier.py): static, dynamic, consistency and smoke stages.

Cases that launch sandbox children run together in a module fixture, three at a time;
the tests read their reports.
"""
import ast
import glob
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agents.verifier import (VerifierReport, builtin_consistency_judge, check_consistency,
                             static_problems, verify)
from trainers.baselines import BASELINES, baseline_source

ROOT = Path(__file__).resolve().parent.parent
KNOWN = {**{name: baseline_source(name) for name in BASELINES},
         **{Path(p).stem: Path(p).read_text()
            for p in sorted(glob.glob(str(ROOT / "evals/calibration/*.py"))
                           + glob.glob(str(ROOT / "evals/length_frontier/*.py")))}}


def cand(body: str, name: str = "test-cand") -> str:
    return f"import torch\nNAME = {name!r}\n" + textwrap.dedent(body)


LENGTH_REWARD = cand("""
    def shape_reward(batch):
        return batch.correct.float() * (1 - 0.5 * batch.length.float() / batch.max_length)
    """)
MAX_NORM_ADV = cand("""
    def compute_advantages(batch, rewards):
        g = int(batch.group.max()) + 1
        count = rewards.new_zeros(g).index_add_(0, batch.group, torch.ones_like(rewards))
        mean = rewards.new_zeros(g).index_add_(0, batch.group, rewards) / count
        return rewards - mean[batch.group]
    """)
LATE_FAILURE = cand("""
    def shape_reward(batch):
        if batch.total_steps == 5:  # never true on the edge-case batches, true in training
            raise RuntimeError("only in training")
        return batch.correct.float()
    """)


def _cases(home: Path) -> dict[str, tuple[str, str | None, dict]]:
    dyn = {"smoke": False}
    cases = {f"known:{name}": (src, None, dyn) for name, src in KNOWN.items()}
    cases.update({
        "smoke:grpo": (KNOWN["grpo"], None, {"home": home}),
        "smoke:length": (LENGTH_REWARD, "A length penalty on correct answers: the reward "
                         "shrinks with length. Advantages and loss are GRPO's.",
                         {"home": home}),
        "smoke:late_failure": (LATE_FAILURE, None, {"home": home}),
        "nan": (cand("def shape_reward(batch):\n    return batch.correct.float() / 0.0 "
                     "* 0.0\n"), None, dyn),
        "hang": (cand("def policy_loss(logp, old_logp, advantages, mask, batch, "
                      "ref_logp=None):\n    while True:\n        pass\n"), None,
                 {**dyn, "dynamic_timeout_s": 6}),
        "contradiction": (MAX_NORM_ADV, "Penalize long answers: a length penalty on the "
                          "reward of correct responses.", {"home": home}),
    })
    return cases


@pytest.fixture(scope="module")
def reports(tiny_warm) -> dict[str, VerifierReport]:
    _, home, _ = tiny_warm  # the verifier's smoke warm start, already built and cached
    cases = _cases(home)

    def run(name):
        source, proposal, kw = cases[name]
        return verify(source, proposal, **kw)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(cases, pool.map(run, cases)))


# ----------------------------------------------------------------------------- static

@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_algorithms_pass_the_static_stage(name):
    assert static_problems(KNOWN[name]) == ([], [])


@pytest.mark.parametrize("source, fragment", [
    ("import torch\nNAME = 'x'\nALPHA = 1\n", "defines none of the hooks"),
    ("import torch\ndef shape_reward(batch):\n    return batch.correct.float()\n",
     "NAME is missing"),
    (cand("def shape_reward(batch):\n    return batch.correct.float()\n", "My Algo"),
     "NAME must be a slug"),
    ("import torch\nNAME = 3\ndef shape_reward(b):\n    return b.correct.float()\n",
     "NAME must be a string literal"),
    (cand("def shape_reward(batch, scale):\n    return batch.correct.float()\n"),
     "shape_reward has the wrong signature"),
    (cand("def policy_loss(logp, old_logp, advantages, mask, batch):\n"
          "    return logp.sum(), {}\n"), "policy_loss has the wrong signature"),
    (cand("shape_reward = 3\n"), "must be defined with `def`"),
    (cand("import os\ndef shape_reward(batch):\n    return batch.correct.float()\n"),
     "imports 'os'"),
    (cand("def shape_reward(batch):\n    return eval('batch.correct.float()')\n"), "eval"),
    ("def shape_reward(batch:\n", "syntax error"),
    ("", "empty"),
])
def test_static_stage_failures_say_what_to_fix(source, fragment):
    report = verify(source, smoke=False)  # fails before any sandbox is started
    assert not report.passed and report.stage == "static"
    assert any(fragment in f for f in report.feedback), report.feedback
    assert "dynamic" not in report.metrics


def test_signatures_with_defaults_or_kwargs_are_accepted():
    src = cand("""
        def shape_reward(batch, scale=1.0):
            return batch.correct.float() * scale
        def policy_loss(logp, old_logp, advantages, mask, batch, **kwargs):
            return -(advantages * logp * mask).sum() / mask.sum(), {}
        """)
    assert static_problems(src) == ([], [])


# ----------------------------------------------------------------------------- dynamic + smoke

def test_every_known_algorithm_passes_static_and_dynamic(reports):
    for name in KNOWN:
        report = reports[f"known:{name}"]
        assert report.passed, (name, report.feedback)
        assert report.stage is None and report.feedback == []
        assert report.metrics["dynamic"]["batches"] >= 9
        assert "smoke" not in report.metrics


def test_smoke_training_passes_for_grpo_and_a_length_reward(reports):
    for name in ("smoke:grpo", "smoke:length"):
        report = reports[name]
        assert report.passed, (name, report.feedback)
        smoke = report.metrics["smoke"]
        assert smoke["steps_done"] == 5 and smoke["kind"] == "ok"
        assert set(smoke["last"]) >= {"reward", "entropy", "grad_norm"}
    assert reports["smoke:length"].metrics["consistency"]["judge"] == "builtin rule"


def test_a_hook_that_breaks_only_in_training_fails_the_smoke_stage(reports):
    report = reports["smoke:late_failure"]
    assert not report.passed and report.stage == "smoke"
    assert "only in training" in report.feedback[0]
    assert "smoke training run" in report.feedback[0]


def test_non_finite_hook_fails_the_dynamic_stage(reports):
    report = reports["nan"]
    assert not report.passed and report.stage == "dynamic"
    assert "shape_reward" in report.feedback[0] and "non-finite" in report.feedback[0]
    assert "edge-case batches" in report.feedback[0]


def test_hanging_hook_fails_the_dynamic_stage_at_its_timeout(reports):
    report = reports["hang"]
    assert not report.passed and report.stage == "dynamic"
    assert "did not finish in time" in report.feedback[0]
    assert report.metrics["dynamic"]["kind"] == "timeout"
    assert report.metrics["dynamic"]["wall_s"] < 10


def test_contradicted_proposal_fails_before_the_smoke_run(reports):
    report = reports["contradiction"]
    assert not report.passed and report.stage == "consistency"
    assert "does not define shape_reward" in report.feedback[0]
    assert "smoke" not in report.metrics  # the cheap check spared the training run
    assert any("compute_advantages" in w for w in report.warnings)


# ----------------------------------------------------------------------------- consistency

@pytest.mark.parametrize("proposal, source, fragment", [
    ("Add a bonus for short correct answers.", MAX_NORM_ADV, "define shape_reward"),
    ("Normalize advantages by the group's max instead of its std.", LENGTH_REWARD,
     "define compute_advantages"),
    ("Use an asymmetric clip range, 0.2 below and 0.3 above.", LENGTH_REWARD,
     "define policy_loss"),
    ("Aggregate the loss per token over the batch.", LENGTH_REWARD, "define policy_loss"),
    ("Drop the KL penalty.", MAX_NORM_ADV, "policy_loss"),
])
def test_consistency_rule_flags_claims_the_code_does_not_back(proposal, source, fragment):
    problems, _ = check_consistency(proposal, source)
    assert problems and fragment in problems[0], problems


def test_consistency_rule_accepts_matching_and_unchanged_claims():
    proposal = ("Shape the reward with a length penalty on correct answers only. "
                "Advantages and loss are GRPO's.")
    assert check_consistency(proposal, LENGTH_REWARD) == ([], [])
    # One sentence naming two parts is backed by either hook.
    assert check_consistency("Rewards are normalized by the group max.", MAX_NORM_ADV)[0] == []
    # Titles in quotes are not claims.
    assert check_consistency('Inspired by "Robust Reward Models"; advantages are '
                             'centered, not scaled.', MAX_NORM_ADV)[0] == []


def test_a_hook_the_proposal_never_mentions_is_only_a_warning():
    problems, warnings = check_consistency("Center the advantage within each group.",
                                           LENGTH_REWARD + MAX_NORM_ADV.split("\n", 2)[2])
    assert problems == []
    assert len(warnings) == 1 and "shape_reward" in warnings[0]


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "rloo", "gspo", "cispo",
                                  "length_gated", "validity_mask", "gated_010",
                                  "gated_025", "gated_all_correct", "gated_no_std"])
def test_known_algorithms_docstrings_are_consistent_with_their_code(name):
    doc = ast.get_docstring(ast.parse(KNOWN[name]))
    assert check_consistency(doc, KNOWN[name])[0] == []


def test_builtin_judge_has_the_pluggable_shape():
    ok, reason = builtin_consistency_judge("Add a length bonus to the reward.", MAX_NORM_ADV)
    assert ok is False and "shape_reward" in reason
    assert builtin_consistency_judge("Length penalty on the reward.", LENGTH_REWARD)[0]


def test_a_custom_judge_replaces_the_rule(monkeypatch):
    import agents.verifier as verifier_module

    monkeypatch.setattr(verifier_module, "run_in_sandbox", _fake_sandbox)  # no child needed
    calls = []

    def judge(proposal, source):
        calls.append((proposal, source))
        return False, "the code divides by the group max, the proposal says the std"

    report = verify(MAX_NORM_ADV, "Normalize advantages by the std.", smoke=True,
                    consistency_judge=judge)
    assert calls == [("Normalize advantages by the std.", MAX_NORM_ADV)]
    assert report.stage == "consistency" and "divides by the group max" in report.feedback[0]
    assert "smoke" not in report.metrics

    def broken(proposal, source):
        raise TimeoutError("LLM unreachable")

    report = verify(LENGTH_REWARD, "A length penalty on the reward.", smoke=False,
                    consistency_judge=broken)
    assert report.passed and "LLM unreachable" in report.warnings[0]


def test_no_proposal_skips_consistency(monkeypatch):
    import agents.verifier as verifier_module

    monkeypatch.setattr(verifier_module, "run_in_sandbox", _fake_sandbox)
    report = verify(MAX_NORM_ADV, None, smoke=False)
    assert report.passed and report.metrics["consistency"] == {"skipped": "no proposal text"}


def _fake_sandbox(task, payload, **kw):
    from trainers.sandbox import SandboxResult

    return SandboxResult(True, {"defined": [], "batches": []}, "", "ok", "", 0.0)
