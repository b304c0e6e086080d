"""REINFORCE++-baseline (Hu et al. 2025, "REINFORCE++: An Efficient RLHF Algorithm with
Robustness to Both Prompt and Reward Models", arXiv:2501.03262).

Departs from GRPO (trainers/baselines/grpo.py) only in the advantage: subtract the group
mean reward (no per-group std division; a group of one sample has baseline 0), broadcast
over the response tokens, then whiten over all response tokens of the batch (global
mean and unbiased std, so a long response weighs more in the statistics). Returns
(N, T), zero outside the response. Same numbers as verl's
compute_reinforce_plus_plus_baseline_outcome_advantage. Reward and loss are GRPO's.
"""
import torch

NAME = "reinforce-pp-baseline"


def compute_advantages(batch, rewards):
    g = int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, batch.group, torch.ones_like(rewards))  # (B,)
    mean = rewards.new_zeros(g).index_add_(0, batch.group, rewards) / count            # (B,)
    mean = torch.where(count > 1, mean, torch.zeros_like(mean))
    mask = batch.response_mask.to(rewards.dtype)                                       # (N, T)
    adv = (rewards - mean[batch.group])[:, None] * mask                                # (N, T)
    n_tok = mask.sum()
    mu = (adv * mask).sum() / (n_tok + 1e-8)
    var = ((adv - mu) ** 2 * mask).sum() / (n_tok + 1e-8) * n_tok / (n_tok - 1).clamp_min(1.0)
    return (adv - mu) * torch.rsqrt(var + 1e-8) * mask                                 # (N, T)
