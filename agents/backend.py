"""What the scientist and the coder are told about the backend that will train the code.

``describe(executor)``: the local CPU testbed (every hook sees the whole batch), or verl on
GPUs, where the policy loss runs on shuffled micro-batches without group ids or outcomes
(trainers/verl/adapter.py) and lengths are counted in the tokenizer's tokens of a real
model. A mechanism that cannot run there is not proposed, and the plugin generator refuses
one that reads what the loss cannot see.
"""
from __future__ import annotations

LOCAL = """The backend: POISE's local trainer on the CPU testbed. Every hook sees the whole
batch: shape_reward and compute_advantages get correct, valid, length, group ids and
group_size; policy_loss gets the same batch and ref_logp (KL to the start policy is yours
to add). Lengths are response tokens of the testbed's character-level tokenizer."""

VERL = """The backend: verl on GPUs (a real language model, verl's GRPO pipeline). What a hook
may read differs from the local testbed:
- shape_reward and compute_advantages see the whole batch: correct, valid, length (response
  tokens of the model's tokenizer), group ids and group_size, step and total_steps;
- policy_loss runs on shuffled micro-batches split across GPUs: batch.group is one group per
  row (group_size 1), batch.correct and batch.valid are NOT available (reading them fails the
  candidate before launch), ref_logp is None: put group- or outcome-dependent logic in the
  reward or the advantages, and set a module constant KL_COEF for verl's own KL loss instead
  of computing a KL term yourself."""


def describe(executor: str | None) -> str:
    return VERL if executor == "verl" else LOCAL


__all__ = ["describe", "LOCAL", "VERL"]
