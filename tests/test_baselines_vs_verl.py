"""The shipped baselines against verl's own estimators and policy losses.

Seeded CPU tests on random tensors: 5 groups of G=4 with ragged response masks, one group
where every sample is correct (zero variance) and one where every sample fails. Losses
are compared by value and by their gradient w.r.t. logp.
"""
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from trainers.algorithm import Rollouts, load_module
from trainers.baselines import baseline_path
from verl.trainer.ppo import core_algos
from verl.workers.config.actor import ActorConfig, PolicyLossConfig

G, B, T = 4, 5, 12


def baseline(name):
    return load_module(baseline_path(name), name=name)


def make_batch(seed=0, zero_var=True, max_length=T):
    gen = torch.Generator().manual_seed(seed)
    n = B * G
    correct = torch.rand(n, generator=gen) < 0.5
    if zero_var:
        correct[G:2 * G] = True    # group 1: all correct
        correct[2 * G:3 * G] = False  # group 2: all fail
    else:  # every group has at least one success and one failure
        correct[0::G], correct[1::G] = True, False
    valid = correct | (torch.rand(n, generator=gen) < 0.7)
    length = torch.randint(1, T + 1, (n,), generator=gen)
    mask = (torch.arange(T)[None, :] < length[:, None]).float()  # (N, T) ragged
    return Rollouts(correct=correct, valid=valid, length=length, max_length=max_length,
                    group=torch.arange(B).repeat_interleave(G), group_size=G,
                    response_mask=mask, step=3, total_steps=10)


def token_rewards(batch, rewards):
    """verl's input: the scalar reward on each response's last token."""
    out = torch.zeros_like(batch.response_mask)
    out[torch.arange(batch.n), batch.length - 1] = rewards
    return out


def verl_index(batch):
    return batch.group.numpy()


def as_tokens(adv, mask):
    return adv[:, None] * mask if adv.dim() == 1 else adv


def actor_config(low, high, agg, loss_mode="vanilla", clip_c=3.0, **extra):
    return ActorConfig(strategy="fsdp", rollout_n=G, ppo_micro_batch_size_per_gpu=1,
                       clip_ratio=low, clip_ratio_low=low, clip_ratio_high=high,
                       clip_ratio_c=clip_c, loss_agg_mode=agg,
                       policy_loss=PolicyLossConfig(loss_mode=loss_mode), **extra)


def loss_inputs(batch, adv, seed=1, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    old = -3.0 * torch.rand(batch.response_mask.shape, generator=gen)        # (N, T)
    logp = old + scale * torch.randn(old.shape, generator=gen)               # (N, T)
    return logp, old, as_tokens(adv, batch.response_mask)


def compare_losses(ours_fn, verl_fn, logp, old, adv, mask):
    """Value and d(loss)/d(logp) of ours vs verl; returns both metric dicts."""
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    ours, ours_metrics = ours_fn(a, old, adv, mask)
    ref, ref_metrics = verl_fn(old, b, adv, mask)
    ours.backward()
    ref.backward()
    assert_close(ours, ref)
    assert_close(a.grad, b.grad)
    assert a.grad.abs().sum() > 0
    return ours_metrics, ref_metrics


# ----------------------------------------------------------------------------- advantages

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_advantage_matches_verl_with_std(seed):
    grpo, batch = baseline("grpo"), make_batch(seed)
    rewards = grpo.shape_reward(batch)
    ours = grpo.compute_advantages(batch, rewards)
    ref, _ = core_algos.compute_grpo_outcome_advantage(
        token_rewards(batch, rewards), batch.response_mask, verl_index(batch),
        norm_adv_by_std_in_grpo=True)
    assert_close(as_tokens(ours, batch.response_mask), ref)
    assert bool((ours[G:3 * G] == 0).all())  # zero-variance groups carry no signal


@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_advantage_matches_verl_on_continuous_rewards(seed):
    batch = make_batch(seed)
    rewards = torch.randn(batch.n, generator=torch.Generator().manual_seed(seed))
    ours = baseline("grpo").compute_advantages(batch, rewards)
    ref, _ = core_algos.compute_grpo_outcome_advantage(
        token_rewards(batch, rewards), batch.response_mask, verl_index(batch))
    assert_close(as_tokens(ours, batch.response_mask), ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_dr_grpo_advantage_matches_verl_without_std(seed):
    batch = make_batch(seed)
    rewards = torch.randn(batch.n, generator=torch.Generator().manual_seed(seed))
    ours = baseline("dr_grpo").compute_advantages(batch, rewards)
    ref, _ = core_algos.compute_grpo_outcome_advantage(
        token_rewards(batch, rewards), batch.response_mask, verl_index(batch),
        norm_adv_by_std_in_grpo=False)
    assert_close(as_tokens(ours, batch.response_mask), ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_rloo_advantage_matches_verl(seed):
    batch = make_batch(seed)
    for rewards in (batch.correct.float(),
                    torch.randn(batch.n, generator=torch.Generator().manual_seed(seed))):
        ours = baseline("rloo").compute_advantages(batch, rewards)
        ref, _ = core_algos.compute_rloo_outcome_advantage(
            token_rewards(batch, rewards), batch.response_mask, verl_index(batch))
        assert_close(as_tokens(ours, batch.response_mask), ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_reinforce_pp_baseline_advantage_matches_verl(seed):
    batch = make_batch(seed)
    rewards = batch.correct.float()
    ours = baseline("reinforce_pp_baseline").compute_advantages(batch, rewards)
    assert ours.shape == batch.response_mask.shape
    ref, _ = core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage(
        token_rewards(batch, rewards), batch.response_mask, verl_index(batch))
    assert_close(ours, ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_gpg_advantage_matches_verl(seed):
    batch = make_batch(seed)
    rewards = batch.correct.float()
    ours = baseline("gpg").compute_advantages(batch, rewards)
    ref, _ = core_algos.compute_gpg_outcome_advantage(
        token_rewards(batch, rewards), batch.response_mask, verl_index(batch))
    assert_close(as_tokens(ours, batch.response_mask), ref)
    # alpha = N / #non-zero rewards scales the GRPO-without-std advantage up
    alpha = batch.n / int(batch.correct.sum())
    plain = baseline("dr_grpo").compute_advantages(batch, rewards)
    assert_close(ours, alpha * plain)


def test_dapo_advantage_matches_verl_grpo_without_zero_variance_groups():
    dapo, batch = baseline("dapo"), make_batch(3, zero_var=False, max_length=T + 2)
    rewards = dapo.shape_reward(batch)
    ours = dapo.compute_advantages(batch, rewards)
    ref, _ = core_algos.compute_grpo_outcome_advantage(
        token_rewards(batch, rewards), batch.response_mask, verl_index(batch))
    assert_close(as_tokens(ours, batch.response_mask), ref)


# ----------------------------------------------------------------------------- losses

@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_loss_matches_verl_vanilla_seq_mean_token_mean(seed):
    grpo, batch = baseline("grpo"), make_batch(seed)
    adv = grpo.compute_advantages(batch, grpo.shape_reward(batch))
    logp, old, adv = loss_inputs(batch, adv, seed)
    cfg = actor_config(0.2, 0.2, "seq-mean-token-mean")
    ours_m, ref_m = compare_losses(
        lambda lp, o, a, m: grpo.policy_loss(lp, o, a, m, batch),
        lambda o, lp, a, m: core_algos.compute_policy_loss_vanilla(
            o, lp, a, m, "seq-mean-token-mean", cfg),
        logp, old, adv, batch.response_mask)
    assert 0 < ref_m["actor/pg_clipfrac"] < 1
    for key in ("actor/pg_clipfrac", "actor/ppo_kl"):
        assert ours_m[key] == pytest.approx(ref_m[key], abs=1e-6)


def test_grpo_kl_term_matches_verl_low_var_kl():
    grpo, batch = baseline("grpo"), make_batch(0)
    adv = grpo.compute_advantages(batch, grpo.shape_reward(batch))
    logp, old, adv = loss_inputs(batch, adv)
    ref_logp = old + 0.5 * torch.randn(old.shape, generator=torch.Generator().manual_seed(9))
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    mask = batch.response_mask
    with_kl, metrics = grpo.policy_loss(a, old, adv, mask, batch, ref_logp=ref_logp)
    pg, _ = grpo.policy_loss(b, old, adv, batch.response_mask, batch)
    kl = core_algos.agg_loss(core_algos.kl_penalty(b, ref_logp, "low_var_kl"),
                             batch.response_mask, "seq-mean-token-mean")
    (pg + grpo.KL_COEF * kl).backward()
    with_kl.backward()
    assert_close(with_kl, (pg + grpo.KL_COEF * kl).detach())
    assert_close(a.grad, b.grad)
    assert metrics["actor/kl_loss"] == pytest.approx(float(kl.detach()), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_dr_grpo_loss_matches_verl_seq_mean_token_sum_norm(seed):
    dr = baseline("dr_grpo")
    batch = make_batch(seed, max_length=20)  # the constant differs from the tensor width T
    adv = dr.compute_advantages(batch, batch.correct.float())
    logp, old, adv = loss_inputs(batch, adv, seed)
    cfg = actor_config(0.2, 0.2, "seq-mean-token-sum-norm",
                       global_batch_info={"loss_scale_factor": batch.max_length})
    ours_m, ref_m = compare_losses(
        lambda lp, o, a, m: dr.policy_loss(lp, o, a, m, batch, ref_logp=o),  # KL ignored
        lambda o, lp, a, m: core_algos.compute_policy_loss_vanilla(
            o, lp, a, m, "seq-mean-token-sum-norm", cfg),
        logp, old, adv, batch.response_mask)
    assert "actor/kl_loss" not in ours_m
    for key in ("actor/pg_clipfrac", "actor/ppo_kl"):
        assert ours_m[key] == pytest.approx(ref_m[key], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_dapo_loss_matches_verl_clip_higher_token_mean(seed):
    dapo = baseline("dapo")
    # max_length T + 2: correct rewards stay > 0 >= failed ones, so no group is zero-variance
    batch = make_batch(seed, zero_var=False, max_length=T + 2)
    adv = dapo.compute_advantages(batch, dapo.shape_reward(batch))
    logp, old, adv = loss_inputs(batch, adv, seed, scale=0.4)
    cfg = actor_config(0.2, 0.28, "token-mean", clip_c=dapo.CLIP_C)
    ours_m, ref_m = compare_losses(
        lambda lp, o, a, m: dapo.policy_loss(lp, o, a, m, batch),
        lambda o, lp, a, m: core_algos.compute_policy_loss_vanilla(o, lp, a, m, "token-mean", cfg),
        logp, old, adv, batch.response_mask)
    assert ours_m["actor/zero_var_frac"] == 0.0
    for key in ("actor/pg_clipfrac", "actor/ppo_kl"):
        assert ours_m[key] == pytest.approx(ref_m[key], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_gspo_loss_matches_verl(seed):
    gspo, grpo, batch = baseline("gspo"), baseline("grpo"), make_batch(seed)
    adv = grpo.compute_advantages(batch, grpo.shape_reward(batch))
    # tiny per-token drift so that some sequence ratios fall outside 1 +- 3e-4 and some not
    logp, old, adv = loss_inputs(batch, adv, seed, scale=2e-3)
    cfg = actor_config(3e-4, 4e-4, "seq-mean-token-mean", loss_mode="gspo")
    ours_m, ref_m = compare_losses(
        lambda lp, o, a, m: gspo.policy_loss(lp, o, a, m, batch),
        lambda o, lp, a, m: core_algos.compute_policy_loss_gspo(
            o, lp, a, m, "seq-mean-token-mean", cfg),
        logp, old, adv, batch.response_mask)
    assert 0 < ref_m["actor/pg_clipfrac"] < 1
    for key in ("actor/pg_clipfrac", "actor/ppo_kl"):
        assert ours_m[key] == pytest.approx(ref_m[key], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_gpg_loss_matches_verl(seed):
    gpg, batch = baseline("gpg"), make_batch(seed)
    adv = gpg.compute_advantages(batch, batch.correct.float())
    logp, old, adv = loss_inputs(batch, adv, seed)
    cfg = actor_config(0.2, 0.2, "token-mean", loss_mode="gpg")
    compare_losses(
        lambda lp, o, a, m: gpg.policy_loss(lp, o, a, m, batch),
        lambda o, lp, a, m: core_algos.compute_policy_loss_gpg(o, lp, a, m, "token-mean", cfg),
        logp, old, adv, batch.response_mask)


@pytest.mark.parametrize("seed", [0, 1])
def test_cispo_loss_matches_verl(seed):
    cispo, grpo, batch = baseline("cispo"), baseline("grpo"), make_batch(seed)
    adv = grpo.compute_advantages(batch, grpo.shape_reward(batch))
    logp, old, adv = loss_inputs(batch, adv, seed, scale=0.5)
    cfg = actor_config(cispo.CLIP_LOW, cispo.CLIP_HIGH, "token-mean", loss_mode="cispo")
    ours_m, ref_m = compare_losses(
        lambda lp, o, a, m: cispo.policy_loss(lp, o, a, m, batch),
        lambda o, lp, a, m: core_algos.compute_policy_loss_cispo(o, lp, a, m, "token-mean", cfg),
        logp, old, adv, batch.response_mask)
    assert 0 < ref_m["actor/pg_clipfrac"] < 1
    for key in ("actor/pg_clipfrac", "actor/ppo_kl"):
        assert ours_m[key] == pytest.approx(ref_m[key], abs=1e-6)


def test_cispo_keeps_gradient_on_clipped_tokens():
    """Unlike PPO clipping, a token whose weight is clipped still gets a gradient."""
    cispo, grpo = baseline("cispo"), baseline("grpo")
    batch = make_batch(0)
    old = torch.full(batch.response_mask.shape, -1.0)
    logp = (old + 1.0).requires_grad_(True)  # ratio e > 1 + eps_high everywhere
    adv = torch.ones_like(old) * batch.response_mask
    cispo.policy_loss(logp, old, adv, batch.response_mask, batch)[0].backward()
    assert bool((logp.grad[batch.response_mask > 0] != 0).all())
    logp.grad = None
    grpo.policy_loss(logp, old, adv, batch.response_mask, batch)[0].backward()
    assert bool((logp.grad == 0).all())


# ----------------------------------------------------------------------- DAPO's own mechanisms

def test_dapo_overlong_penalty_values():
    dapo = baseline("dapo")
    lengths = torch.tensor([1, 7, 8, 9, 10, 10, 12])
    correct = torch.tensor([True, True, True, True, True, False, False])
    batch = Rollouts(correct=correct, valid=correct, length=lengths, max_length=10,
                     group=torch.zeros(7, dtype=torch.long), group_size=7,
                     response_mask=torch.ones(7, 12), step=0, total_steps=1)
    # L_cache = round(0.2 * 10) = 2: no penalty up to 8 tokens, then -1/2 per token, floor -1
    expected = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0, -1.0, -1.0])
    assert_close(dapo.shape_reward(batch), expected)


def test_dapo_overlong_cache_rounds_and_is_at_least_one():
    dapo = baseline("dapo")
    for max_length, cache in ((3, 1), (4, 1), (20, 4), (33, 7)):
        lengths = torch.tensor([max_length - cache, max_length - cache + 1, max_length])
        batch = Rollouts(correct=torch.zeros(3, dtype=torch.bool),
                         valid=torch.ones(3, dtype=torch.bool), length=lengths,
                         max_length=max_length, group=torch.zeros(3, dtype=torch.long),
                         group_size=3, response_mask=torch.ones(3, max_length), step=0,
                         total_steps=1)
        assert_close(dapo.shape_reward(batch), torch.tensor([0.0, -1.0 / cache, -1.0]))


def test_dapo_zero_variance_groups_are_filtered_from_the_token_mean():
    dapo = baseline("dapo")
    batch = make_batch(0, zero_var=True)
    mask = batch.response_mask
    rewards = dapo.shape_reward(batch)
    rewards[G:2 * G] = 0.7  # group 1 equal but non-trivial shaped rewards
    adv = dapo.compute_advantages(batch, rewards)
    assert bool((adv[G:3 * G] == 0).all()) and bool((adv[:G] != 0).any())
    logp, old, adv_t = loss_inputs(batch, adv, scale=0.4)
    keep = torch.ones(batch.n)
    keep[G:3 * G] = 0
    # hand reference: clip-higher surrogate, token-mean over the kept groups' tokens only
    ratio = (logp - old).exp()
    pg = torch.maximum(-adv_t * ratio, -adv_t * ratio.clamp(0.8, 1.28))
    pg = torch.where(adv_t < 0, torch.minimum(pg, -adv_t * dapo.CLIP_C), pg)
    kept_mask = mask * keep[:, None]
    expected = (pg * kept_mask).sum() / kept_mask.sum()
    loss, metrics = dapo.policy_loss(logp, old, adv_t, mask, batch)
    assert_close(loss, expected)
    assert metrics["actor/zero_var_frac"] == pytest.approx(2 / B)
    # the plain token mean (filtered groups still in the denominator) is smaller in size
    unfiltered = (pg * mask).sum() / mask.sum()
    assert not torch.isclose(loss, unfiltered)
    assert_close(unfiltered * mask.sum() / kept_mask.sum(), loss)


def test_dapo_all_groups_filtered_gives_zero_loss_with_a_graph():
    dapo = baseline("dapo")
    batch = make_batch(0)
    adv = dapo.compute_advantages(batch, torch.full((batch.n,), 0.5))
    assert bool((adv == 0).all())
    logp = torch.randn(batch.response_mask.shape).requires_grad_(True)
    loss, _ = dapo.policy_loss(logp, logp.detach(), as_tokens(adv, batch.response_mask),
                               batch.response_mask, batch)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
