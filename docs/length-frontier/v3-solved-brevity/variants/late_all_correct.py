"""Gated length penalty (all-correct groups, alpha 0.5) switched on for the second half
of training only: accuracy first, brevity after."""
NAME = "late-all-correct"
ALPHA = 0.5


def shape_reward(batch):
    c = batch.correct.float()
    g = int(batch.group.max()) + 1
    count = c.new_zeros(g).index_add_(0, batch.group, c.new_ones(c.shape))
    rate = c.new_zeros(g).index_add_(0, batch.group, c) / count.clamp_min(1)
    solved = (rate[batch.group] >= 1.0).float()
    on = 1.0 if batch.step >= batch.total_steps // 2 else 0.0
    return c * (1.0 - on * ALPHA * solved * batch.length.float() / batch.max_length)
