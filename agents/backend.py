"""What the scientist and the coder are told about the backend that will train the code.

``describe(executor)``: the local CPU testbed (every hook sees the whole batch), or verl on
GPUs (trainers/verl/runtime.py: the same batch fields, the policy loss per micro-batch,
lengths in the tokenizer's tokens of a real model).
"""
from __future__ import annotations

LOCAL = """The backend: POISE's local trainer on the CPU testbed. Every hook sees the whole
batch: shape_reward and compute_advantages get correct, valid, length, group ids and
group_size; policy_loss gets the same batch and ref_logp (KL to the start policy is yours
to add). Lengths are response tokens of the testbed's character-level tokenizer."""

VERL = """The backend: verl on GPUs (a real language model, verl's GRPO pipeline). Each hook
sees what it sees locally: shape_reward, compute_advantages and policy_loss get correct,
valid, length, group ids, group_size, step and total_steps, and policy_loss gets ref_logp
(verl's reference log-probs); a KL term you compute is the KL that trains (verl adds none of
its own). Differences: lengths are response tokens of the model's tokenizer (max_length is
the response budget in those tokens); policy_loss runs once per micro-batch, on a part of the
batch (whole groups when it reads batch.group, otherwise any rows), and its value is
averaged over micro-batches, so it must be a mean over the rows it is given. Imports are
limited to torch, math and numpy."""


def describe(executor: str | None) -> str:
    return VERL if executor == "verl" else LOCAL


__all__ = ["describe", "LOCAL", "VERL"]
