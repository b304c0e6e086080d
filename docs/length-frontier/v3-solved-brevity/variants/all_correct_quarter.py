"""Gated length penalty in all-correct groups, with the length advantage at a quarter of
GRPO's unit scale: brevity pressure that does not outweigh accuracy groups."""
import torch

NAME = "all-correct-quarter"
ALPHA = 0.5
LEN_WEIGHT = 0.25


def _rate(batch, c):
    g = int(batch.group.max()) + 1
    count = c.new_zeros(g).index_add_(0, batch.group, c.new_ones(c.shape))
    return (c.new_zeros(g).index_add_(0, batch.group, c) / count.clamp_min(1))[batch.group]


def shape_reward(batch):
    c = batch.correct.float()
    solved = (_rate(batch, c) >= 1.0).float()
    return c * (1.0 - ALPHA * solved * batch.length.float() / batch.max_length)


def compute_advantages(batch, rewards):
    g = int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, batch.group, torch.ones_like(rewards))
    mean = rewards.new_zeros(g).index_add_(0, batch.group, rewards) / count
    var = rewards.new_zeros(g).index_add_(0, batch.group, (rewards - mean[batch.group]) ** 2)
    std = (var / (count - 1).clamp_min(1)).sqrt()
    adv = (rewards - mean[batch.group]) / (std[batch.group] + 1e-6)
    solved = _rate(batch, batch.correct.float()) >= 1.0
    return torch.where(solved, LEN_WEIGHT * adv, adv)
