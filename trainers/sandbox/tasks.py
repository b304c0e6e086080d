"""What the sandbox child can run: trusted task code that calls the candidate's hooks.

A task is a ``setup`` (runs before the guard: imports, the warm-start checkpoint) and a
``run`` (after the candidate is loaded, under the guard). ``run`` returns a JSON-able dict;
an ``errors`` list in it makes the result a contract failure.

- ``check_hooks``: every hook on edge-case batches (mixed, all-fail, all-correct and
  zero-variance groups, invalid samples, G=1, a single sample, ragged masks, responses
  at max length, first and last step): output shapes and finite values (the contract),
  no in-place change of the batch, a finite scalar loss, finite gradients w.r.t. logp,
  none on padding, and non-zero ones where the batch has signal. Also the minibatch
  path (``Rollouts.select``) and ``ref_logp=None``.
- ``smoke_train``: a few steps of the local trainer from a tiny warm start.
- ``train``: one seed of full local training; per-step rows stream as progress. A warm
  start missing from ``home`` is built first, within the task's limits: build it
  beforehand (``trainers.local.warmstart.load_or_build``) to keep them for training.
  ``payload["device"]`` (default ``cpu``; also for ``smoke_train``) is where it trains:
  on CUDA the trusted setup initialises the device, moves the warm start there and runs
  each kind of kernel once before the guard (``trainers.local.device.warm_up``), and the
  sandbox replaces its address-space limit by a resident-memory watchdog
  (``trainers/sandbox/kernel.py``). Never run on a GPU here.
- ``selftest_process_tree``: forks sleepers (one in its own session) before the guard and
  then hangs: the containment test for the parent's process-tree kill.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

SMOKE_TRAIN_CONFIG = {
    "steps": 5, "prompts_per_step": 4, "group_size": 4, "minibatches": 2,
    "max_response": 48, "eval_every": 5,
    "curve_eval": {"size": 4, "pass_problems": 2, "n_samples": 16, "max_response": 48},
    "final_eval": {"size": 4, "pass_problems": 2, "n_samples": 16, "max_response": 48},
}
# The tiny warm start of tests/conftest.py: built in seconds, cached under <home>. Its
# corpus keeps testbed v3's 0-4 filler: on v4's 0-8 a 1-layer model trained 120 steps
# greedily writes filler to the budget and is never right, so a smoke run would never
# reach the hooks' correct-answer paths.
SMOKE_WARM_CONFIG = {"model": {"n_layer": 1, "n_head": 2, "d_model": 32},
                     "examples": 3000, "steps": 120, "batch_size": 32, "lr": 3e-3,
                     "noise": {"max_filler": 4}}
MAX_ERRORS = 6


@dataclass(frozen=True)
class Task:
    setup: Callable[[dict], Any]
    run: Callable[[Any, Any, dict, Callable[[dict], None]], dict]


# ----------------------------------------------------------------------------- check_hooks

def _setup_check(payload: dict):
    import torch

    from trainers.algorithm import Rollouts
    from trainers.baselines import grpo  # the fallbacks, imported before the guard

    torch.set_num_threads(1)
    return edge_batches(Rollouts, torch), grpo


def edge_batches(rollouts_cls, torch) -> list[tuple[str, Any]]:
    """(name, Rollouts) for every edge case the verifier probes; T = max_length = 12."""
    t = 12

    def make(correct, valid, length, group_size, step=3, total=10):
        correct = torch.tensor(correct, dtype=torch.bool)
        valid = torch.tensor(valid, dtype=torch.bool) | correct
        length = torch.tensor(length, dtype=torch.long)
        n = correct.shape[0]
        return rollouts_cls(
            correct=correct, valid=valid, length=length, max_length=t,
            group=torch.arange(n // group_size).repeat_interleave(group_size),
            group_size=group_size,
            response_mask=(torch.arange(t)[None, :] < length[:, None]).float(),
            step=step, total_steps=total)

    f, c = False, True
    return [
        ("mixed: 3 prompts x 4 (a mixed, an all-fail, an all-correct group), step 0",
         make([c, f, c, f, f, f, f, f, c, c, c, c], [c, c, c, f, c, f, c, c, c, c, c, c],
              [5, 9, 3, 12, 7, 2, 11, 4, 6, 6, 8, 3], 4, step=0)),
        ("all-fail: 1 prompt x 4, two invalid", make([f] * 4, [c, f, c, f], [4, 12, 6, 9], 4)),
        ("all-correct: 1 prompt x 4", make([c] * 4, [c] * 4, [3, 5, 8, 4], 4)),
        ("zero-variance: 4 identical samples, next to a mixed group",
         make([c, c, c, c, c, f, f, c], [c] * 8, [5, 5, 5, 5, 4, 7, 9, 2], 4)),
        ("invalid: an all-invalid group and a partly invalid one",
         make([f, f, f, f, c, f, f, c], [f, f, f, f, c, f, c, c], [12, 3, 7, 12, 5, 12, 6, 4],
              4)),
        ("G=1: 4 prompts x 1 sample", make([c, f, c, f], [c, f, c, c], [4, 7, 2, 12], 1)),
        ("single sample: 1 prompt x 1", make([c], [c], [6], 1)),
        ("ragged masks: lengths 1 to 12",
         make([c, f, f, c, f, c, f, f], [c, c, f, c, c, c, f, c], [1, 12, 2, 11, 1, 12, 3, 10],
              4)),
        ("at max length: every length = max_length = 12, last step",
         make([c, f, c, f, f, f, c, c], [c, c, c, f, c, c, c, c], [12] * 8, 4, step=9)),
    ]


def _run_check(context, algo, payload: dict, progress) -> dict:
    """Each hook on each batch; a failing hook is replaced by GRPO's for the hooks after
    it, so one run reports every broken hook. Errors are grouped by message."""
    import torch

    _needs_source(algo)
    batches, grpo = context
    failures: dict[str, list[str]] = {}
    summaries = []
    gen = torch.Generator().manual_seed(0)
    for name, batch in batches:
        def fail(message: str, name=name) -> None:
            failures.setdefault(" ".join(message.split()), []).append(name)

        summary = _check_batch(algo, grpo, batch, gen, fail)
        summaries.append({"batch": name, **summary})
    errors = []
    for message, names in failures.items():
        where = (f"batch: {names[0]}" if len(names) == 1 else
                 f"{len(names)} of {len(batches)} batches, e.g. {names[0]}")
        errors.append(f"{message} [{where}]")
    return {"defined": list(algo.defined), "batches": summaries, "errors": errors[:MAX_ERRORS]}


class _Failure(Exception):
    pass


def _needs_source(algo) -> None:
    if algo is None:
        raise ValueError("this sandbox task needs the candidate's 'source' in its payload")


def _attempt(fail, fn: Callable, fallback: Callable):
    """fn(), or, if it breaks the contract, the failure recorded and fallback()."""
    try:
        return fn()
    except Exception as e:  # CandidateError from the checked hooks, or a _Failure
        fail(str(e))
        return fallback()


def _check_batch(algo, grpo, batch, gen, fail) -> dict:
    import torch

    fields = ("correct", "valid", "length", "group", "response_mask")
    before = {k: getattr(batch, k).clone() for k in fields}

    def checked(hook: str, fn: Callable):
        def call():
            out = fn()
            for k in fields:
                if not torch.equal(getattr(batch, k), before[k]):
                    for j in fields:  # restore it for the hooks after this one
                        setattr(batch, j, before[j].clone())
                    raise _Failure(f"{hook}: modified batch.{k} in place (hooks must not "
                                   "change their inputs)")
            return out
        return call

    rewards = _attempt(fail, checked("shape_reward", lambda: algo.shape_reward(batch)),
                       lambda: grpo.shape_reward(batch))  # (N,)
    adv = _attempt(fail, checked("compute_advantages",
                                 lambda: algo.compute_advantages(batch, rewards.clone())),
                   lambda: grpo.compute_advantages(batch, rewards))
    mask = batch.response_mask  # (N, T)
    adv = (adv.unsqueeze(-1) if adv.dim() == 1 else adv) * mask  # (N, T), as the trainer
    old_logp = -(0.05 + 2.0 * torch.rand(mask.shape, generator=gen)) * mask
    ref_logp = (old_logp + 0.1 * torch.randn(mask.shape, generator=gen)) * mask
    drift = 0.3 * torch.randn(mask.shape, generator=gen) * mask
    signal = bool((adv.abs() * mask).sum() > 1e-8)

    def loss_checks():
        # On-policy (the trainer's first minibatch): gradients must flow given a signal.
        loss, grad = _loss_and_grad(algo, old_logp.clone(), old_logp, adv, mask, batch,
                                    ref_logp)
        if signal and float(grad.abs().sum()) == 0.0:
            raise _Failure("policy_loss: zero gradient w.r.t. logp although the advantages "
                           "are non-zero (is the loss detached or multiplied by zero?)")
        # Off-policy, without a reference policy, and on a group-aligned minibatch.
        _loss_and_grad(algo, old_logp + drift, old_logp, adv, mask, batch, None)
        if batch.num_groups >= 2:
            idx = (batch.group < (batch.num_groups + 1) // 2).nonzero().squeeze(-1)
            _loss_and_grad(algo, old_logp[idx] + drift[idx], old_logp[idx], adv[idx],
                           mask[idx], batch.select(idx), ref_logp[idx])
        return loss, float(grad.abs().sum())

    loss, grad_sum = _attempt(fail, loss_checks, lambda: (float("nan"), float("nan")))
    return {"reward_mean": float(rewards.mean()), "adv_abs_max": float(adv.abs().max()),
            "loss": loss, "grad_abs_sum": grad_sum, "signal": signal}


def _loss_and_grad(algo, logp, old_logp, adv, mask, batch, ref_logp):
    import torch

    logp = logp.detach().requires_grad_(True)
    inputs = [old_logp.clone(), adv.clone(), mask.clone()]
    loss, _ = algo.policy_loss(logp, old_logp, adv, mask, batch, ref_logp=ref_logp)
    for name, value, saved in zip(("old_logp", "advantages", "mask"),
                                  (old_logp, adv, mask), inputs):
        if not torch.equal(value, saved):
            raise _Failure(f"policy_loss: modified {name} in place (hooks must not change "
                           "their inputs)")
    loss.backward()
    grad = logp.grad
    if grad is None:
        raise _Failure("policy_loss: no gradient reaches logp (do not detach it)")
    if not bool(torch.isfinite(grad).all()):
        raise _Failure(f"policy_loss: {int((~torch.isfinite(grad)).sum())} non-finite "
                       "gradient value(s) w.r.t. logp")
    if float((grad * (1 - mask)).abs().sum()) > 0:
        raise _Failure("policy_loss: gradient flows into padding positions (mask == 0): "
                       "apply the response mask")
    return float(loss.detach()), grad


# ----------------------------------------------------------------------------- training

def _train_configs(payload: dict, smoke: bool):
    from evals.tasks import VOCAB_SIZE
    from trainers.local.trainer import train_config_from_dict
    from trainers.local.warmstart import WarmStartConfig, warm_config_from_dict

    tc = dict(SMOKE_TRAIN_CONFIG) if smoke else {}
    tc.update(payload.get("train_config") or {})
    if smoke and "steps" in payload:
        tc["steps"] = int(payload["steps"])
    warm = payload.get("warm_config") or (SMOKE_WARM_CONFIG if smoke else None)
    if warm is None:
        return train_config_from_dict(tc), WarmStartConfig()
    warm = dict(warm)
    if isinstance(warm.get("model"), dict):
        warm["model"] = {"vocab_size": VOCAB_SIZE, **warm["model"]}
    return train_config_from_dict(tc), warm_config_from_dict(warm)


def train_config(payload: dict, smoke: bool = False):
    """The TrainConfig a ``train`` (or ``smoke_train``) payload trains with."""
    return _train_configs(payload, smoke)[0]


def warm_start_config(payload: dict, smoke: bool = False):
    """The WarmStartConfig a ``train`` (or ``smoke_train``) payload trains from."""
    return _train_configs(payload, smoke)[1]


def _setup_train(payload: dict, smoke: bool = False):
    import torch

    import trainers.baselines.grpo  # noqa: F401 - before the guard
    from trainers.local.trainer import train
    from trainers.local.warmstart import load_or_build

    from trainers.local.device import resolve_device, warm_up

    torch.set_num_threads(1)
    cfg, warm = _train_configs(payload, smoke)
    if "home" not in payload:
        raise ValueError("the training payload needs 'home' (the warm-start cache)")
    device = resolve_device(payload.get("device") or "cpu")
    start = load_or_build(warm, Path(payload["home"]), device=device)
    warm_up(start, device)  # CUDA: before the guard (a no-op on CPU)
    if cfg.engine == "compiled" and torch.device(device).type == "cpu":
        from trainers.local import compiled
        compiled.prepare(warm.model, build_missing=False)  # the parent built it
    return train, start, cfg, device


def _run_train(context, algo, payload: dict, progress) -> dict:
    _needs_source(algo)
    train, start, cfg, device = context

    def report(step, total, row):
        progress({"step": step, "total": total, **row})

    return train(algo, start, int(payload.get("seed", 0)), cfg, report,
                 device=device).as_dict()


def _run_smoke(context, algo, payload: dict, progress) -> dict:
    result = _run_train(context, algo, payload, progress)
    errors = []
    for row in result["curve"]:
        bad = [k for k, v in row.items() if not math.isfinite(float(v))]
        if bad:
            errors.append(f"smoke training step {int(row['step'])}: non-finite "
                          f"{', '.join(bad)}")
    return {"steps_done": result["steps_done"], "curve": result["curve"],
            "final": result["final"], "errors": errors[:MAX_ERRORS]}


# ----------------------------------------------------------------------------- selftest

def _setup_process_tree(payload: dict) -> list[int]:
    pids = []
    for i in range(int(payload.get("sleepers", 2))):
        pid = os.fork()
        if pid == 0:  # the sleeper: one leaves the process group, as an escape attempt
            try:
                if i == 0:
                    os.setsid()
                time.sleep(600)
            finally:
                os._exit(0)
        pids.append(pid)
    return pids


def _run_process_tree(pids, algo, payload: dict, progress) -> dict:
    progress({"pids": pids})
    time.sleep(600)
    return {}


TASKS: dict[str, Task] = {
    "check_hooks": Task(_setup_check, _run_check),
    "smoke_train": Task(lambda p: _setup_train(p, smoke=True), _run_smoke),
    "train": Task(_setup_train, _run_train),
    "selftest_process_tree": Task(_setup_process_tree, _run_process_tree),
}
