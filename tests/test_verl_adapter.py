"""The same module, the same numbers: every shipped baseline and a few rendered builtin
candidates, registered in verl's own registries, give the local trainer's advantages
(through verl's ``compute_advantage`` on a ``DataProto``) and loss values and gradients
(through verl's own ``ppo_loss`` on the micro-batch ``TensorDict`` its v1 engine workers
pass, wrapped by the plugin's runtime).

Batches: 5 prompts x G=4 samples, ragged responses, one all-correct and one all-fail
group, some invalid samples; verl's token-level rewards carry the outcome code on each
response's last token, as verl's agent loop writes ``rm_scores``. The micro-batch is
built by tests/standins/verl_batch.py.
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

from agents.builtin.genes import Genome, gene
from standins.verl_batch import micro_batch, rows, unpadded
from trainers.algorithm import Algorithm, Rollouts
from trainers.baselines import BASELINES, baseline_source
from trainers.source import code_hash
from trainers.verl import adapter
from trainers.verl.adapter import (CandidateError, Settings, StepClock, decode_outcomes,
                                   outcome_code, register_candidate)
from trainers.verl.launcher import KL_AGG_MODE
from trainers.verl.plugin import PluginError, analyze, write_plugin
from verl import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils.skip.skip_manager import SkipManager
from verl.workers.config.actor import ActorConfig, PolicyLossConfig
from verl.workers.utils import losses

REPO = Path(__file__).resolve().parent.parent
G, B, T = 4, 5, 12
SETTINGS = Settings(max_length=16, total_steps=10, run_token="test", group_size=G)


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


VALIDITY_IN_LOSS = '''
import torch
NAME = "valid-loss"
def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
    m = mask * _valid(batch)[:, None]
    return -(logp * advantages * m).sum() / m.sum().clamp_min(1.0), {}
def _valid(batch):
    return batch.valid.float()
'''

_GRPO = Genome.grpo()
RENDERED = {}
for _genome in (
        # validity masking in the loss + analytic (Bernoulli) variance scaling
        _GRPO.with_genes(gene("validity", "loss"), gene("normalization", "bernoulli")),
        # length penalty on correct answers + zero-variance group filter + token mean
        _GRPO.with_genes(gene("reward", "gated_length"), gene("filtering", "zero_variance"),
                         gene("aggregation", "token_mean")),
        # k3 KL warmed up over training (reads step and ref_logp in the loss), clip-higher
        _GRPO.with_genes(gene("kl", "k3"), gene("schedule", "warmup", target="kl_beta"),
                         gene("clipping", "clip_higher"))):
    _text = _genome.render()
    RENDERED[Algorithm.from_source(_text).name] = _text

CANDIDATES = (*BASELINES, *SHAPED, "valid-loss", *RENDERED)


def source_of(name):
    if name in SHAPED:
        return SHAPED[name]
    if name in RENDERED:
        return RENDERED[name]
    return VALIDITY_IN_LOSS if name == "valid-loss" else baseline_source(name)


@pytest.fixture(scope="module")
def registered():
    return {name: register_candidate(source_of(name), SETTINGS) for name in CANDIDATES}


@pytest.fixture(autouse=True)
def fresh_step():
    SkipManager.set_step(-1)
    yield
    SkipManager.set_step(-1)


# ----------------------------------------------------------------------------- registries

def test_every_baseline_is_in_verls_registries_under_a_unique_name(registered):
    names = {c.name for c in registered.values()}
    assert len(names) == len(registered)
    for cand in registered.values():
        assert cand.name.startswith("poise_") and code_hash(cand.source)[:8] in cand.name
        assert core_algos.get_adv_estimator_fn(cand.name) == cand.estimate_advantages
        assert getattr(core_algos.get_policy_loss_fn(cand.name), "__poise_loss__", False)


def test_registering_again_is_idempotent_and_a_clash_is_refused(registered):
    again = register_candidate(baseline_source("grpo"), SETTINGS)
    assert again is registered["grpo"]
    with pytest.raises(ValueError, match="already registered"):
        register_candidate(baseline_source("rloo"), SETTINGS, name=registered["grpo"].name)
    with pytest.raises(ValueError, match="already registered"):
        register_candidate(baseline_source("grpo"),
                           Settings(max_length=99, total_steps=10, run_token="test",
                                    group_size=G))


# ----------------------------------------------------------------------------- advantages

@pytest.mark.parametrize("name", CANDIDATES)
@pytest.mark.parametrize("seed", [0, 1])
def test_advantages_through_verl_match_the_local_hooks(registered, name, seed):
    """verl's trainer-side compute_advantage on a DataProto, as ray_trainer calls it."""
    batch = make_batch(seed)
    algo = Algorithm.from_source(source_of(name))
    rewards, mask, index = verl_inputs(batch)
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards,
                                        "response_mask": mask},
                               non_tensors={"uid": index})
    data = compute_advantage(data, adv_estimator=registered[name].name, config=AlgoConfig())
    adv, returns = data.batch["advantages"], data.batch["returns"]
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
    data = micro_batch(response_mask=mask, old_log_probs=mask, advantages=adv,
                       rm_scores=rewards, uid=index.tolist())
    assert cand.loss_rollouts(data, mask).step == 6       # what the loss sees
    SkipManager.set_step(-1)  # outside a trainer: its own call count
    cand.estimate_advantages(rewards, mask, index=index)
    assert cand.clock.current() == 1


# ----------------------------------------------------------------------------- losses

def verl_micro_batch(batch, adv, seed=1, scale=0.3, ref_scale=0.1, **global_info):
    """(local loss inputs, verl's micro-batch TensorDict) for one batch."""
    gen = torch.Generator().manual_seed(seed)
    old = -3.0 * torch.rand(batch.response_mask.shape, generator=gen)
    logp = old + scale * torch.randn(old.shape, generator=gen)
    ref = old + ref_scale * torch.randn(old.shape, generator=gen)
    rewards, mask, index = verl_inputs(batch)
    data = micro_batch(response_mask=mask, old_log_probs=old, advantages=adv,
                       rm_scores=rewards, uid=index.tolist(), ref_log_prob=ref, **global_info)
    return (logp, old, ref), data


def actor_config(name, uses_ref=True):
    """The actor config the launcher's overrides give verl's ppo_loss."""
    return ActorConfig(strategy="fsdp", rollout_n=G, ppo_micro_batch_size_per_gpu=1,
                       policy_loss=PolicyLossConfig(loss_mode=name),
                       loss_agg_mode=KL_AGG_MODE, use_kl_loss=uses_ref, kl_loss_coef=0.0,
                       entropy_coeff=0.0)


def both_losses(name, registered, batch, logp, old, ref, adv, data, config=None):
    """(local loss, local grad, verl loss, verl grad, verl metrics): the local hooks on
    the batch, and verl's own ppo_loss (wrapped by the plugin) on the micro-batch."""
    algo = Algorithm.from_source(source_of(name))
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    ours, _ = algo.policy_loss(a, old, adv, batch.response_mask, batch, ref_logp=ref)
    cand = registered[name]
    config = config or actor_config(cand.name)
    theirs, metrics = losses.ppo_loss(config, {"log_probs": unpadded(b, batch.response_mask)},
                                      data)
    ours.backward()
    theirs.backward()
    return ours, a.grad, theirs, b.grad, metrics


@pytest.mark.parametrize("name", CANDIDATES)
@pytest.mark.parametrize("seed", [0, 1])
def test_losses_through_verls_ppo_loss_match_the_local_hooks(registered, name, seed):
    """Every baseline and candidate, zero-variance groups included: the loss value and the
    gradient through verl's ppo_loss on its micro-batch equal the local trainer's."""
    cand = registered[name]
    SkipManager.set_step(4)
    cand.clock.advance()                                 # the estimator publishes step 3
    batch = make_batch(seed, step=3)
    algo = Algorithm.from_source(source_of(name))
    adv = local_advantages(algo, batch)
    (logp, old, ref), data = verl_micro_batch(batch, adv, seed,
                                              scale=2e-3 if "gspo" in name else 0.3)
    ours, g_ours, theirs, g_theirs, metrics = both_losses(name, registered, batch, logp,
                                                         old, ref, adv, data)
    assert_close(theirs, ours)
    assert_close(g_theirs, g_ours)
    assert g_ours.abs().sum() > 0
    assert metrics["poise/partial_groups"].values == [0.0]  # whole groups


def test_a_candidates_kl_is_used_as_written(registered):
    """The rendered k3-KL candidate's loss moves with the reference log-probs verl
    passes; verl's own KL term (coefficient 0) adds nothing."""
    name = "ch-wu-kl-grpo"
    assert analyze(source_of(name)).uses_ref
    SkipManager.set_step(1)
    registered[name].clock.advance()                     # step 0, as in the local batch
    batch = make_batch(0)
    adv = local_advantages(Algorithm.from_source(source_of(name)), batch)
    near, near_data = verl_micro_batch(batch, adv, ref_scale=0.01)
    far, far_data = verl_micro_batch(batch, adv, ref_scale=1.0)
    l_near = both_losses(name, registered, batch, *near, adv, near_data)
    l_far = both_losses(name, registered, batch, *far, adv, far_data)
    assert_close(l_near[2], l_near[0])
    assert_close(l_far[2], l_far[0])
    assert float(l_far[2]) > float(l_near[2])      # a larger KL to the reference
    assert analyze(SHAPED["format-penalty"]).uses_ref    # GRPO's loss (omitted): its KL
    assert analyze(VALIDITY_IN_LOSS).uses_ref is False


@pytest.mark.parametrize("dp_size", [1, 2])
def test_micro_batch_losses_add_up_to_the_global_batch_loss(registered, dp_size):
    """verl sums micro-batch losses (and averages over data-parallel ranks): with
    global_batch_info the pieces of a sequence-mean loss (GRPO's) reproduce the full
    batch's loss and gradient, whatever the split."""
    batch = make_batch(1)
    algo = Algorithm.from_source(source_of("grpo"))
    adv = local_advantages(algo, batch)
    (logp, old, ref), data = verl_micro_batch(batch, adv, dp_size=dp_size,
                                              global_batch_size=batch.n)
    full = logp.clone().requires_grad_(True)
    expected, _ = algo.policy_loss(full, old, adv, batch.response_mask, batch, ref_logp=ref)
    expected.backward()
    cfg = actor_config(registered["grpo"].name)
    piece = logp.clone().requires_grad_(True)
    total = 0.0
    for idx in torch.arange(batch.n).chunk(4):  # micro-batches across ranks
        loss, _ = losses.ppo_loss(
            cfg, {"log_probs": unpadded(piece[idx], batch.response_mask[idx])},
            rows(data, idx))
        (loss / dp_size).backward()   # DDP averages the ranks' gradients
        total = total + loss.detach() / dp_size
    assert_close(total, expected.detach())
    assert_close(piece.grad, full.grad)


def test_micro_batches_of_whole_groups_give_a_group_reading_loss_its_local_numbers(
        registered):
    """DAPO's loss drops zero-variance groups: on micro-batches of whole groups (what the
    launcher asks verl for) each piece is the local loss of those rows, weighed by its
    share of the mini-batch's sequences. Documented divergence: DAPO's token-mean over the
    full batch weighs by tokens, so the sum of pieces is not the full-batch loss."""
    batch = make_batch(0, zero_var=True)
    algo = Algorithm.from_source(source_of("dapo"))
    adv = local_advantages(algo, batch)
    (logp, old, ref), data = verl_micro_batch(batch, adv, global_batch_size=batch.n)
    cfg = actor_config(registered["dapo"].name)
    total = 0.0
    for idx in torch.arange(batch.n).split(2 * G):
        loss, metrics = losses.ppo_loss(
            cfg, {"log_probs": unpadded(logp[idx], batch.response_mask[idx])},
            rows(data, idx))
        assert metrics["poise/partial_groups"].values == [0.0]
        part = batch.select(idx)
        local, _ = algo.policy_loss(logp[idx], old[idx], adv[idx], part.response_mask, part,
                                    ref_logp=ref[idx])
        assert_close(loss, local * len(idx) / batch.n)
        total = total + loss
    full, _ = algo.policy_loss(logp, old, adv, batch.response_mask, batch, ref_logp=ref)
    assert not torch.isclose(total, full)


def test_a_split_group_is_counted(registered):
    batch = make_batch(1)
    adv = local_advantages(Algorithm.from_source(source_of("grpo")), batch)
    (logp, _, _), data = verl_micro_batch(batch, adv)
    part = rows(data, torch.arange(6))          # group 0 whole, 2 rows of group 1
    _, metrics = losses.ppo_loss(actor_config(registered["grpo"].name),
                                 {"log_probs": unpadded(logp[:6], batch.response_mask[:6])},
                                 part)
    assert metrics["poise/partial_groups"].values == [pytest.approx(2 / 6)]


def test_outcomes_and_groups_are_readable_in_verls_loss(registered):
    """A loss that reads batch.valid (and, through a helper, the groups) is no longer
    refused: it gets the micro-batch's outcomes from verl's rm_scores."""
    a = analyze(VALIDITY_IN_LOSS)
    assert "valid" in a.loss_reads and not a.problems
    batch = make_batch(3)
    algo = Algorithm.from_source(VALIDITY_IN_LOSS)
    adv = local_advantages(algo, batch)
    (logp, old, ref), data = verl_micro_batch(batch, adv)
    ours, _, theirs, _, _ = both_losses("valid-loss", registered, batch, logp, old, ref,
                                        adv, data)
    assert_close(theirs, ours)
    # and it is not the loss over every row: the invalid rows were dropped
    every = -(logp * adv * batch.response_mask).sum() / batch.response_mask.sum()
    assert not torch.isclose(theirs.detach(), every)


def test_a_poise_loss_outside_ppo_loss_is_a_clear_error(registered):
    batch = make_batch(0)
    fn = core_algos.get_policy_loss_fn(registered["grpo"].name)
    logp = torch.zeros(batch.response_mask.shape, requires_grad=True)
    with pytest.raises(CandidateError, match="use_v1"):
        fn(old_log_prob=logp.detach(), log_prob=logp, advantages=torch.ones_like(logp),
           response_mask=batch.response_mask.bool(), loss_agg_mode="token-mean",
           config=actor_config(registered["grpo"].name), rollout_is_weights=None)


def test_other_loss_modes_pass_through_the_wrapper_untouched(registered):
    """verl's own vanilla loss through the wrapped ppo_loss equals the unwrapped one."""
    batch = make_batch(0)
    adv = local_advantages(Algorithm.from_source(source_of("grpo")), batch)
    (logp, _, _), data = verl_micro_batch(batch, adv)
    assert getattr(losses.ppo_loss, "__poise_wrapper__", False)
    cfg = actor_config("vanilla", uses_ref=False)
    out = [fn(cfg, {"log_probs": unpadded(logp, batch.response_mask)}, data)[0]
           for fn in (losses.ppo_loss, losses.ppo_loss.__wrapped__)]
    assert_close(out[0], out[1])


def test_rollout_correction_weights_are_refused(registered):
    batch = make_batch(0)
    adv = local_advantages(Algorithm.from_source(source_of("grpo")), batch)
    (logp, _, _), data = verl_micro_batch(batch, adv)
    data["rollout_is_weights"] = torch.ones_like(logp)
    with pytest.raises(CandidateError, match="rollout correction"):
        losses.ppo_loss(actor_config(registered["grpo"].name),
                        {"log_probs": unpadded(logp, batch.response_mask)}, data)


# ----------------------------------------------------------------------------- plugin

def test_a_candidate_that_fails_the_static_check_is_refused_before_launch(tmp_path):
    with pytest.raises(PluginError, match="static check"):
        write_plugin("import os\nNAME = 'x'\n", SETTINGS, tmp_path)


BLOCK_POISE = '''
import sys
class _NoPoise:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("trainers", "agents", "graph", "memory", "evals"):
            raise ImportError("POISE import in a plugin: " + name)
sys.meta_path.insert(0, _NoPoise())
'''


def test_plugin_reaches_verl_through_external_modules_and_the_reward_loader(tmp_path):
    """A fresh interpreter where POISE cannot be imported, with VERL_USE_EXTERNAL_MODULES:
    `import verl` registers the candidate; verl's reward loader then loads compute_score
    from the same file, and the registered loss runs inside verl's ppo_loss."""
    plugin = write_plugin(baseline_source("gspo"),
                          Settings(max_length=16, total_steps=3, run_token="ship"), tmp_path)
    assert plugin.path.read_text().count(repr(baseline_source("gspo"))) == 1
    script = BLOCK_POISE + f'''
import verl
from omegaconf import OmegaConf
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.workers.utils import losses
name = {plugin.name!r}
assert name in core_algos.ADV_ESTIMATOR_REGISTRY, "estimator not registered"
assert name in core_algos.POLICY_LOSS_REGISTRY, "loss not registered"
assert getattr(losses.ppo_loss, "__poise_wrapper__", False), "ppo_loss not wrapped"
cfg = OmegaConf.create({{"reward": {{"custom_reward_function": {{
    "path": {str(plugin.path)!r}, "name": "compute_score"}}}}}})
score = get_custom_reward_fn(cfg)(data_source="math", solution_str="\\\\boxed{{1/2}}",
                                   ground_truth="0.5", extra_info={{}})
assert not any(m.split(".")[0] == "trainers" for m in sys.modules), "POISE was imported"
print("OK", score["score"], score["acc"], score["valid"])
'''
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": plugin.module,
           "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
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
