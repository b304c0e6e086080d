"""Calibration control (never a search seed): GRPO with the advantage's sign flipped.

It rewards wrong answers and punishes right ones, so a testbed that works must show it
collapse: accuracy falls below the warm start's.
"""
import torch

NAME = "sign-flip-control"


def compute_advantages(batch, rewards):
    g = int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, batch.group, torch.ones_like(rewards))
    mean = rewards.new_zeros(g).index_add_(0, batch.group, rewards) / count
    var = rewards.new_zeros(g).index_add_(0, batch.group, (rewards - mean[batch.group]) ** 2)
    std = torch.where(count > 1, (var / (count - 1).clamp_min(1)).sqrt(), rewards.new_ones(g))
    return -(rewards - mean[batch.group]) / (std[batch.group] + 1e-6)
