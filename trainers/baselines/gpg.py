"""GPG (Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning Baseline for
Model Reasoning", arXiv:2504.02546).

Departs from GRPO (trainers/baselines/grpo.py) in the advantage and the loss, and
drops the KL term:
- Advantage: alpha * (r - mean_group) / F_norm with F_norm = 1 (no std division) and
  alpha = N / max(1, number of samples with a non-zero reward), which scales the
  gradient back up when few samples carry signal. A group of one sample has baseline 0.
  Same numbers as verl's compute_gpg_outcome_advantage.
- Loss: plain policy gradient, -logp * A, with no importance ratio and no clipping,
  averaged over all response tokens of the batch ("token-mean"), as verl's
  compute_policy_loss_gpg.
- No KL penalty to the reference policy.
"""
import torch

NAME = "gpg"
F_NORM = 1.0


def compute_advantages(batch, rewards):
    g = int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, batch.group, torch.ones_like(rewards))  # (B,)
    mean = rewards.new_zeros(g).index_add_(0, batch.group, rewards) / count            # (B,)
    mean = torch.where(count > 1, mean, torch.zeros_like(mean))
    alpha = rewards.shape[0] / (rewards != 0).sum().clamp_min(1)                       # ()
    return alpha * (rewards - mean[batch.group]) / F_NORM                              # (N,)


def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
    per_token = -logp * advantages                                     # (N, T)
    n_tok = mask.sum().clamp_min(1.0)
    loss = (per_token * mask).sum() / n_tok
    metrics = {
        "actor/pg_loss": float(loss.detach()),
        "actor/ppo_kl": float(((old_logp - logp).detach() * mask).sum() / n_tok),
    }
    return loss, metrics
