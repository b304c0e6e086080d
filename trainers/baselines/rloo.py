"""RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization
for Learning from Human Feedback in LLMs", arXiv:2402.14740).

Departs from GRPO (trainers/baselines/grpo.py) only in the advantage: each sample's
baseline is the mean reward of the *other* samples of its group (leave-one-out),
A_i = r_i - (sum_j r_j - r_i) / (G - 1) = G / (G - 1) * (r_i - mean_group), with no std
division; a group of one sample keeps its reward. Same numbers as verl's
compute_rloo_outcome_advantage. Reward and loss (PPO clip, KL) are GRPO's.
"""
import torch

NAME = "rloo"


def compute_advantages(batch, rewards):
    group, g = batch.group, int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, group, torch.ones_like(rewards))[group]  # (N,)
    total = rewards.new_zeros(g).index_add_(0, group, rewards)[group]                   # (N,)
    loo_mean = (total - rewards) / (count - 1).clamp_min(1)             # (N,) mean of the others
    return torch.where(count > 1, rewards - loo_mean, rewards)          # (N,)
