"""CISPO (MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with
Lightning Attention", arXiv:2506.13585).

Departs from GRPO (trainers/baselines/grpo.py) only in the loss, and drops the KL term:
- Instead of clipping the surrogate (which zeroes the gradient of clipped tokens), CISPO
  clips the importance-sampling weight and stops its gradient, so every token keeps a
  REINFORCE gradient: loss_t = -sg(clip(ratio_t, 1 - eps_low, 1 + eps_high)) * A * logp_t,
  as verl's compute_policy_loss_cispo.
- Clip range: the paper's choice, not verl's default 0.2/0.2. The paper imposes no
  lower bound on the weight (eps_low "set to a large value"); eps_low = 1.0 does that,
  since ratio > 0. It tunes eps_high without reporting a value, so eps_high keeps
  verl's default 0.2.
- Token-level aggregation over the batch ("token-mean"), as the paper and verl.
- No KL penalty to the reference policy.
Reward and advantage (group-normalized) are GRPO's.
"""
import torch

NAME = "cispo"
CLIP_LOW, CLIP_HIGH = 1.0, 0.2


def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)                  # (N, T)
    ratio = log_ratio.exp()
    weight = ratio.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH)                  # (N, T)
    per_token = -weight.detach() * advantages * logp                   # (N, T)
    n_tok = mask.sum().clamp_min(1.0)
    loss = (per_token * mask).sum() / n_tok
    metrics = {
        "actor/pg_loss": float(loss.detach()),
        "actor/pg_clipfrac": float(((ratio != weight).float() * mask).sum() / n_tok),
        "actor/ppo_kl": float((-log_ratio.detach() * mask).sum() / n_tok),
    }
    return loss, metrics
