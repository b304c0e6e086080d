"""Accuracy groups scaled like the "accurate" winner (std + t), brevity in all-correct
groups at a fixed half of GRPO's unit scale (not annealed by t).

Reward: a correct answer in a group whose answers are all correct earns
1 - 0.5 L/L_max; otherwise correctness. Advantage: (r - mean) / max(std + t, 0.05) in a
group with a wrong answer; 0.5 (r - mean) / std in an all-correct group."""
import torch

NAME = "nx-lenh"
ALPHA = 0.5
LEN_WEIGHT = 0.5


def _solved(batch):
    c = batch.correct.float()
    g = int(batch.group.max()) + 1
    count = c.new_zeros(g).index_add_(0, batch.group, torch.ones_like(c))
    rate = c.new_zeros(g).index_add_(0, batch.group, c) / count.clamp_min(1)
    return (rate >= 1.0)[batch.group]  # (N,)


def shape_reward(batch):
    c = batch.correct.float()
    return c * (1.0 - ALPHA * _solved(batch).float() * batch.length.float() / batch.max_length)


def compute_advantages(batch, rewards):
    group, g = batch.group, int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, group, torch.ones_like(rewards))
    mean = rewards.new_zeros(g).index_add_(0, group, rewards) / count
    var = rewards.new_zeros(g).index_add_(0, group, (rewards - mean[group]) ** 2)
    std = (var / (count - 1).clamp_min(1)).sqrt()
    t = min(1.0, batch.step / max(1, batch.total_steps - 1))
    centred = rewards - mean[group]
    accuracy = centred / (std + t).clamp_min(0.05)[group]
    brevity = LEN_WEIGHT * centred / (std[group] + 1e-6)
    return torch.where(_solved(batch), brevity, accuracy)
