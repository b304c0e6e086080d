"""Calibration candidate (never a search seed): validity masking.

Format-invalid samples are masked out of the group statistics: each group's baseline and
std come from its valid samples only, so a broken answer does not move the bar for the
valid ones. Invalid samples then get a fixed advantage of -1 (a format penalty on the
same scale as a normalized advantage). Loss is GRPO's.
"""
import torch

NAME = "validity-mask"
INVALID_ADVANTAGE = -1.0


def compute_advantages(batch, rewards):
    g = int(batch.group.max()) + 1
    w = batch.valid.float()  # (N,) 1 on valid samples
    count = rewards.new_zeros(g).index_add_(0, batch.group, w)
    mean = rewards.new_zeros(g).index_add_(0, batch.group, w * rewards) / count.clamp_min(1)
    dev = (rewards - mean[batch.group]) * w
    var = rewards.new_zeros(g).index_add_(0, batch.group, dev ** 2) / (count - 1).clamp_min(1)
    std = torch.where(count > 1, var.sqrt(), rewards.new_ones(g))
    adv = (rewards - mean[batch.group]) / (std[batch.group] + 1e-6)
    return torch.where(batch.valid, adv, torch.full_like(adv, INVALID_ADVANTAGE))
