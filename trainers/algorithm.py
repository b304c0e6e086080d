"""The candidate contract: how a policy-optimization algorithm is written for POISE.

(Source text without torch, from parsing to loading: ``trainers.source``.)

A candidate is one Python module (source text) that may define three hooks; a hook it
omits falls back to GRPO's (``trainers.baselines.grpo``):

    NAME = "my-algo"                                  # slug, unique in the archive
    def shape_reward(batch: Rollouts) -> Tensor       # (N,) scalar reward per sample
    def compute_advantages(batch: Rollouts, rewards: Tensor) -> Tensor   # (N,) or (N, T)
    def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None)
        -> tuple[Tensor, dict[str, float]]            # scalar loss, namespaced metrics

``logp``, ``old_logp``, ``ref_logp``, ``mask`` and the ``advantages`` given to
``policy_loss`` are all (N, T); the trainer broadcasts (N,) advantages over tokens.

``Algorithm`` wraps a loaded module and checks every hook's output: a wrong shape or a
non-finite value raises ``CandidateError`` naming the hook and what was wrong. The same
wrapped module runs in the local trainer and (through an adapter) in VERL.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from trainers.source import (HOOKS, CandidateError, code_hash, load_module,  # noqa: F401
                             read_source, resolve_algorithm)


@dataclass
class Rollouts:
    """A batch of N = B prompts x G samples, as the hooks see it.

    correct: (N,) bool, the final answer is right.  valid: (N,) bool, the answer is
    format-valid (an invalid answer is never correct).  length: (N,) long, response
    tokens.  max_length: the response budget in tokens.  group: (N,) long, prompt index
    in [0, B).  group_size: G.  response_mask: (N, T) float, 1 on response tokens.
    step / total_steps: the training schedule position (0-based step).
    """

    correct: Tensor
    valid: Tensor
    length: Tensor
    max_length: int
    group: Tensor
    group_size: int
    response_mask: Tensor
    step: int
    total_steps: int

    def __post_init__(self):
        n = self.correct.shape[0]
        for name in ("correct", "valid", "length", "group"):
            t = getattr(self, name)
            if t.dim() != 1 or t.shape[0] != n:
                raise ValueError(f"Rollouts.{name} must have shape ({n},), got {tuple(t.shape)}")
        if self.response_mask.dim() != 2 or self.response_mask.shape[0] != n:
            raise ValueError(f"Rollouts.response_mask must be (N, T) with N={n}, "
                             f"got {tuple(self.response_mask.shape)}")
        if bool((self.correct & ~self.valid).any()):
            raise ValueError("Rollouts: a sample is correct but not valid")

    @property
    def n(self) -> int:
        return self.correct.shape[0]

    @property
    def num_groups(self) -> int:
        return int(self.group.max().item()) + 1 if self.n else 0

    def select(self, index: Tensor) -> "Rollouts":
        """The sub-batch at ``index`` (whole groups, for PPO minibatches); group ids are
        renumbered to [0, B')."""
        group = self.group[index]
        _, renumbered = torch.unique(group, sorted=True, return_inverse=True)
        return Rollouts(
            correct=self.correct[index], valid=self.valid[index], length=self.length[index],
            max_length=self.max_length, group=renumbered, group_size=self.group_size,
            response_mask=self.response_mask[index], step=self.step,
            total_steps=self.total_steps)


ROLLOUT_FIELDS = tuple(f.name for f in fields(Rollouts))


# ----------------------------------------------------------------------------- checking

class Algorithm:
    """A candidate module with GRPO fallbacks and checked hooks."""

    def __init__(self, module: types.ModuleType, source: str | None = None):
        from trainers.baselines import grpo  # the fallback for omitted hooks

        self.module = module
        self.source = source
        self.name = str(getattr(module, "NAME", "") or "unnamed")
        self.defined = tuple(h for h in HOOKS if callable(getattr(module, h, None)))
        self._shape_reward: Callable = getattr(module, "shape_reward", grpo.shape_reward)
        self._compute_advantages: Callable = getattr(
            module, "compute_advantages", grpo.compute_advantages)
        self._policy_loss: Callable = getattr(module, "policy_loss", grpo.policy_loss)
        for hook in HOOKS:
            if hasattr(module, hook) and not callable(getattr(module, hook)):
                raise CandidateError(hook, "is defined but is not a function")

    @classmethod
    def from_source(cls, source: str | Path) -> "Algorithm":
        text, _ = read_source(source)
        return cls(load_module(source), source=text)

    # The three hooks, each checked.
    def shape_reward(self, batch: Rollouts) -> Tensor:
        out = _call("shape_reward", self._shape_reward, batch)
        _check_tensor("shape_reward", out, (batch.n,))
        return out.float()

    def compute_advantages(self, batch: Rollouts, rewards: Tensor) -> Tensor:
        out = _call("compute_advantages", self._compute_advantages, batch, rewards)
        t = batch.response_mask.shape[1]
        if not isinstance(out, Tensor) or tuple(out.shape) not in ((batch.n,), (batch.n, t)):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise CandidateError("compute_advantages",
                                 f"must return a tensor of shape ({batch.n},) or "
                                 f"({batch.n}, {t}), got {shape}")
        _check_finite("compute_advantages", out)
        return out.float()

    def policy_loss(self, logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                    batch: Rollouts, ref_logp: Tensor | None = None
                    ) -> tuple[Tensor, dict[str, float]]:
        out = _call("policy_loss", self._policy_loss, logp, old_logp, advantages, mask,
                    batch, ref_logp=ref_logp)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CandidateError("policy_loss", "must return (loss, metrics), got "
                                 f"{type(out).__name__}")
        loss, metrics = out
        _check_tensor("policy_loss", loss, ())
        if logp.requires_grad and not loss.requires_grad:
            raise CandidateError("policy_loss", "the loss does not depend on logp (no "
                                 "gradient would flow): do not detach it")
        if not isinstance(metrics, dict):
            raise CandidateError("policy_loss", f"metrics must be a dict, got "
                                 f"{type(metrics).__name__}")
        clean: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                clean[str(key)] = float(value)
            except (TypeError, ValueError, RuntimeError):
                raise CandidateError("policy_loss", f"metric {key!r} is not a number: "
                                     f"{value!r}") from None
        return loss, clean


def _call(hook: str, fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except CandidateError:
        raise
    except Exception as e:
        raise CandidateError(hook, f"raised {type(e).__name__}: {e}") from e


def _check_tensor(hook: str, out, shape: tuple[int, ...]) -> None:
    if not isinstance(out, Tensor):
        raise CandidateError(hook, f"must return a tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise CandidateError(hook, f"must return shape {shape}, got {tuple(out.shape)}")
    _check_finite(hook, out)


def _check_finite(hook: str, out: Tensor) -> None:
    if not out.dtype.is_floating_point and out.dtype != torch.bool:
        if out.dtype not in (torch.int64, torch.int32):
            raise CandidateError(hook, f"returned dtype {out.dtype}, expected a float tensor")
    bad = ~torch.isfinite(out.float())
    if bool(bad.any()):
        raise CandidateError(hook, f"returned {int(bad.sum())} non-finite value(s) "
                             f"(NaN or inf) out of {out.numel()}")


def load_algorithm(spec: str | Path) -> Algorithm:
    """A shipped baseline by name (``grpo``, ``dr_grpo``, ...) or a candidate .py file."""
    return Algorithm.from_source(resolve_algorithm(spec)[1])


def group_stats(values: Tensor, group: Tensor, num_groups: int | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample group mean, unbiased group std (0 for a group of 1) and group count."""
    g = int(group.max().item()) + 1 if num_groups is None else num_groups
    v = values.float()
    count = v.new_zeros(g).index_add_(0, group, torch.ones_like(v))
    mean = v.new_zeros(g).index_add_(0, group, v) / count.clamp_min(1)
    sq = v.new_zeros(g).index_add_(0, group, (v - mean[group]) ** 2)
    var = torch.where(count > 1, sq / (count - 1).clamp_min(1), torch.zeros_like(sq))
    return mean[group], var.sqrt()[group], count[group]


__all__ = ["Rollouts", "Algorithm", "CandidateError", "load_module", "load_algorithm",
           "resolve_algorithm",
           "code_hash", "group_stats", "HOOKS", "ROLLOUT_FIELDS"]
