"""DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at
Scale", arXiv:2503.14476).

Departs from GRPO (trainers/baselines/grpo.py) in four ways, and drops the KL term:
- Overlong reward shaping (soft overlong punishment): with a cache of
  L_cache = max(1, round(0.2 * max_length)) tokens, a response longer than
  max_length - L_cache gets ((max_length - L_cache) - length) / L_cache added to its
  reward (linear, -1 at max_length, never below -1). Base reward 1 correct, else 0.
- Zero-variance group filtering (the paper's dynamic sampling, without resampling):
  a group of >= 2 samples whose shaped rewards are all equal gets advantage exactly 0,
  and the loss drops its tokens from both the sum and the token-mean denominator, as
  if the group had been filtered out of the batch. (A group of one sample is kept, as
  verl's DAPO recipe keeps it.) Other advantages are GRPO's, std-normalized.
- Clip-higher: eps_low 0.2, eps_high 0.28 (dual-clip c=10, as verl's DAPO recipe).
- Token-level loss: the mean over all kept response tokens of the batch ("token-mean").
- No KL penalty to the reference policy.
"""
import torch

NAME = "dapo"
CLIP_LOW, CLIP_HIGH, CLIP_C = 0.2, 0.28, 10.0
OVERLONG_CACHE_FRACTION = 0.2
EPS = 1e-6


def shape_reward(batch):
    cache = max(1, round(OVERLONG_CACHE_FRACTION * batch.max_length))
    excess = (batch.length.float() - (batch.max_length - cache)).clamp_min(0.0)  # (N,)
    return batch.correct.float() - (excess / cache).clamp_max(1.0)             # (N,)


def compute_advantages(batch, rewards):
    group, g = batch.group, int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, group, torch.ones_like(rewards))   # (B,)
    mean = rewards.new_zeros(g).index_add_(0, group, rewards) / count             # (B,)
    sq = rewards.new_zeros(g).index_add_(0, group, (rewards - mean[group]) ** 2)
    std = torch.where(count > 1, (sq / (count - 1).clamp_min(1)).sqrt(), torch.ones_like(sq))
    mean = torch.where(count > 1, mean, torch.zeros_like(mean))
    adv = (rewards - mean[group]) / (std[group] + EPS)                             # (N,)
    # Exact zeros (not float residue) mark a zero-variance group for policy_loss.
    hi = rewards.new_full((g,), -float("inf")).scatter_reduce_(0, group, rewards, "amax")
    lo = rewards.new_full((g,), float("inf")).scatter_reduce_(0, group, rewards, "amin")
    zero_var = (hi == lo) & (count > 1)                                            # (B,)
    return torch.where(zero_var[group], torch.zeros_like(adv), adv)


def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)                  # (N, T)
    ratio = log_ratio.exp()
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH)
    clipped = torch.maximum(pg1, pg2)
    per_token = torch.where(advantages < 0,
                            torch.minimum(clipped, -advantages * CLIP_C), clipped)  # (N, T)
    # A group is filtered when every advantage on its tokens is zero.
    group, g = batch.group, int(batch.group.max()) + 1
    signal = (advantages.detach().abs() * mask).sum(-1)                # (N,)
    group_signal = signal.new_zeros(g).index_add_(0, group, signal)    # (B,)
    count = signal.new_zeros(g).index_add_(0, group, torch.ones_like(signal))
    keep = ((group_signal > 0) | (count == 1))[group].float()          # (N,)
    loss_mask = mask * keep[:, None]                                    # (N, T)
    loss = (per_token * loss_mask).sum() / loss_mask.sum().clamp_min(1.0)
    n_tok = loss_mask.sum().clamp_min(1.0)
    metrics = {
        "actor/pg_loss": float(loss.detach()),
        "actor/pg_clipfrac": float(((pg2 > pg1).float() * loss_mask).sum() / n_tok),
        "actor/ppo_kl": float((-log_ratio.detach() * loss_mask).sum() / n_tok),
        "actor/zero_var_frac": float(1.0 - keep.mean()),
    }
    return loss, metrics
