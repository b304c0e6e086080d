"""GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300): the default for omitted hooks.

Reward: 1 for a correct answer, 0 otherwise (an invalid answer is never correct).
Advantage: (r - mean_group) / (std_group + 1e-6), unbiased std; a group of one sample
gets mean 0 and std 1 (as verl's compute_grpo_outcome_advantage).
Loss: PPO clipped surrogate (eps 0.2, dual-clip c=3 on negative advantages), averaged
over each response's tokens then over responses ("seq-mean-token-mean"), plus a
k3 ("low_var_kl") penalty to the reference policy with beta 0.001 when ref_logp is given.
"""
import torch

NAME = "grpo"
CLIP_LOW, CLIP_HIGH, CLIP_C = 0.2, 0.2, 3.0
KL_COEF = 0.001
EPS = 1e-6


def shape_reward(batch):
    return batch.correct.float()


def compute_advantages(batch, rewards):
    g = int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, batch.group, torch.ones_like(rewards))
    mean = rewards.new_zeros(g).index_add_(0, batch.group, rewards) / count
    var = rewards.new_zeros(g).index_add_(0, batch.group, (rewards - mean[batch.group]) ** 2)
    std = torch.where(count > 1, (var / (count - 1).clamp_min(1)).sqrt(), rewards.new_ones(g))
    mean = torch.where(count > 1, mean, rewards.new_zeros(g))
    return (rewards - mean[batch.group]) / (std[batch.group] + EPS)


def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH)
    clipped = torch.maximum(pg1, pg2)
    pg3 = -advantages * CLIP_C
    per_token = torch.where(advantages < 0, torch.minimum(clipped, pg3), clipped)
    loss = seq_mean_token_mean(per_token, mask)
    metrics = {
        "actor/pg_loss": float(loss.detach()),
        "actor/pg_clipfrac": float(masked_mean((pg2 > pg1).float(), mask)),
        "actor/ppo_kl": float(masked_mean(-log_ratio.detach(), mask)),
    }
    if ref_logp is not None and KL_COEF > 0:
        kl = low_var_kl(logp, ref_logp)
        kl_loss = seq_mean_token_mean(kl, mask)
        loss = loss + KL_COEF * kl_loss
        metrics["actor/kl_loss"] = float(kl_loss.detach())
    return loss, metrics


def low_var_kl(logp, ref_logp):
    """k3 estimator of KL(pi || ref), clamped to [-10, 10] as in verl."""
    log_ratio = (ref_logp - logp).clamp(-20.0, 20.0)
    return (log_ratio.exp() - log_ratio - 1).clamp(-10.0, 10.0)


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def seq_mean_token_mean(x, mask):
    """Mean over each response's tokens, then over the non-empty responses."""
    n_tok = mask.sum(-1)  # (N,)
    per_seq = (x * mask).sum(-1) / n_tok.clamp_min(1.0)
    return per_seq.sum() / (n_tok > 0).sum().clamp_min(1)
