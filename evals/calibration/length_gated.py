"""Calibration candidate (never a search seed): a length penalty on correct answers only.

r = correct * (1 - ALPHA * length / max_length). A correct short answer beats a correct
long one, and every correct answer beats every wrong one (r >= 1 - ALPHA > 0), so the
penalty cannot buy length with accuracy. Advantages and loss are GRPO's.
"""
NAME = "length-gated"
ALPHA = 0.5


def shape_reward(batch):
    frac = batch.length.float() / batch.max_length  # (N,)
    return batch.correct.float() * (1.0 - ALPHA * frac)
