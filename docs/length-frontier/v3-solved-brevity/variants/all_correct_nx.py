"""Gated length penalty in all-correct groups (alpha 0.5) with the "accurate" campaign's
advantage scale std + t (t: 0 -> 1 over training)."""
import torch

NAME = "all-correct-nx"
ALPHA = 0.5


def shape_reward(batch):
    c = batch.correct.float()
    g = int(batch.group.max()) + 1
    count = c.new_zeros(g).index_add_(0, batch.group, c.new_ones(c.shape))
    rate = c.new_zeros(g).index_add_(0, batch.group, c) / count.clamp_min(1)
    solved = (rate[batch.group] >= 1.0).float()
    return c * (1.0 - ALPHA * solved * batch.length.float() / batch.max_length)


def compute_advantages(batch, rewards):
    group, g = batch.group, int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, group, torch.ones_like(rewards))
    mean = rewards.new_zeros(g).index_add_(0, group, rewards) / count
    var = rewards.new_zeros(g).index_add_(0, group, (rewards - mean[group]) ** 2)
    std = (var / (count - 1).clamp_min(1)).sqrt()
    t = min(1.0, batch.step / max(1, batch.total_steps - 1))
    return (rewards - mean[group]) / (std + t).clamp_min(0.05)[group]
