"""Length frontier (docs/testbed.md): the correctness-gated length penalty at alpha 0.25.

r = correct * (1 - 0.25 * L / L_max) (the catalog gene's default alpha); advantages and
loss are GRPO's.
"""
NAME = "gated-025"
ALPHA = 0.25


def shape_reward(batch):
    frac = batch.length.float() / batch.max_length  # (N,)
    return batch.correct.float() * (1.0 - ALPHA * frac)
