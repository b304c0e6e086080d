"""Calibration control (never a search seed): GRPO with the advantage's sign flipped.

The reward is negated (-1 for a correct answer); GRPO's group normalization then gives
exactly minus GRPO's advantages, so wrong answers are reinforced and right ones punished.
A testbed that works must show it collapse below the warm start.
"""
NAME = "sign-flip-control"


def shape_reward(batch):
    return -batch.correct.float()
