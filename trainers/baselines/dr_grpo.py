"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783).

Departs from GRPO (trainers/baselines/grpo.py) only to remove its two normalization
biases, and drops the KL term:
- Advantage: r - mean_group, not divided by the group std (verl's
  compute_grpo_outcome_advantage with norm_adv_by_std_in_grpo=False). A group of one
  sample keeps its reward as advantage (baseline 0), as in verl.
- Loss: the same PPO clipped surrogate (eps 0.2, dual-clip c=3), summed over each
  response's tokens and divided by a constant, batch.max_length, instead of the
  response's own length, then averaged over responses (verl's loss_agg_mode
  "seq-mean-token-sum-norm" with loss_scale_factor = max_length).
- No KL penalty to the reference policy.
The reward is GRPO's (1 correct, else 0).
"""
import torch

NAME = "dr-grpo"
CLIP_LOW, CLIP_HIGH, CLIP_C = 0.2, 0.2, 3.0


def compute_advantages(batch, rewards):
    g = int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, batch.group, torch.ones_like(rewards))  # (B,)
    mean = rewards.new_zeros(g).index_add_(0, batch.group, rewards) / count            # (B,)
    mean = torch.where(count > 1, mean, torch.zeros_like(mean))
    return rewards - mean[batch.group]                                                 # (N,)


def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)                  # (N, T)
    ratio = log_ratio.exp()
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH)
    clipped = torch.maximum(pg1, pg2)
    per_token = torch.where(advantages < 0,
                            torch.minimum(clipped, -advantages * CLIP_C), clipped)  # (N, T)
    seq_sum = (per_token * mask).sum(-1)                               # (N,) token sum
    has_tokens = (mask.sum(-1) > 0).float()                            # (N,) empty rows don't count
    loss = (seq_sum * has_tokens).sum() / has_tokens.sum().clamp_min(1.0) / batch.max_length
    n_tok = mask.sum().clamp_min(1.0)
    metrics = {
        "actor/pg_loss": float(loss.detach()),
        "actor/pg_clipfrac": float(((pg2 > pg1).float() * mask).sum() / n_tok),
        "actor/ppo_kl": float((-log_ratio.detach() * mask).sum() / n_tok),
    }
    return loss, metrics
