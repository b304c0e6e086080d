"""POISE's verl runtime: a candidate's hooks inside plain verl, in one self-contained file.

This module imports only the standard library, numpy, torch and verl (math-verify when
installed): no POISE module. A plugin (trainers/verl/plugin.py, ``python -m
memory.export --verl``) is this file's text followed by a generated tail that embeds the
candidate's source and registers it, so a discovered algorithm can be handed to anyone
who runs plain verl 0.9.1.

The hook contract under verl is the local one (trainers/algorithm.py):

- ``compute_score`` (``reward.custom_reward_function``) grades a response (the last
  ``\\boxed{}`` against the ground truth, math-verify when installed) and returns an
  *outcome code* as the score: 1 correct, 0 valid but wrong, -1 invalid. verl writes it
  on the response's last token (``rm_scores``); it is the only channel verl keeps from
  the reward function to the estimator and the loss.
- The advantage estimator (``algorithm.adv_estimator``, registered with
  ``register_adv_est``) decodes the codes into ``Rollouts`` (correct, valid; length =
  response tokens from the mask; groups from verl's ``index``, the prompt uid; step from
  verl's global step) and runs the candidate's ``shape_reward`` and
  ``compute_advantages``: the candidate's shaped reward is what trains.
- The policy loss (``actor.policy_loss.loss_mode``, registered with
  ``register_policy_loss``) gets the same ``Rollouts`` for its micro-batch: verl 0.9.1's
  v1 engine workers call ``verl.workers.utils.losses.ppo_loss(config, model_output,
  data)`` with the whole micro-batch ``TensorDict`` (``rm_scores``, ``uid``,
  ``ref_log_prob``, ...) but pass a registered loss only five tensors. ``install()``
  wraps ``ppo_loss`` (a pass-through for every other loss mode) so that, while a POISE
  loss runs, the micro-batch is readable from a context variable: correct / valid come
  from ``rm_scores``, groups from ``uid`` (rows of one prompt share it), ``group_size``
  is ``actor_rollout_ref.rollout.n``. ``ref_logp`` is verl's ``ref_log_prob``: the
  launcher turns on ``use_kl_loss`` with ``kl_loss_coef=0`` when the candidate's loss reads
  ``ref_logp``, so verl computes the reference log-probs and adds no KL of its own; the
  candidate's KL term is used as written. A micro-batch holds whole groups when the
  candidate's loss reads them: the launcher then turns off verl's length balancing and
  shuffling and rounds the micro-batch up to a multiple of ``rollout.n`` (verl keeps a
  prompt's rows adjacent); otherwise a group may be split across micro-batches, which a
  loss that reads no group cannot tell. ``poise/partial_groups`` logs the fraction of a
  micro-batch's rows whose group is incomplete.
- verl sums micro-batch losses into one gradient normalized over the global mini-batch;
  the candidate returns its mean over the rows it was given, which ``global_share``
  rescales by the micro-batch's share of the global mini-batch's non-empty sequences
  (exact for sequence-mean aggregations; token-mean ones are weighed by sequences).

Candidate code is loaded with restricted builtins: no ``open`` / ``exec`` / ``eval`` /
``compile`` / ``input``, and imports limited to torch, math and numpy. This is a layer on
top of the static check the plugin generator runs before writing a plugin (and the
verifier's sandboxed runs), not process isolation: on a GPU worker the hooks run in
verl's own processes.
"""
import builtins
import contextvars
import json
import threading
import types
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

CODE_TOLERANCE = 1e-3
KV_NAMESPACE = "poise"
HOOKS = ("shape_reward", "compute_advantages", "policy_loss")
ALLOWED_IMPORTS = ("torch", "math", "numpy")
BLOCKED_BUILTINS = ("open", "exec", "eval", "compile", "input", "breakpoint", "globals",
                    "locals", "vars", "exit", "quit", "help", "memoryview", "__import__")


class CandidateError(Exception):
    """A candidate's hook broke the contract; names the hook."""

    def __init__(self, hook: str, message: str):
        super().__init__(f"{hook}: {message}")
        self.hook, self.message = hook, message

    def __reduce__(self):
        return (type(self), (self.hook, self.message))


# ----------------------------------------------------------------------------- grading

from trainers.verl.grading import *  # noqa: F401,F403 - the plugin inlines grading.py here

# ----------------------------------------------------------------------------- rollouts

@dataclass
class Rollouts:
    """The batch a hook sees; the same fields as POISE's ``trainers.algorithm.Rollouts``.

    correct / valid: (N,) bool.  length: (N,) long, response tokens.  max_length: the
    response budget in tokens.  group: (N,) long prompt index in [0, B).  group_size: G.
    response_mask: (N, T) float.  step / total_steps: 0-based training step and budget.
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
        group = self.group[index]
        _, renumbered = torch.unique(group, sorted=True, return_inverse=True)
        return Rollouts(
            correct=self.correct[index], valid=self.valid[index], length=self.length[index],
            max_length=self.max_length, group=renumbered, group_size=self.group_size,
            response_mask=self.response_mask[index], step=self.step,
            total_steps=self.total_steps)


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
    """verl's ``index`` / ``uid`` (one id per row, same id = same prompt) -> (n,) long
    group ids numbered by first appearance."""
    if index is None:
        raise ValueError("the advantage estimator needs verl's `index` (the uid of each "
                         "row's prompt) to form groups; it was not passed")
    uids = np.asarray(list(index) if not isinstance(index, np.ndarray) else index,
                      dtype=object).reshape(-1)
    if uids.shape[0] != n:
        raise ValueError(f"index has {uids.shape[0]} entries for {n} rows")
    first: dict = {}
    return torch.tensor([first.setdefault(u, len(first)) for u in uids.tolist()],
                        dtype=torch.long)


# ----------------------------------------------------------------------------- hooks

def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level != 0 or name.split(".")[0] not in ALLOWED_IMPORTS:
        raise ImportError(f"candidate code may import only {', '.join(ALLOWED_IMPORTS)}; "
                          f"not {name!r}")
    return builtins.__import__(name, globals, locals, fromlist, level)


def load_candidate(source: str, name: str) -> types.ModuleType:
    """Execute candidate source with restricted builtins (see the module docstring)."""
    safe = {k: v for k, v in vars(builtins).items() if k not in BLOCKED_BUILTINS}
    safe["__import__"] = _guarded_import
    module = types.ModuleType(name)
    module.__dict__["__builtins__"] = safe
    try:
        code = compile(source, f"<{name}>", "exec")
    except SyntaxError as e:
        raise CandidateError("load", f"syntax error at line {e.lineno}: {e.msg}") from None
    try:
        exec(code, module.__dict__)
    except Exception as e:
        raise CandidateError("load", f"module raised {type(e).__name__}: {e}") from None
    return module


class Hooks:
    """A candidate module with the fallback's hooks for those it omits, every output
    checked (shape, finiteness, a loss that carries a gradient), as POISE's local
    ``Algorithm`` checks them."""

    def __init__(self, module: types.ModuleType, fallback: types.ModuleType):
        self.module = module
        self.name = str(getattr(module, "NAME", "") or "unnamed")
        for hook in HOOKS:
            if hasattr(module, hook) and not callable(getattr(module, hook)):
                raise CandidateError(hook, "is defined but is not a function")
        self._fns = {h: getattr(module, h, getattr(fallback, h)) for h in HOOKS}

    def shape_reward(self, batch: Rollouts) -> Tensor:
        out = _call("shape_reward", self._fns["shape_reward"], batch)
        _check_tensor("shape_reward", out, (batch.n,))
        return out.float()

    def compute_advantages(self, batch: Rollouts, rewards: Tensor) -> Tensor:
        out = _call("compute_advantages", self._fns["compute_advantages"], batch, rewards)
        t = batch.response_mask.shape[1]
        if not isinstance(out, Tensor) or tuple(out.shape) not in ((batch.n,), (batch.n, t)):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise CandidateError("compute_advantages", f"must return a tensor of shape "
                                 f"({batch.n},) or ({batch.n}, {t}), got {shape}")
        _check_finite("compute_advantages", out)
        return out.float()

    def policy_loss(self, logp, old_logp, advantages, mask, batch, ref_logp=None):
        out = _call("policy_loss", self._fns["policy_loss"], logp, old_logp, advantages, mask,
                    batch, ref_logp=ref_logp)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CandidateError("policy_loss", f"must return (loss, metrics), got "
                                 f"{type(out).__name__}")
        loss, metrics = out
        _check_tensor("policy_loss", loss, ())
        if logp.requires_grad and not loss.requires_grad:
            raise CandidateError("policy_loss", "the loss does not depend on logp (no "
                                 "gradient would flow): do not detach it")
        if not isinstance(metrics, dict):
            raise CandidateError("policy_loss", f"metrics must be a dict, got "
                                 f"{type(metrics).__name__}")
        clean = {}
        for key, value in metrics.items():
            try:
                clean[str(key)] = float(value)
            except (TypeError, ValueError, RuntimeError):
                raise CandidateError("policy_loss", f"metric {key!r} is not a number: "
                                     f"{value!r}") from None
        return loss, clean


def _call(hook: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except CandidateError:
        raise
    except Exception as e:
        raise CandidateError(hook, f"raised {type(e).__name__}: {e}") from e


def _check_tensor(hook: str, out, shape: tuple) -> None:
    if not isinstance(out, Tensor):
        raise CandidateError(hook, f"must return a tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise CandidateError(hook, f"must return shape {shape}, got {tuple(out.shape)}")
    _check_finite(hook, out)


def _check_finite(hook: str, out: Tensor) -> None:
    if not out.dtype.is_floating_point and out.dtype not in (torch.bool, torch.int64,
                                                              torch.int32):
        raise CandidateError(hook, f"returned dtype {out.dtype}, expected a float tensor")
    bad = ~torch.isfinite(out.float())
    if bool(bad.any()):
        raise CandidateError(hook, f"returned {int(bad.sum())} non-finite value(s) "
                             f"(NaN or inf) out of {out.numel()}")


# ----------------------------------------------------------------------------- verl glue

@dataclass(frozen=True)
class Settings:
    """What the plugin fixes per launch (verl does not pass these to the hooks)."""

    max_length: int           # data.max_response_length: the response budget in tokens
    total_steps: int          # trainer.total_training_steps
    run_token: str = "local"  # tells apart runs of one candidate on one Ray cluster
    step_log: str = ""        # JSONL the estimator appends its per-step stats to ("": none)
    group_size: int = 0       # actor_rollout_ref.rollout.n (0: the largest group seen)


class StepClock:
    """The training step, 0-based: the estimator (in the trainer process) reads it from
    verl's ``SkipManager.step`` (the 1-based global step, resume-aware) or counts its own
    calls outside a trainer, and publishes it; the policy loss (on the GPU workers) reads
    the last published value from Ray's internal KV, or from this process."""

    _local: dict = {}
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
    try:
        from verl.utils.skip.skip_manager import SkipManager
    except ImportError:
        return -1
    return int(SkipManager.step)


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _micro_batch_var() -> contextvars.ContextVar:
    """The context variable that holds the micro-batch while a POISE loss runs. It lives
    on verl's losses module, so every copy of this runtime in a process (POISE's own
    import, a plugin, an exported plugin) reads the one the wrapper sets."""
    from verl.workers.utils import losses

    var = getattr(losses, "_poise_micro_batch", None)
    if var is None:
        var = contextvars.ContextVar("poise_micro_batch", default=None)
        losses._poise_micro_batch = var
    return var


def _wrap_ppo_loss(original):
    def ppo_loss(config, model_output, data, dp_group=None):
        """verl's ``ppo_loss`` with the micro-batch visible to a POISE policy loss."""
        from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

        fn = POLICY_LOSS_REGISTRY.get(config.policy_loss.get("loss_mode", "vanilla"))
        if not getattr(fn, "__poise_loss__", False):
            return original(config, model_output, data, dp_group)
        var = _micro_batch_var()
        token = var.set(data)
        try:
            return original(config, model_output, data, dp_group)
        finally:
            var.reset(token)

    ppo_loss.__poise_wrapper__ = True
    ppo_loss.__wrapped__ = original
    return ppo_loss


def install() -> None:
    """Wrap verl's ``ppo_loss`` once per process, also where a module bound the name on
    import (the v1 engine workers: ``from verl.workers.utils.losses import ppo_loss``)."""
    import sys

    from verl.workers.utils import losses

    _micro_batch_var()
    if getattr(losses.ppo_loss, "__poise_wrapper__", False):
        return
    original = losses.ppo_loss
    losses.ppo_loss = _wrap_ppo_loss(original)
    mod = sys.modules.get("verl.workers.engine_workers")
    if mod is not None and getattr(mod, "ppo_loss", None) is original:
        mod.ppo_loss = losses.ppo_loss


def _response_tensor(data, key: str, width: int) -> Tensor | None:
    """A per-response-token field of the micro-batch as (bs, width), zero-padded."""
    if key not in data.keys():
        return None
    t = data.get(key)
    if getattr(t, "is_nested", False):
        t = torch.nested.to_padded_tensor(t, 0.0)
    if t.dim() == 1:
        t = t.unsqueeze(-1)
    if t.shape[1] < width:
        t = torch.nn.functional.pad(t, (0, width - t.shape[1]))
    return t[:, :width]


def _row_ids(data, key: str) -> list | None:
    if key not in data.keys():
        return None
    v = data.get(key)
    if hasattr(v, "tolist"):
        v = v.tolist()
    return list(v)


class VerlCandidate:
    """One candidate's hooks in verl's signatures. ``estimate_advantages`` and
    ``compute_policy_loss`` are what gets registered."""

    def __init__(self, name: str, source: str, settings: Settings, fallback_source: str):
        self.name = name
        self.source = source
        self.settings = settings
        self.hooks = Hooks(load_candidate(source, name), load_candidate(fallback_source,
                                                                        name + "_fallback"))
        self.clock = StepClock(f"{name}/{settings.run_token}/step")

    def rollouts(self, token_level_rewards: Tensor, response_mask: Tensor, index,
                 step: int) -> Rollouts:
        mask = response_mask.float()                                    # (bs, T)
        correct, valid, length = decode_outcomes(token_level_rewards, mask)
        group = group_ids(index, mask.shape[0])                         # (bs,)
        size = self.settings.group_size or int(torch.bincount(group).max())
        return Rollouts(correct=correct, valid=valid, length=length,
                        max_length=self.settings.max_length, group=group, group_size=size,
                        response_mask=mask, step=step, total_steps=self.settings.total_steps)

    def estimate_advantages(self, token_level_rewards: Tensor, response_mask: Tensor,
                            index=None, config=None, **unused) -> tuple[Tensor, Tensor]:
        """verl's advantage-estimator signature -> (advantages, returns), (bs, T)."""
        batch = self.rollouts(token_level_rewards, response_mask, index, self.clock.advance())
        rewards = self.hooks.shape_reward(batch)                        # (bs,)
        adv = self.hooks.compute_advantages(batch, rewards)             # (bs,) or (bs, T)
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

    def loss_rollouts(self, data, mask: Tensor) -> Rollouts:
        """The micro-batch ``data`` (verl's TensorDict) as the loss's ``Rollouts``."""
        width = mask.shape[1]
        scores = None
        for key in ("rm_scores", "token_level_scores", "token_level_rewards"):
            scores = _response_tensor(data, key, width)
            if scores is not None:
                break
        uids = _row_ids(data, "uid")
        if scores is None or uids is None:
            raise CandidateError("policy_loss", "verl's micro-batch carries no rm_scores or "
                                 "no uid: POISE's loss needs both (verl 0.9.1, trainer."
                                 "use_v1=True)")
        correct, valid, length = decode_outcomes(scores.to(mask.device), mask)
        group = group_ids(uids, mask.shape[0]).to(mask.device)
        step = self.clock.current()
        if step is None:
            step = max(int(_non_tensor(data, "global_steps", 1)) - 1, 0)
        size = self.settings.group_size or int(torch.bincount(group).max())
        return Rollouts(correct=correct.to(mask.device), valid=valid.to(mask.device),
                        length=length, max_length=self.settings.max_length, group=group,
                        group_size=size, response_mask=mask, step=step,
                        total_steps=self.settings.total_steps)

    def compute_policy_loss(self, old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor,
                            response_mask: Tensor, loss_agg_mode: str = "token-mean",
                            config=None, rollout_is_weights: Tensor | None = None
                            ) -> tuple[Tensor, dict]:
        """verl's policy-loss signature. ``loss_agg_mode`` and the clip settings in
        ``config`` are ignored: the candidate's own code decides both."""
        if rollout_is_weights is not None:
            raise CandidateError("policy_loss", "verl passed rollout importance weights "
                                 "(algorithm.rollout_correction); POISE candidates do not "
                                 "take them: disable rollout correction")
        data = _micro_batch_var().get()
        if data is None:
            raise CandidateError("policy_loss", "called outside verl's ppo_loss: POISE's "
                                 "losses need verl 0.9.1's v1 engine workers "
                                 "(trainer.use_v1=True), which pass the whole micro-batch")
        mask = response_mask.to(log_prob.dtype)                          # (n, T)
        batch = self.loss_rollouts(data, mask)
        ref = _response_tensor(data, "ref_log_prob", mask.shape[1])
        ref = ref.to(log_prob.dtype) if ref is not None else None
        loss, metrics = self.hooks.policy_loss(log_prob, old_log_prob, advantages, mask,
                                               batch, ref_logp=ref)
        if self.settings.group_size:
            counts = torch.bincount(batch.group)[batch.group]
            metrics["poise/partial_groups"] = float(
                (counts < self.settings.group_size).float().mean())
        return loss * global_share(mask, config), metrics


def _non_tensor(data, key: str, default):
    try:
        value = data.get(key, default) if key in data.keys() else default
    except Exception:  # noqa: BLE001 - a TensorDict without the key
        return default
    value = getattr(value, "data", value)
    return value if value is not None else default


def global_share(mask: Tensor, config) -> float:
    """The micro-batch's share of the global mini-batch in non-empty sequences, times the
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

_REGISTERED: dict = {}
_REGISTER_LOCK = threading.Lock()


def register_candidate(source: str, settings: Settings, name: str,
                       fallback_source: str) -> VerlCandidate:
    """Register ``source``'s hooks with verl as advantage estimator and policy loss, both
    under ``name``, and wrap verl's ``ppo_loss`` (``install``). Registering the same code
    again returns the first registration; other code under a taken name is refused."""
    from verl.trainer.ppo import core_algos

    with _REGISTER_LOCK:
        known = _REGISTERED.get(name)
        if known is not None:
            if known.source != source or known.settings != settings:
                raise ValueError(f"{name} is already registered with other code or settings")
            return known
        if name in core_algos.ADV_ESTIMATOR_REGISTRY or name in core_algos.POLICY_LOSS_REGISTRY:
            raise ValueError(f"verl already has an estimator or loss named {name}")
        cand = VerlCandidate(name, source, settings, fallback_source)
        def policy_loss(*args, **kwargs):
            return cand.compute_policy_loss(*args, **kwargs)

        policy_loss.__poise_loss__ = True
        core_algos.register_adv_est(name)(cand.estimate_advantages)
        core_algos.register_policy_loss(name)(policy_loss)
        _REGISTERED[name] = cand
    install()
    return cand
