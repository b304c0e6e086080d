"""Length frontier (docs/testbed.md): the gated length penalty (alpha 0.25) with Dr. GRPO's
advantage, r - group mean, not divided by the group's std.

Without the std, the small reward gaps between correct answers of different lengths stay
small instead of being scaled up to unit advantages.
"""
NAME = "gated-no-std"
ALPHA = 0.25


def shape_reward(batch):
    frac = batch.length.float() / batch.max_length  # (N,)
    return batch.correct.float() * (1.0 - ALPHA * frac)


def compute_advantages(batch, rewards):
    g = int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, batch.group, rewards.new_ones(rewards.shape))
    mean = rewards.new_zeros(g).index_add_(0, batch.group, rewards) / count.clamp_min(1)
    return rewards - mean[batch.group]  # (N,)
