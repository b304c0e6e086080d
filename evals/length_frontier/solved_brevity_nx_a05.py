"""solved_brevity_nx with alpha 0.5 instead of 1.0 (docs/testbed.md, "Toward version 4": the
length coefficient on the B-seed1 warm start). Otherwise the same mechanism:

Reward: in a group whose 8 answers are all correct, r = 1 - 0.5 * L / L_max; everywhere
else r = correctness, so a problem the policy can still get wrong never pays for brevity.
Advantage: (r - group mean) / max(group std + t, 0.05), t = step / (T - 1) (the scale of
nx8a8a-grpo, the winner of both "accurate" campaigns). Loss: GRPO's. Hand-designed from
the v3 frontier measurements (which tokens are removable, which groups carry the cost),
not found by a search.
"""
import torch

NAME = "solved-brevity-nx-a05"
ALPHA = 0.5
SCALE_FLOOR = 0.05


def _group_stats(batch, x):
    g = int(batch.group.max()) + 1
    count = x.new_zeros(g).index_add_(0, batch.group, torch.ones_like(x))  # (B,)
    mean = x.new_zeros(g).index_add_(0, batch.group, x) / count.clamp_min(1)
    var = x.new_zeros(g).index_add_(0, batch.group, (x - mean[batch.group]) ** 2)
    std = torch.where(count > 1, (var / (count - 1).clamp_min(1)).sqrt(), torch.ones_like(var))
    return mean, std


def shape_reward(batch):
    c = batch.correct.float()  # (N,)
    rate, _ = _group_stats(batch, c)
    solved = (rate[batch.group] >= 1.0).float()  # (N,) 1 in an all-correct group
    return c * (1.0 - ALPHA * solved * batch.length.float() / batch.max_length)


def compute_advantages(batch, rewards):
    mean, std = _group_stats(batch, rewards)
    t = min(1.0, batch.step / max(1, batch.total_steps - 1))
    scale = (std + t).clamp_min(SCALE_FLOOR)  # (B,)
    return (rewards - mean[batch.group]) / scale[batch.group]  # (N,)
