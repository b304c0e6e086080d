"""Length frontier (docs/testbed.md): the correctness-gated length penalty at alpha 0.1.

r = correct * (1 - 0.1 * L / L_max); advantages and loss are GRPO's. The weakest alpha of
the builtin catalog's gated_length gene (calibration's length_gated uses 0.5).
"""
NAME = "gated-010"
ALPHA = 0.1


def shape_reward(batch):
    frac = batch.length.float() / batch.max_length  # (N,)
    return batch.correct.float() * (1.0 - ALPHA * frac)
