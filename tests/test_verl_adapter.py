"""The VERL adapter: every shipped baseline, registered in verl's own registries, gives
the local trainer's numbers through verl's call signatures and call sites.

Batches: 5 prompts x G=4 samples, ragged responses, one all-correct and one all-fail
group, some invalid samples; verl's token-level rewards carry the outcome code on each
response's last token, as verl's agent loop writes ``rm_scores``.
"""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from trainers.algorithm import Algorithm, CandidateError, Rollouts
from trainers.baselines import BASELINES, baseline_source
from trainers.verl import adapter
from trainers.verl.adapter import (LossBatch, Settings, StepClock, decode_outcomes,
                                   outcome_code, register_candidate)
from trainers.verl.plugin import PluginError, analyze, write_plugin
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos
from verl.utils.skip.skip_manager import SkipManager
from verl.workers.config.actor import ActorConfig, PolicyLossConfig

REPO = Path(__file__).resolve().parent.parent
G, B, T = 4, 5, 12
SETTINGS = Settings(max_length=16, total_steps=10, run_token="test")


def make_batch(seed=0, zero_var=True, step=0):
    gen = torch.Generator().manual_seed(seed)
    n = B * G
    correct = torch.rand(n, generator=gen) < 0.5
    if zero_var:
        correct[G:2 * G] = True
        correct[2 * G:3 * G] = False
    else:
        correct[0::G], correct[1::G] = True, False
    valid = correct | (torch.rand(n, generator=gen) < 0.7)
    length = torch.randint(1, T + 1, (n,), generator=gen)
    mask = (torch.arange(T)[None, :] < length[:, None]).float()             # (N, T)
    return Rollouts(correct=correct, valid=valid, length=length,
                    max_length=SETTINGS.max_length,
                    group=torch.arange(B).repeat_interleave(G), group_size=G,
                    response_mask=mask, step=step, total_steps=SETTINGS.total_steps)


def verl_inputs(batch):
    """(token_level_rewards, response_mask, index) as verl hands them to an estimator."""
    codes = torch.tensor([outcome_code(bool(c), bool(v))
                          for c, v in zip(batch.correct, batch.valid)])
    rewards = torch.zeros_like(batch.response_mask)
    rewards[torch.arange(batch.n), batch.length - 1] = codes
    uids = [str(uuid.uuid4()) for _ in range(B)]
    index = np.array([uids[g] for g in batch.group.tolist()], dtype=object)
    return rewards, batch.response_mask.clone(), index


def local_advantages(algo, batch):
    adv = algo.compute_advantages(batch, algo.shape_reward(batch))
    return (adv[:, None] if adv.dim() == 1 else adv) * batch.response_mask


# Candidates whose reward reads what only the outcome code and the mask carry.
SHAPED = {
    "format-penalty": '''
import torch
NAME = "format-penalty"
def shape_reward(batch):
    return batch.correct.float() - 0.5 * (~batch.valid).float()        # (N,)
''',
    "dace": '''
import torch
NAME = "dace"
def shape_reward(batch):
    frac = batch.length.float() / batch.max_length                      # (N,)
    return batch.correct.float() * (1.0 - 0.3 * frac)
''',
}


def source_of(name):
    return SHAPED[name] if name in SHAPED else baseline_source(name)


@pytest.fixture(scope="module")
def registered():
    return {name: register_candidate(source_of(name), SETTINGS)
            for name in (*BASELINES, *SHAPED)}


@pytest.fixture(autouse=True)
def fresh_step():
    SkipManager.set_step(-1)
    yield
    SkipManager.set_step(-1)


def actor_config(**global_info):
    cfg = ActorConfig(strategy="fsdp", rollout_n=G, ppo_micro_batch_size_per_gpu=1,
                      policy_loss=PolicyLossConfig(loss_mode="vanilla"))
    cfg.global_batch_info.update(global_info)
    return cfg


# ----------------------------------------------------------------------------- registries

def test_every_baseline_is_in_verls_registries_under_a_unique_name(registered):
    names = {c.name for c in registered.values()}
    assert len(names) == len(registered)
    for cand in registered.values():
        assert cand.name.startswith("poise_") and cand.source_hash[:8] in cand.name
        assert core_algos.get_adv_estimator_fn(cand.name) == cand.estimate_advantages
        assert core_algos.get_policy_loss_fn(cand.name) == cand.compute_policy_loss


def test_registering_again_is_idempotent_and_a_clash_is_refused(registered):
    again = register_candidate(baseline_source("grpo"), SETTINGS)
    assert again is registered["grpo"]
    with pytest.raises(ValueError, match="already registered"):
        register_candidate(baseline_source("rloo"), SETTINGS, name=registered["grpo"].name)
    with pytest.raises(ValueError, match="already registered"):
        register_candidate(baseline_source("grpo"),
                           Settings(max_length=99, total_steps=10, run_token="test"))


# ----------------------------------------------------------------------------- advantages

@pytest.mark.parametrize("name", (*BASELINES, *SHAPED))
@pytest.mark.parametrize("seed", [0, 1])
def test_advantages_through_verl_match_the_local_hooks(registered, name, seed):
    batch = make_batch(seed)
    algo = Algorithm.from_source(source_of(name))
    rewards, mask, index = verl_inputs(batch)
    fn = core_algos.get_adv_estimator_fn(registered[name].name)
    adv, returns = fn(token_level_rewards=rewards, response_mask=mask, index=index,
                      config=AlgoConfig())
    assert_close(adv, local_advantages(algo, batch))
    assert_close(returns, adv)
    assert adv.abs().sum() > 0


def test_groups_come_from_index_not_row_order(registered):
    batch = make_batch(2)
    rewards, mask, index = verl_inputs(batch)
    perm = torch.randperm(batch.n, generator=torch.Generator().manual_seed(5))
    fn = core_algos.get_adv_estimator_fn(registered["rloo"].name)
    adv, _ = fn(token_level_rewards=rewards[perm], response_mask=mask[perm],
                index=index[perm.numpy()], config=AlgoConfig())
    expected = local_advantages(Algorithm.from_source(baseline_source("rloo")), batch)
    assert_close(adv, expected[perm])


def test_outcome_codes_round_trip_and_bad_rewards_are_refused():
    batch = make_batch(4)
    rewards, mask, _ = verl_inputs(batch)
    correct, valid, length = decode_outcomes(rewards, mask)
    assert torch.equal(correct, batch.correct) and torch.equal(valid, batch.valid)
    assert torch.equal(length, batch.length)
    with pytest.raises(ValueError, match="not a POISE outcome code"):
        decode_outcomes(rewards + 0.3 * mask, mask)   # e.g. a KL-shaped reward
    with pytest.raises(ValueError, match="index"):
        adapter.group_ids(None, 3)


def test_the_step_is_verls_global_step_when_a_trainer_runs():
    source = '''
import torch
NAME = "step-probe"
def shape_reward(batch):
    return batch.correct.float() * (1.0 + batch.step) / batch.total_steps
'''
    cand = register_candidate(source, SETTINGS)
    batch = make_batch(0)
    rewards, mask, index = verl_inputs(batch)
    SkipManager.set_step(7)   # verl's 1-based global step -> 0-based step 6
    adv, _ = cand.estimate_advantages(rewards, mask, index=index)
    probe = make_batch(0, step=6)
    expected = local_advantages(Algorithm.from_source(source), probe)
    assert_close(adv, expected)
    assert cand.clock.current() == 6
    assert LossBatch(mask, SETTINGS, cand.clock).step == 6
    SkipManager.set_step(-1)  # outside a trainer: its own call count
    cand.estimate_advantages(rewards, mask, index=index)
    assert cand.clock.current() == 1


# ----------------------------------------------------------------------------- losses

def loss_inputs(batch, adv, seed=1, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    old = -3.0 * torch.rand(batch.response_mask.shape, generator=gen)
    logp = old + scale * torch.randn(old.shape, generator=gen)
    return logp, old, adv


def both_losses(name, registered, batch, logp, old, adv, config=None):
    """(local loss, local grad, verl loss, verl grad)."""
    algo = Algorithm.from_source(baseline_source(name))
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    ours, _ = algo.policy_loss(a, old, adv, batch.response_mask, batch, ref_logp=None)
    fn = core_algos.get_policy_loss_fn(registered[name].name)
    theirs, metrics = fn(old_log_prob=old, log_prob=b, advantages=adv,
                         response_mask=batch.response_mask.bool(), loss_agg_mode="token-mean",
                         config=config or actor_config(), rollout_is_weights=None)
    ours.backward()
    theirs.backward()
    assert isinstance(metrics, dict) and all(isinstance(v, float) for v in metrics.values())
    return ours, a.grad, theirs, b.grad


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("seed", [0, 1])
def test_losses_through_verl_match_the_local_hooks(registered, name, seed):
    # no zero-variance group: the one case where DAPO's loss needs group ids it cannot get
    batch = make_batch(seed, zero_var=(name != "dapo"))
    algo = Algorithm.from_source(baseline_source(name))
    adv = local_advantages(algo, batch)
    logp, old, adv = loss_inputs(batch, adv, seed, scale=2e-3 if name == "gspo" else 0.3)
    ours, g_ours, theirs, g_theirs = both_losses(name, registered, batch, logp, old, adv)
    assert_close(theirs, ours)
    assert_close(g_theirs, g_ours)
    assert g_ours.abs().sum() > 0


def test_dapo_zero_variance_filter_is_a_no_op_in_verls_loss(registered):
    """Documented divergence: without group ids the loss keeps zero-variance groups'
    tokens in the token-mean denominator (their advantages are still zero)."""
    batch = make_batch(0, zero_var=True)
    algo = Algorithm.from_source(baseline_source("dapo"))
    logp, old, adv = loss_inputs(batch, local_advantages(algo, batch))
    ours, _, theirs, _ = both_losses("dapo", registered, batch, logp, old, adv)
    assert not torch.isclose(theirs, ours)
    kept = batch.response_mask.clone()
    kept[G:3 * G] = 0
    assert_close(theirs * batch.response_mask.sum() / kept.sum(), ours)


@pytest.mark.parametrize("dp_size", [1, 2])
def test_micro_batch_losses_add_up_to_the_global_batch_loss(registered, dp_size):
    """verl sums micro-batch losses (and averages over data-parallel ranks): with
    global_batch_info the pieces reproduce the full batch's loss and gradient."""
    batch = make_batch(1)
    algo = Algorithm.from_source(baseline_source("grpo"))
    logp, old, adv = loss_inputs(batch, local_advantages(algo, batch))
    full = logp.clone().requires_grad_(True)
    ref, _ = algo.policy_loss(full, old, adv, batch.response_mask, batch)
    ref.backward()
    fn = core_algos.get_policy_loss_fn(registered["grpo"].name)
    cfg = actor_config(dp_size=dp_size, global_batch_size=batch.n, batch_num_tokens=None)
    piece = logp.clone().requires_grad_(True)
    total = 0.0
    for rows in torch.arange(batch.n).chunk(4):  # micro-batches across ranks
        loss, _ = fn(old_log_prob=old[rows], log_prob=piece[rows], advantages=adv[rows],
                     response_mask=batch.response_mask[rows].bool(),
                     loss_agg_mode="seq-mean-token-mean", config=cfg)
        (loss / dp_size).backward()   # DDP averages the ranks' gradients
        total = total + loss.detach() / dp_size
    assert_close(total, ref.detach())
    assert_close(piece.grad, full.grad)


def test_outcomes_are_not_readable_in_verls_loss():
    mask = torch.ones(3, 4)
    view = LossBatch(mask, SETTINGS, StepClock("nobody/none/step"))
    assert view.length.tolist() == [4, 4, 4] and view.group.tolist() == [0, 1, 2]
    for field in ("correct", "valid", "step"):
        with pytest.raises(CandidateError):
            getattr(view, field)


def test_rollout_correction_weights_are_refused(registered):
    batch = make_batch(0)
    fn = core_algos.get_policy_loss_fn(registered["grpo"].name)
    logp = torch.zeros(batch.response_mask.shape, requires_grad=True)
    with pytest.raises(CandidateError, match="rollout correction"):
        fn(old_log_prob=logp.detach(), log_prob=logp, advantages=torch.ones_like(logp),
           response_mask=batch.response_mask.bool(), loss_agg_mode="token-mean",
           config=actor_config(), rollout_is_weights=torch.ones_like(logp))


# ----------------------------------------------------------------------------- plugin

VALIDITY_IN_LOSS = '''
import torch
NAME = "valid-loss"
def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
    m = mask * _valid(batch)[:, None]
    return -(logp * advantages * m).sum() / m.sum().clamp_min(1.0), {}
def _valid(batch):
    return batch.valid.float()
'''


def test_a_loss_that_reads_outcomes_is_refused_before_launch(tmp_path):
    a = analyze(VALIDITY_IN_LOSS)
    assert "valid" in a.loss_reads and a.problems
    with pytest.raises(PluginError, match="batch.valid"):
        write_plugin(VALIDITY_IN_LOSS, SETTINGS, tmp_path)
    with pytest.raises(PluginError, match="static check"):
        write_plugin("import os\nNAME = 'x'\n", SETTINGS, tmp_path)


def test_plugin_reaches_verl_through_external_modules_and_the_reward_loader(tmp_path):
    """A fresh interpreter with VERL_USE_EXTERNAL_MODULES: `import verl` registers the
    candidate; verl's reward loader then loads compute_score from the same file."""
    plugin = write_plugin(baseline_source("gspo"),
                          Settings(max_length=16, total_steps=3, run_token="ship"), tmp_path)
    assert plugin.path.read_text().count(repr(baseline_source("gspo"))) == 1
    script = f'''
import verl
from omegaconf import OmegaConf
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.reward import get_custom_reward_fn
name = {plugin.name!r}
assert name in core_algos.ADV_ESTIMATOR_REGISTRY, "estimator not registered"
assert name in core_algos.POLICY_LOSS_REGISTRY, "loss not registered"
cfg = OmegaConf.create({{"reward": {{"custom_reward_function": {{
    "path": {str(plugin.path)!r}, "name": "compute_score"}}}}}})
score = get_custom_reward_fn(cfg)(data_source="math", solution_str="\\\\boxed{{1/2}}",
                                   ground_truth="0.5", extra_info={{}})
print("OK", score["score"], score["acc"], score["valid"])
'''
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": plugin.module,
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK 1.0 1.0 1.0" in proc.stdout


@pytest.mark.slow
def test_the_step_reaches_a_ray_worker_through_internal_kv():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        clock = StepClock("probe/ray/step")
        SkipManager.set_step(12)
        assert clock.advance() == 11

        @ray.remote
        def read_step():
            from trainers.verl.adapter import StepClock
            return StepClock("probe/ray/step").current()

        assert ray.get(read_step.remote()) == 11
    finally:
        ray.shutdown()
