"""Length frontier (docs/testbed.md): a length penalty only where it cannot cost accuracy.

Only in a group whose 8 answers are all correct does length count (r = 1 - 0.5 * L / L_max
there); every other group is rewarded by correctness alone, so a problem the policy can
still get wrong never pays for brevity. Advantages and loss are GRPO's.
"""
NAME = "gated-all-correct"
ALPHA = 0.5


def shape_reward(batch):
    c = batch.correct.float()  # (N,)
    g = int(batch.group.max()) + 1
    count = c.new_zeros(g).index_add_(0, batch.group, c.new_ones(c.shape))
    rate = c.new_zeros(g).index_add_(0, batch.group, c) / count.clamp_min(1)  # (B,)
    solved = (rate[batch.group] >= 1.0).float()  # (N,) 1 in an all-correct group
    return c * (1.0 - ALPHA * solved * batch.length.float() / batch.max_length)

