"""A candidate's hooks in verl's signatures, registered in verl's own registries.

verl 0.9.1 calls an advantage estimator as
``fn(token_level_rewards, response_mask, config, index=uid, ...) -> (advantages, returns)``
(all ``(bs, response_length)``) and a policy loss as
``fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
rollout_is_weights) -> (loss, metrics)``. Neither receives the reward function's extra
info, so the outcome of each sample reaches the estimator in the only channel verl
keeps, the score itself: ``compute_score`` (trainers/verl/reward.py) returns an *outcome
code*, 1 correct / 0 valid but wrong / -1 invalid, which verl writes on the response's
last token. The estimator decodes it into ``Rollouts`` (correct, valid; length from the
response mask; groups from ``index``) and runs the candidate's ``shape_reward`` and
``compute_advantages`` (GRPO's where the candidate omits one): the candidate's shaped
reward is what trains, the code is only the carrier. This needs
``algorithm.use_kl_in_reward=False`` (the launcher sets it; a KL-shaped reward is refused
with a message). Because verl logs only the code (``critic/score``), the estimator
appends the batch's shaped reward, accuracy and validity to ``Settings.step_log``, in
verl's file-logger format (read by trainers/verl/metrics.py).

The policy loss runs on a micro-batch on a GPU worker; verl passes it no group ids and no
outcomes. What it sees as ``batch``:
- exact: ``response_mask``, ``length``, ``max_length``, ``total_steps``, and ``step``
  (published by the estimator through Ray's internal KV, or in-process);
- ``group``: each row is its own group (``group_size`` 1): rows arrive without ids,
  shuffled and split across micro-batches and GPUs. DAPO's zero-variance filter in the
  loss is then a no-op (as verl's DAPO without dynamic sampling); the advantages of such
  groups are still exactly zero;
- ``correct`` / ``valid``: unavailable; reading them raises ``CandidateError`` (the plugin
  generator refuses such a candidate before launch, see trainers/verl/plugin.py).
``ref_logp`` is None: verl adds its own KL term (``actor.use_kl_loss``), which the
launcher configures from the candidate's ``KL_COEF``.

verl sums micro-batch losses into one gradient and normalizes by the global batch; the
candidate returns the mean over the rows it was given. The wrapper rescales it by the
micro-batch's share of the global batch's non-empty sequences (``global_batch_info``):
exact for sequence-mean aggregations (GRPO, Dr. GRPO, GSPO); for token-mean ones (DAPO,
GPG, CISPO) it weighs micro-batch token means by sequences instead of tokens.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trainers.algorithm import Algorithm, CandidateError, Rollouts, code_hash

OUTCOME_CORRECT, OUTCOME_WRONG, OUTCOME_INVALID = 1.0, 0.0, -1.0
CODE_TOLERANCE = 1e-3
KV_NAMESPACE = "poise"


def outcome_code(correct: bool, valid: bool) -> float:
    """The score ``compute_score`` returns: 1 correct, 0 valid but wrong, -1 invalid."""
    if correct and not valid:
        raise ValueError("an answer cannot be correct and invalid")
    return OUTCOME_CORRECT if correct else OUTCOME_WRONG if valid else OUTCOME_INVALID


def decode_outcomes(token_level_rewards: Tensor, response_mask: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """(correct, valid, length), each (bs,), from verl's token-level rewards (the outcome
    code on one token per response) and the (bs, T) response mask."""
    code = token_level_rewards.float().sum(-1)                          # (bs,)
    nearest = code.round().clamp(-1, 1)
    bad = (code - nearest).abs() > CODE_TOLERANCE
    bad |= (code.round() != nearest)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"token-level reward {float(code[i]):.4g} (row {i}) is not a POISE outcome code "
            "(1 correct, 0 wrong, -1 invalid): train with POISE's compute_score as "
            "reward.custom_reward_function and algorithm.use_kl_in_reward=False")
    length = response_mask.sum(-1).long()                               # (bs,)
    return nearest > 0.5, nearest > -0.5, length


def group_ids(index, n: int) -> Tensor:
    """verl's ``index`` (one uid per row, same uid = same prompt) -> (n,) long group ids
    numbered by first appearance."""
    if index is None:
        raise ValueError("the advantage estimator needs verl's `index` (the uid of each "
                         "row's prompt) to form groups; it was not passed")
    uids = np.asarray(index, dtype=object).reshape(-1)
    if uids.shape[0] != n:
        raise ValueError(f"index has {uids.shape[0]} entries for {n} rows")
    first: dict = {}
    return torch.tensor([first.setdefault(u, len(first)) for u in uids.tolist()],
                        dtype=torch.long)


@dataclass(frozen=True)
class Settings:
    """What the plugin fixes per launch (verl does not pass these to the hooks)."""

    max_length: int           # data.max_response_length: the response budget in tokens
    total_steps: int          # trainer.total_training_steps
    run_token: str = "local"  # tells apart runs of one candidate on one Ray cluster
    step_log: str = ""        # JSONL the estimator appends its per-step stats to ("": none)


class StepClock:
    """The training step, 0-based: the estimator (in the trainer process) reads it from
    verl's ``SkipManager.step`` (the 1-based global step, resume-aware) or counts its own
    calls outside a trainer, and publishes it; the policy loss (on the GPU workers) reads
    the last published value from Ray's internal KV, or from this process."""

    _local: dict[str, int] = {}
    _lock = threading.Lock()

    def __init__(self, key: str):
        self.key = key
        self.calls = 0

    def advance(self) -> int:
        global_step = verl_global_step()
        step = global_step - 1 if global_step >= 1 else self.calls
        self.calls += 1
        with self._lock:
            self._local[self.key] = step
        if _ray_ready():
            from ray.experimental import internal_kv

            internal_kv._internal_kv_put(self.key.encode(), str(step).encode(),
                                         overwrite=True, namespace=KV_NAMESPACE)
        return step

    def current(self) -> int | None:
        with self._lock:
            if self.key in self._local:
                return self._local[self.key]
        if _ray_ready():
            from ray.experimental import internal_kv

            raw = internal_kv._internal_kv_get(self.key.encode(), namespace=KV_NAMESPACE)
            if raw is not None:
                return int(raw)
        return None


def verl_global_step() -> int:
    """verl's 1-based global step in a trainer process, -1 elsewhere."""
    from verl.utils.skip.skip_manager import SkipManager

    return int(SkipManager.step)


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


class LossBatch:
    """What a candidate's ``policy_loss`` sees as ``batch`` under verl (see the module
    docstring): a Rollouts-like view of one micro-batch."""

    def __init__(self, response_mask: Tensor, settings: Settings, clock: StepClock):
        self.response_mask = response_mask                              # (n, T) float
        self.length = response_mask.sum(-1).long()                      # (n,)
        self.max_length = settings.max_length
        self.total_steps = settings.total_steps
        self.group = torch.arange(response_mask.shape[0])               # one group per row
        self.group_size = 1
        self._clock = clock

    @property
    def n(self) -> int:
        return self.response_mask.shape[0]

    @property
    def num_groups(self) -> int:
        return self.n

    @property
    def step(self) -> int:
        step = self._clock.current()
        if step is None:
            raise CandidateError("policy_loss", "batch.step is unknown here: no advantage "
                                 "estimate has published it (the estimator runs first in "
                                 "every verl step)")
        return step

    @property
    def correct(self) -> Tensor:
        raise _unavailable("correct")

    @property
    def valid(self) -> Tensor:
        raise _unavailable("valid")


def _unavailable(field: str) -> CandidateError:
    return CandidateError("policy_loss", f"batch.{field} is not available in verl's policy "
                          "loss (verl 0.9.1 passes micro-batches without outcomes); use it "
                          "in shape_reward or compute_advantages instead")


class VerlCandidate:
    """One candidate's hooks in verl's signatures. ``estimate_advantages`` and
    ``compute_policy_loss`` are what gets registered."""

    def __init__(self, name: str, source: str, settings: Settings):
        self.name = name
        self.source = source
        self.source_hash = code_hash(source)
        self.settings = settings
        self.algorithm = Algorithm.from_source(source)
        self.clock = StepClock(f"{name}/{settings.run_token}/step")

    def rollouts(self, token_level_rewards: Tensor, response_mask: Tensor, index,
                 step: int) -> Rollouts:
        mask = response_mask.float()                                    # (bs, T)
        correct, valid, length = decode_outcomes(token_level_rewards, mask)
        group = group_ids(index, mask.shape[0])                         # (bs,)
        counts = torch.bincount(group)
        return Rollouts(correct=correct, valid=valid, length=length,
                        max_length=self.settings.max_length, group=group,
                        group_size=int(counts.max()), response_mask=mask, step=step,
                        total_steps=self.settings.total_steps)

    def estimate_advantages(self, token_level_rewards: Tensor, response_mask: Tensor,
                            index=None, config=None, **unused) -> tuple[Tensor, Tensor]:
        """verl's advantage-estimator signature -> (advantages, returns), (bs, T)."""
        batch = self.rollouts(token_level_rewards, response_mask, index, self.clock.advance())
        rewards = self.algorithm.shape_reward(batch)                    # (bs,)
        adv = self.algorithm.compute_advantages(batch, rewards)         # (bs,) or (bs, T)
        adv = (adv.unsqueeze(-1) if adv.dim() == 1 else adv) * batch.response_mask
        if self.settings.step_log:
            self._log_step(batch, rewards)
        adv = adv.float()
        return adv, adv

    def _log_step(self, batch: Rollouts, rewards: Tensor) -> None:
        """One line per estimate in verl's file-logger format ({"step", "data"}), with
        what verl does not log: the shaped reward, accuracy and validity of the batch.
        ``step`` is verl's 1-based global step (the estimator's step + 1)."""
        per_group = torch.zeros(batch.num_groups).index_add_(0, batch.group,
                                                             batch.correct.float())
        size = torch.bincount(batch.group).float()
        data = {"poise/reward": float(rewards.mean()),
                "poise/accuracy": float(batch.correct.float().mean()),
                "poise/validity": float(batch.valid.float().mean()),
                "poise/response_length": float(batch.length.float().mean()),
                "poise/all_fail_groups": float((per_group == 0).float().mean()),
                "poise/all_correct_groups": float((per_group == size).float().mean())}
        line = json.dumps({"step": batch.step + 1, "data": data}) + "\n"
        with open(self.settings.step_log, "a") as fh:  # one write: whole lines
            fh.write(line)

    def compute_policy_loss(self, old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor,
                            response_mask: Tensor, loss_agg_mode: str = "token-mean",
                            config=None, rollout_is_weights: Tensor | None = None
                            ) -> tuple[Tensor, dict[str, float]]:
        """verl's policy-loss signature. ``loss_agg_mode`` and the clip settings in
        ``config`` are ignored: the candidate's own code decides both."""
        if rollout_is_weights is not None:
            raise CandidateError("policy_loss", "verl passed rollout importance weights "
                                 "(algorithm.rollout_correction); POISE candidates do not "
                                 "take them: disable rollout correction")
        mask = response_mask.to(log_prob.dtype)                          # (n, T)
        batch = LossBatch(mask, self.settings, self.clock)
        loss, metrics = self.algorithm.policy_loss(log_prob, old_log_prob, advantages, mask,
                                                   batch, ref_logp=None)
        return loss * global_share(mask, config), metrics


def global_share(mask: Tensor, config) -> float:
    """The micro-batch's share of the global batch in non-empty sequences, times the
    data-parallel size (verl averages gradients over ranks); 1 without global info."""
    info = getattr(config, "global_batch_info", None)
    if info is None and config is not None and hasattr(config, "get"):
        info = config.get("global_batch_info", None)
    info = info or {}
    global_size = info.get("global_batch_size")
    dp_size = int(info.get("dp_size") or 1)
    if global_size is None:
        if dp_size > 1:
            raise ValueError("verl gave dp_size > 1 without global_batch_size: cannot "
                             "normalize the candidate's loss over the global batch")
        return 1.0
    local = int((mask.sum(-1) > 0).sum())
    return local * dp_size / float(global_size)


# ----------------------------------------------------------------------------- registry

_REGISTERED: dict[str, VerlCandidate] = {}
_REGISTER_LOCK = threading.Lock()


def registered_name(candidate_name: str, source: str) -> str:
    """``poise_<slug>_<codehash8>``: unique per candidate code, a valid identifier."""
    slug = "".join(c if c.isalnum() else "_" for c in candidate_name.lower()).strip("_")
    slug = "_".join(filter(None, slug.split("_")))[:40] or "candidate"
    return f"poise_{slug}_{code_hash(source)[:8]}"


def register_candidate(source: str, settings: Settings, name: str | None = None
                       ) -> VerlCandidate:
    """Register ``source``'s hooks with verl as advantage estimator and policy loss, both
    under ``name`` (default ``registered_name``). Registering the same code again (the
    plugin file is imported once as a module and once more by verl's reward loader)
    returns the first registration; other code under a taken name is refused."""
    from verl.trainer.ppo import core_algos

    from trainers.algorithm import load_module

    name = name or registered_name(str(getattr(load_module(source), "NAME", "") or
                                       "candidate"), source)
    with _REGISTER_LOCK:
        known = _REGISTERED.get(name)
        if known is not None:
            if known.source_hash != code_hash(source) or known.settings != settings:
                raise ValueError(f"{name} is already registered with other code or settings")
            return known
        if name in core_algos.ADV_ESTIMATOR_REGISTRY or name in core_algos.POLICY_LOSS_REGISTRY:
            raise ValueError(f"verl already has an estimator or loss named {name}")
        cand = VerlCandidate(name, source, settings)
        core_algos.register_adv_est(name)(cand.estimate_advantages)
        core_algos.register_policy_loss(name)(cand.compute_policy_loss)
        _REGISTERED[name] = cand
        return cand


def run_token(*parts: str) -> str:
    """A short token that tells one launch apart from another."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]
