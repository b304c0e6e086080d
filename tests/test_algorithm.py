"""The candidate contract (trainers/algorithm.py): loading, GRPO fallbacks, checked hooks."""
import pickle
import textwrap

import pytest
import torch
from torch.testing import assert_close

from trainers.algorithm import (Algorithm, CandidateError, Rollouts, code_hash, group_stats,
                                load_algorithm, load_module)
from trainers.baselines import BASELINES, baseline_path, grpo

G, B, T = 4, 3, 8


def make_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = B * G
    correct = torch.rand(n, generator=gen) < 0.5
    correct[:G] = True  # a zero-variance group
    length = torch.randint(1, T + 1, (n,), generator=gen)
    return Rollouts(correct=correct, valid=correct | (torch.rand(n, generator=gen) < 0.5),
                    length=length, max_length=T, group=torch.arange(B).repeat_interleave(G),
                    group_size=G,
                    response_mask=(torch.arange(T)[None, :] < length[:, None]).float(),
                    step=0, total_steps=4)


def loss_args(batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    old = -2.0 * torch.rand(batch.response_mask.shape, generator=gen)
    logp = (old + 0.2 * torch.randn(old.shape, generator=gen)).requires_grad_(True)
    adv = torch.randn(batch.n, generator=gen)[:, None] * batch.response_mask
    return logp, old, adv, batch.response_mask


def candidate(body: str) -> Algorithm:
    return Algorithm.from_source("import torch\nNAME = 'test'\n" + textwrap.dedent(body))


def raises(hook: str, match: str | None = None):
    class _Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(CandidateError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            assert self.info.value.hook == hook, self.info.value
            return handled
    return _Ctx()


# ----------------------------------------------------------------------------- loading

def test_load_from_source_text():
    algo = Algorithm.from_source("NAME = 'tiny'\ndef shape_reward(batch):\n"
                                 "    return batch.correct.float() * 2\n")
    assert algo.name == "tiny" and algo.defined == ("shape_reward",)
    batch = make_batch()
    assert_close(algo.shape_reward(batch), batch.correct.float() * 2)
    assert algo.source.startswith("NAME = 'tiny'")


def test_load_from_py_file(tmp_path):
    path = tmp_path / "cand.py"
    path.write_text("NAME = 'from-file'\ndef shape_reward(batch):\n"
                    "    return batch.valid.float()\n")
    for spec in (path, str(path)):
        algo = Algorithm.from_source(spec)
        assert algo.name == "from-file" and algo.source == path.read_text()
    assert load_algorithm(str(path)).name == "from-file"
    assert load_module(path).__file__ == str(path)


def test_syntax_error_names_load_and_the_line():
    with raises("load", match="line 3") as info:
        Algorithm.from_source("NAME = 'x'\n\ndef shape_reward(batch)\n    return 1\n")
    assert "syntax error" in info.value.message


def test_top_level_exception_is_a_load_error():
    with raises("load", match="ZeroDivisionError"):
        Algorithm.from_source("NAME = 'x'\n1 / 0\n")


def test_missing_file_is_a_load_error(tmp_path):
    with raises("load", match="no such candidate file"):
        load_algorithm(str(tmp_path / "absent.py"))


def test_non_callable_hook_is_rejected():
    with raises("policy_loss", match="not a function"):
        Algorithm.from_source("policy_loss = 3\n")


def test_unnamed_candidate():
    assert Algorithm.from_source("x = 1\n").name == "unnamed"


# ----------------------------------------------------------------------------- fallbacks

def test_omitted_hooks_fall_back_to_grpo():
    algo, batch = Algorithm.from_source("NAME = 'empty'\n"), make_batch(1)
    assert algo.defined == ()
    rewards = algo.shape_reward(batch)
    assert_close(rewards, grpo.shape_reward(batch))
    adv = algo.compute_advantages(batch, rewards)
    assert_close(adv, grpo.compute_advantages(batch, rewards))
    logp, old, adv_t, mask = loss_args(batch)
    ref_logp = old - 0.1
    loss, metrics = algo.policy_loss(logp, old, adv_t, mask, batch, ref_logp=ref_logp)
    ref_loss, ref_metrics = grpo.policy_loss(logp, old, adv_t, mask, batch, ref_logp=ref_logp)
    assert_close(loss, ref_loss)
    assert metrics == ref_metrics and "actor/kl_loss" in metrics


def test_a_defined_hook_overrides_only_itself():
    algo = candidate("""
        def shape_reward(batch):
            return batch.valid.float()
    """)
    batch = make_batch(2)
    rewards = algo.shape_reward(batch)
    assert_close(rewards, batch.valid.float())
    assert_close(algo.compute_advantages(batch, rewards),
                 grpo.compute_advantages(batch, batch.valid.float()))


# ----------------------------------------------------------------------------- checked hooks

@pytest.mark.parametrize("hook,body,match", [
    ("shape_reward", "def shape_reward(batch):\n    return torch.zeros(batch.n + 1)\n",
     "shape"),
    ("shape_reward", "def shape_reward(batch):\n    return torch.zeros(batch.n, 1)\n", "shape"),
    ("compute_advantages",
     "def compute_advantages(batch, rewards):\n"
     "    return torch.zeros(batch.n, batch.response_mask.shape[1] + 1)\n", "shape"),
    ("policy_loss",
     "def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):\n"
     "    return (logp * advantages).sum(-1), {}\n", "shape"),
])
def test_wrong_shapes(hook, body, match):
    _run_expecting(hook, body, match)


@pytest.mark.parametrize("hook,body", [
    ("shape_reward", "def shape_reward(batch):\n"
                     "    return torch.full((batch.n,), float('nan'))\n"),
    ("compute_advantages", "def compute_advantages(batch, rewards):\n"
                           "    return rewards / 0.0\n"),
    ("policy_loss", "def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):\n"
                    "    return (logp * float('inf')).sum(), {}\n"),
])
def test_non_finite_outputs(hook, body):
    _run_expecting(hook, body, "non-finite")


@pytest.mark.parametrize("hook,body,match", [
    ("shape_reward", "def shape_reward(batch):\n    return [1.0] * batch.n\n", "tensor"),
    ("compute_advantages", "def compute_advantages(batch, rewards):\n"
                           "    return rewards.tolist()\n", "tensor"),
    ("policy_loss", "def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):\n"
                    "    return 0.5, {}\n", "tensor"),
    ("policy_loss", "def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):\n"
                    "    return (logp * advantages).sum()\n", r"\(loss, metrics\)"),
])
def test_non_tensor_returns(hook, body, match):
    _run_expecting(hook, body, match)


@pytest.mark.parametrize("hook,signature", [
    ("shape_reward", "batch"),
    ("compute_advantages", "batch, rewards"),
    ("policy_loss", "logp, old_logp, advantages, mask, batch, ref_logp=None"),
])
def test_a_raising_hook_is_named(hook, signature):
    body = f"def {hook}({signature}):\n    raise KeyError('boom')\n"
    err = _run_expecting(hook, body, "raised KeyError")
    assert isinstance(err.__cause__, KeyError)


def test_wrong_signature_is_a_hook_error():
    _run_expecting("policy_loss", "def policy_loss(logp, old_logp, advantages, mask, batch):\n"
                                  "    return logp.sum(), {}\n", "TypeError")


@pytest.mark.parametrize("metrics,match", [
    ("[('actor/x', 1.0)]", "metrics must be a dict"),
    ("{'actor/x': 'high'}", "not a number"),
    ("{'actor/x': torch.ones(3)}", "not a number"),
])
def test_bad_metrics(metrics, match):
    body = ("def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):\n"
            f"    return (logp * advantages).sum(), {metrics}\n")
    _run_expecting("policy_loss", body, match)


def test_metrics_become_floats():
    algo = candidate("""
        def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
            return (logp * advantages).mean(), {"actor/a": torch.tensor(0.5), "actor/b": 2}
    """)
    batch = make_batch()
    _, metrics = algo.policy_loss(*loss_args(batch), batch)
    assert metrics == {"actor/a": 0.5, "actor/b": 2.0}
    assert all(type(v) is float for v in metrics.values())


def test_a_detached_loss_is_rejected():
    body = ("def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):\n"
            "    return (logp * advantages).sum().detach(), {}\n")
    _run_expecting("policy_loss", body, "no gradient")


def test_integer_and_bool_outputs_become_float():
    algo = candidate("""
        def shape_reward(batch):
            return batch.correct
        def compute_advantages(batch, rewards):
            return (rewards > 0).long()
    """)
    batch = make_batch()
    rewards = algo.shape_reward(batch)
    assert rewards.dtype == torch.float32
    assert algo.compute_advantages(batch, rewards).dtype == torch.float32


def test_token_level_advantages_are_accepted():
    algo = candidate("""
        def compute_advantages(batch, rewards):
            return rewards[:, None] * batch.response_mask
    """)
    batch = make_batch()
    assert algo.compute_advantages(batch, batch.correct.float()).shape == (batch.n, T)


def _run_expecting(hook: str, body: str, match: str) -> CandidateError:
    algo, batch = candidate(body), make_batch()
    with raises(hook, match=match) as info:
        if hook == "shape_reward":
            algo.shape_reward(batch)
        elif hook == "compute_advantages":
            algo.compute_advantages(batch, batch.correct.float())
        else:
            algo.policy_loss(*loss_args(batch), batch)
    return info.value


def test_candidate_error_survives_pickling():
    err = pickle.loads(pickle.dumps(CandidateError("policy_loss", "returned NaN")))
    assert err.hook == "policy_loss" and err.message == "returned NaN"
    assert str(err) == "policy_loss: returned NaN"


# ----------------------------------------------------------------------------- Rollouts

def test_select_renumbers_groups():
    batch = make_batch()
    index = torch.cat([torch.arange(2 * G, 3 * G), torch.arange(0, G)])  # groups 2 then 0
    sub = batch.select(index)
    assert sub.n == 2 * G and sub.num_groups == 2
    assert sub.group.tolist() == [1] * G + [0] * G  # sorted renumbering: 0 -> 0, 2 -> 1
    assert_close(sub.length, batch.length[index])
    assert_close(sub.response_mask, batch.response_mask[index])
    assert (sub.max_length, sub.group_size, sub.step, sub.total_steps) == (T, G, 0, 4)
    # hooks run on the sub-batch with the renumbered groups
    assert_close(grpo.compute_advantages(sub, sub.correct.float()),
                 grpo.compute_advantages(batch, batch.correct.float())[index])


def test_rollouts_validates_shapes_and_consistency():
    batch = make_batch()
    with pytest.raises(ValueError, match="length"):
        Rollouts(correct=batch.correct, valid=batch.valid, length=batch.length[:-1],
                 max_length=T, group=batch.group, group_size=G,
                 response_mask=batch.response_mask, step=0, total_steps=1)
    with pytest.raises(ValueError, match="correct but not valid"):
        Rollouts(correct=torch.ones(batch.n, dtype=torch.bool),
                 valid=torch.zeros(batch.n, dtype=torch.bool), length=batch.length,
                 max_length=T, group=batch.group, group_size=G,
                 response_mask=batch.response_mask, step=0, total_steps=1)


def test_group_stats():
    values = torch.tensor([1.0, 2.0, 3.0, 5.0, 7.0])
    group = torch.tensor([0, 0, 0, 1, 2])
    mean, std, count = group_stats(values, group)
    assert_close(mean, torch.tensor([2.0, 2.0, 2.0, 5.0, 7.0]))
    assert_close(std, torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))
    assert_close(count, torch.tensor([3.0, 3.0, 3.0, 1.0, 1.0]))


def test_code_hash_ignores_trailing_whitespace_and_blank_lines():
    assert code_hash("a = 1\n\n\nb = 2\n") == code_hash("a = 1   \nb = 2")
    assert code_hash("a = 1\n") != code_hash("a = 2\n")


# ----------------------------------------------------------------------------- baselines

@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_loads_and_runs_all_hooks(name):
    algo = load_algorithm(name)
    module = load_module(baseline_path(name))
    slug = module.NAME
    assert algo.name == slug == name.replace("_", "-")
    assert load_algorithm(slug).name == slug
    batch = make_batch(5)
    rewards = algo.shape_reward(batch)
    adv = algo.compute_advantages(batch, rewards)
    adv_t = adv[:, None] * batch.response_mask if adv.dim() == 1 else adv
    logp, old, _, mask = loss_args(batch)
    loss, metrics = algo.policy_loss(logp, old, adv_t, mask, batch, ref_logp=old.detach())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert logp.grad.abs().sum() > 0
    assert metrics and all(k.startswith("actor/") for k in metrics)


def test_baselines_import_only_torch_and_math():
    for name in BASELINES:
        for line in baseline_path(name).read_text().splitlines():
            if line.startswith(("import ", "from ")):
                assert line.split()[1].split(".")[0] in ("torch", "math"), (name, line)


def test_unknown_algorithm_is_a_clear_error():
    with raises("load", match="unknown algorithm 'ppo-xyz'") as info:
        load_algorithm("ppo-xyz")
    assert "grpo" in info.value.message and ".py" in info.value.message
