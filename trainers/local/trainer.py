"""The embedded CPU GRPO trainer, driven only through the candidate hooks.

One step: sample ``prompts_per_step`` prompts from the seed's stream, draw
``group_size`` responses each at T=1 with a KV cache, grade them (correct / valid /
length), then ``shape_reward`` -> ``compute_advantages`` -> ``policy_loss`` on
``minibatches`` group-aligned minibatches, one Adam update each (so later minibatches are
slightly off-policy and clipping has work to do). ``old_logp`` is the sampler's own
log-prob; ``ref_logp`` comes from the frozen warm start. Departures from textbook GRPO
live in the candidate, not here: the trainer has no algorithm-specific branches.

A seed fixes the prompt stream, the sampling generator and the evaluation draws, so two
algorithms run with the same seed see the same first batch and are compared pairwise.

Training runs on one device (``train(..., device=)``, default: the start model's): the
policy, the frozen reference, the KV cache, the sampler's generator and every tensor
the hooks receive (``Rollouts``, log-probs, advantages, mask) live there; only grading
(decoding the sampled tokens to text) happens on the CPU. A hook that returns a tensor
on another device is a contract failure naming the hook. On CPU the reference engine
computes what it always did (tests/test_golden_run.py); the CUDA path has not been run
on a GPU here.

``cfg.engine`` picks how sampling and the trained forwards are computed
(trainers/local/engines.py): ``compiled`` (the default: the fast engine with its decode
step compiled ahead of time, trainers/local/compiled.py), ``fast``
(trainers/local/engine.py) or ``reference`` (the round-1 code in trainers/local/model.py).
All compute the same functions of the same weights (tests/test_engine.py,
tests/test_compiled.py); the fast ones sample in another order than the reference, so a
seed's samples differ from its; the compiled one draws what the fast one draws.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from evals.metrics import auc
from evals.tasks import BOS, PromptStream, decode, encode, grade
from trainers.algorithm import Algorithm, CandidateError, Rollouts
from trainers.local import engines
from trainers.local.evaluate import EvalConfig, checks_ablation, evaluate, testbed_profile
from trainers.local.model import TinyGPT, left_pad
from trainers.local.optim import Adam

CURVE_KEYS = ("overall", "acc@1", "valid", "length")
# TrainResult.phase_cpu_seconds: sampling (the rollouts' decoding), the frozen reference's
# forward, the policy's trained forwards, backward + clipping + Adam, the rest of a step
# (grading, the candidate's reward/advantage/loss hooks, metrics), the periodic and
# final evaluations (the profile's too), and setup (copying the model, the optimizer).
PHASES = ("sampling", "reference_forward", "policy_forward", "backward_optimizer",
          "step_other", "curve_eval", "final_eval", "setup")
# How reports group them (every phase once).
PHASE_GROUPS = (("sampling", ("sampling",)),
                ("forwards (reference + policy)", ("reference_forward", "policy_forward")),
                ("backward + optimizer", ("backward_optimizer",)),
                ("evaluation", ("curve_eval", "final_eval")),
                ("the rest (grading, hooks, setup)", ("step_other", "setup")))


def phase_totals(splits: list[dict | None]) -> dict[str, float] | None:
    """Summed CPU-s per phase over runs' ``phase_cpu_seconds`` (or archived evaluations'
    ``metrics["cpu_seconds"]``); None when any run has none (cached before the trainer
    recorded it, a VERL run, a failed one): a partial sum would misstate the shares."""
    if not splits or not all(splits):
        return None
    out: dict[str, float] = {}
    for d in splits:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def phase_shares(split: dict[str, float]) -> str:
    """``split`` as shares of its total, in PHASE_GROUPS: "sampling 30%, forwards ..."."""
    total = sum(split.values()) or 1.0
    return ", ".join(f"{name} {sum(split.get(k, 0.0) for k in keys) / total:.0%}"
                     for name, keys in PHASE_GROUPS)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 80
    prompts_per_step: int = 16
    group_size: int = 8
    minibatches: int = 2
    lr: float = 2e-4
    grad_clip: float = 1.0
    max_response: int = 80  # testbed v3: two re-checks of a 6-digit sum fit
    eval_every: int = 20
    curve_eval: EvalConfig = field(default_factory=lambda: EvalConfig(
        size=96, pass_problems=24, n_samples=16))
    final_eval: EvalConfig = field(default_factory=EvalConfig)
    cpu_budget: float | None = None  # stop training once this many CPU-seconds are spent
    # "compiled" (trainers/local/compiled.py: the fast engine with its decode step
    # compiled ahead of time), "fast" (trainers/local/engine.py, eager) or "reference"
    # (the round-1 engine in trainers/local/model.py, kept for the paired checks in bench).
    engine: str = "compiled"
    # The task families trained and evaluated (evals.tasks.FAMILY_SETS): "search", or
    # "transfer" for a campaign's transfer stage (families the search never saw).
    families: str = "search"
    # After the final evaluation, also profile the trained policy at T=1 per family
    # (evaluate.testbed_profile: accuracy, length of correct answers, tokens by part)
    # and greedily with its re-checks cut (evaluate.checks_ablation: are they needed?):
    # what RL removed from or added to an answer. ``compare --profile`` turns it on.
    profile_after: bool = False

    def as_dict(self) -> dict:
        d = asdict(self)
        if not d["profile_after"]:
            # off: the dict (and every cached result keyed by it) is what it was before
            # the field existed
            del d["profile_after"]
        return d


def train_config_from_dict(d: dict) -> TrainConfig:
    """A TrainConfig from its ``as_dict()`` form (nested EvalConfigs as dicts)."""
    d = dict(d)
    for key in ("curve_eval", "final_eval"):
        if isinstance(d.get(key), dict):
            d[key] = EvalConfig(**d[key])
    return TrainConfig(**d)


PROFILE_PROBLEMS = 128  # val problems per family in TrainConfig.profile_after's profile


@dataclass
class TrainResult:
    algorithm: str
    seed: int
    steps_done: int
    curve: list[dict[str, float]]        # per training step
    evals: list[dict[str, float]]        # periodic evaluations on the val subset
    final: dict[str, float]              # full evaluation at the end
    auc: dict[str, float]                # mean over the periodic evaluations
    cpu_seconds: float
    train_cpu_seconds: float
    profile: dict | None = None          # TrainConfig.profile_after: per-family profile
    # where the CPU went (process CPU-s per phase, PHASES order; they sum to cpu_seconds)
    phase_cpu_seconds: dict[str, float] = field(default_factory=dict)
    # engine "compiled" only: why its compiled decode step was not available (the fast
    # engine's eager decode ran instead); None when it ran
    engine_fallback: str | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        for key in ("profile", "engine_fallback"):
            if d[key] is None:
                del d[key]
        return d


class NullProgress:
    def __call__(self, step: int, total: int, metrics: dict[str, float]) -> None:
        pass


def build_rollouts(problems, gen, group_size: int, max_response: int, step: int,
                   total_steps: int) -> Rollouts:
    """The graded batch, on the device of ``gen`` (grading reads a CPU copy)."""
    dev = gen.tokens.device
    graded = [grade(p, decode(t), bool(term))
              for p, t, term in zip(problems, gen.tokens.cpu().tolist(),
                                    gen.terminated.cpu().tolist())]
    n = len(problems)
    return Rollouts(
        correct=torch.tensor([g.correct for g in graded], dtype=torch.bool, device=dev),
        valid=torch.tensor([g.valid for g in graded], dtype=torch.bool, device=dev),
        length=gen.mask.sum(-1).long(),
        max_length=max_response,
        group=torch.arange(n // group_size, device=dev).repeat_interleave(group_size),
        group_size=group_size,
        response_mask=gen.mask,
        step=step,
        total_steps=total_steps,
    )


def _on_device(hook: str, out: torch.Tensor, device: torch.device) -> torch.Tensor:
    if out.device != device:
        raise CandidateError(hook, f"returned a tensor on {out.device}, the batch is on "
                             f"{device}: make new tensors with device=batch.correct.device "
                             "or from the inputs (torch.zeros_like, x.new_zeros)")
    return out


def train(algo: Algorithm, start: TinyGPT, seed: int, cfg: TrainConfig = TrainConfig(),
          progress: Callable = NullProgress(), device: str | torch.device | None = None
          ) -> TrainResult:
    """Train a copy of ``start`` with ``algo`` on ``device`` (None: where ``start`` is;
    ``start`` is moved there and serves as the frozen reference) and evaluate it. Raises
    CandidateError if a hook breaks the contract (wrong shape, NaN, no gradient, a
    tensor on the wrong device)."""
    t_start = time.process_time()
    gen_fn, logp_fn = engines.select(cfg.engine)
    device = torch.device(device) if device is not None else next(start.parameters()).device
    start = start.to(device)
    fallback = engines.compiled_fallback(start) if cfg.engine == "compiled" else None
    policy = copy.deepcopy(start).train()
    ref = start.eval()
    opt = Adam(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    stream = PromptStream(seed, cfg.families)
    sampler = torch.Generator(device=device).manual_seed(10_000 + seed)
    curve, evals = [], []
    g = cfg.group_size
    train_cpu = 0.0
    step = 0
    phases = dict.fromkeys(PHASES, 0.0)
    clock = [time.process_time()]

    def lap(phase: str) -> None:  # the CPU since the last lap goes to ``phase``
        now = time.process_time()
        phases[phase] += now - clock[0]
        clock[0] = now
    lap("setup")
    for step in range(cfg.steps):
        t0 = time.process_time()
        problems = [p for p in stream.next_batch(cfg.prompts_per_step) for _ in range(g)]
        ids, pmask = left_pad([[BOS] + encode(p.prompt) for p in problems], device=device)
        lap("step_other")
        policy.eval()
        gen = gen_fn(policy, ids, pmask, cfg.max_response, 1.0, sampler, group_size=g)
        policy.train()
        lap("sampling")
        batch = build_rollouts(problems, gen, g, cfg.max_response, step, cfg.steps)
        rewards = _on_device("shape_reward", algo.shape_reward(batch), device)  # (N,)
        adv = _on_device("compute_advantages", algo.compute_advantages(batch, rewards),
                         device)
        adv = (adv.unsqueeze(-1) if adv.dim() == 1 else adv) * gen.mask  # (N, T)
        lap("step_other")
        with torch.no_grad():
            ref_logp = logp_fn(ref, ids, pmask, gen.tokens, gen.mask, group_size=g)
        lap("reference_forward")
        loss_metrics: dict[str, list[float]] = {}
        grad_norms = []
        groups = torch.arange(cfg.prompts_per_step, device=device)
        for mb_groups in groups.chunk(cfg.minibatches):
            idx = (mb_groups.unsqueeze(-1) * g + torch.arange(g, device=device)).reshape(-1)
            lap("step_other")
            logp = logp_fn(policy, ids[idx], pmask[idx], gen.tokens[idx], gen.mask[idx],
                           group_size=g)
            lap("policy_forward")
            loss, metrics = algo.policy_loss(logp, gen.logp[idx], adv[idx], gen.mask[idx],
                                             batch.select(idx), ref_logp=ref_logp[idx])
            _on_device("policy_loss", loss, device)
            if not loss.requires_grad:
                raise CandidateError("policy_loss", "the loss does not depend on logp "
                                     "(it carries no gradient)")
            lap("step_other")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            if not math.isfinite(float(norm)):
                raise CandidateError("policy_loss", "gradients are not finite")
            opt.step()
            lap("backward_optimizer")
            grad_norms.append(float(norm))
            for k, v in metrics.items():
                loss_metrics.setdefault(k, []).append(v)
        mask = gen.mask
        tokens = mask.sum().clamp_min(1)
        row = {
            "step": step + 1,
            "reward": float(rewards.mean()),
            "accuracy": float(batch.correct.float().mean()),
            "validity": float(batch.valid.float().mean()),
            "response_length": float(batch.length.float().mean()),
            "entropy": float((gen.entropy * mask).sum() / tokens),
            "kl_to_start": float(((gen.logp - ref_logp) * mask).sum() / tokens),
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "all_fail_groups": float((batch.correct.view(-1, g).sum(-1) == 0).float().mean()),
            "all_correct_groups": float(batch.correct.view(-1, g).all(-1).float().mean()),
        }
        row.update({k: sum(v) / len(v) for k, v in loss_metrics.items()})
        row["clip_fraction"] = row.get("actor/pg_clipfrac", 0.0)
        train_cpu += time.process_time() - t0
        row["cpu_seconds"] = train_cpu
        curve.append(row)
        lap("step_other")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            evals.append({"step": step + 1,
                          **evaluate(policy, cfg.curve_eval, engine=cfg.engine,
                                   which=cfg.families)})
            lap("curve_eval")
        progress(step + 1, cfg.steps, row)
        lap("step_other")
        if cfg.cpu_budget is not None and train_cpu >= cfg.cpu_budget:
            if not evals or evals[-1]["step"] != step + 1:
                evals.append({"step": step + 1,
                          **evaluate(policy, cfg.curve_eval, engine=cfg.engine,
                                   which=cfg.families)})
                lap("curve_eval")
            break
    final = evaluate(policy, cfg.final_eval, engine=cfg.engine, which=cfg.families)
    profile = None
    if cfg.profile_after:
        profile = testbed_profile(policy, problems=PROFILE_PROBLEMS, which=cfg.families)
        ablation = checks_ablation(policy, problems=PROFILE_PROBLEMS,
                                   max_response=cfg.final_eval.max_response,
                                   which=cfg.families)
        for fam, row in ablation.items():
            profile[fam].update(row)
    lap("final_eval")
    phases["setup"] += clock[0] - t_start - sum(phases.values())  # anything unlapped
    return TrainResult(
        algorithm=algo.name, seed=seed, steps_done=step + 1, curve=curve, evals=evals,
        final=final, auc={k: auc([e[k] for e in evals]) for k in CURVE_KEYS},
        cpu_seconds=clock[0] - t_start, train_cpu_seconds=train_cpu,
        profile=profile, phase_cpu_seconds=phases, engine_fallback=fallback)
