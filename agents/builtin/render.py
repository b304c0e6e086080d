"""Render a genome (agents/builtin/genes.py) as a candidate module's source text.

Each gene contributes constants and a fragment of one hook's body; the module imports
only torch (and math for a cosine schedule) and defines only the hooks that differ from
GRPO's, unless ``full``. The fragments for GRPO's genes repeat trainers/baselines/grpo.py
operation for operation, so a rendered GRPO gives the same numbers, bit for bit.
"""
from __future__ import annotations

import re
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agents.builtin.genes import Genome

GRPO_CLIP = ("dual_clip", (("eps", 0.2), ("c", 3.0)))
GRPO_KL = ("k3", (("beta", 0.001),))


def needed_hooks(genome: "Genome") -> tuple[str, ...]:
    """The hooks whose behaviour differs from GRPO's fallback."""
    hooks = []
    if genome.reward.kind != "plain":
        hooks.append("shape_reward")
    if (genome.validity.kind == "stats" or genome.baseline.kind != "group_mean"
            or genome.normalization.kind != "group_std" or genome.filtering.kind != "none"):
        hooks.append("compute_advantages")
    sched = genome.schedule.get("target")
    if ((genome.clipping.kind, genome.clipping.params) != GRPO_CLIP
            or (genome.kl.kind, genome.kl.params) != GRPO_KL
            or genome.aggregation.kind != "seq_mean_token_mean"
            or genome.filtering.kind != "none" or genome.validity.kind == "loss"
            or sched in ("clip_high", "kl_beta")):
        hooks.append("policy_loss")
    return tuple(hooks)


def render_module(genome: "Genome", name: str, *, full: bool = False) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise ValueError(f"candidate name {name!r} is not a slug: use lowercase letters, "
                         "digits, '.', '_' and '-'")
    hooks = ("shape_reward", "compute_advantages", "policy_loss") if full \
        else needed_hooks(genome)
    constants: list[str] = []
    blocks: list[str] = []
    if "shape_reward" in hooks:
        blocks.append(_shape_reward(genome, constants))
    if "compute_advantages" in hooks:
        blocks.append(_compute_advantages(genome, constants))
    if "policy_loss" in hooks:
        blocks.append(_policy_loss(genome, constants))
        blocks.append(_aggregate(genome))
        if genome.kl.kind == "k3":
            blocks.append(LOW_VAR_KL)
    sched = genome.schedule
    if sched.kind != "none" and (
            (sched["target"] in ("alpha", "format_penalty") and "shape_reward" in hooks)
            or (sched["target"] in ("clip_high", "kl_beta") and "policy_loss" in hooks)):
        constants.append(f"SCHEDULE_FLOOR = {sched['floor']!r}")
        blocks.append(_schedule(genome))
    body = "\n\n\n".join(_tidy(b.strip("\n")) for b in blocks)
    imports = []
    if "math." in body:
        imports.append("import math")
    if "torch." in body:
        imports.append("import torch")
    doc = _docstring(genome, name, hooks)
    parts = [doc]
    if imports:
        parts.append("\n".join(imports))
    parts.append("\n".join([f'NAME = "{name}"'] + list(dict.fromkeys(constants))))
    if body:
        parts.append("\n" + body)
    return "\n\n".join(parts).rstrip() + "\n"


COMMENT_COLUMN, WIDTH = 68, 92


def _tidy(block: str) -> str:
    """Align trailing ``  # ...`` comments; one that does not fit goes on its own line."""
    out = []
    for line in block.splitlines():
        code, sep, comment = line.partition("  # ")
        if not sep or not code.strip():
            out.append(line)
            continue
        code = code.rstrip()
        col = max(COMMENT_COLUMN, len(code) + 2)
        if col + 2 + len(comment) > WIDTH:
            col = len(code) + 2
        if col + 2 + len(comment) <= WIDTH:
            out.append(f"{code.ljust(col)}# {comment}")
        else:
            indent = code[:len(code) - len(code.lstrip())]
            out += [f"{indent}# {comment}", code]
    return "\n".join(out)


def _docstring(genome: "Genome", name: str, hooks: tuple[str, ...]) -> str:
    omitted = [h for h in ("shape_reward", "compute_advantages", "policy_loss")
               if h not in hooks]
    lines = [f"{name}: a GRPO variant rendered from a builtin POISE genome.", ""]
    for line in genome.describe().splitlines():
        lines.extend(textwrap.wrap(line, 88, subsequent_indent="    ") or [""])
    if omitted:
        lines += ["", f"Hooks left to GRPO's fallback: {', '.join(omitted)}."]
    lines += [""] + textwrap.wrap("Genome: " + genome.signature().replace(";", "; "), 88,
                                  subsequent_indent="    ")
    text = "\n".join(lines).replace("\\", "\\\\").replace('"""', "'''")
    return f'"""{text}\n"""'


# ----------------------------------------------------------------------------- hooks

def _coef(genome: "Genome", target: str, constant: str) -> str:
    """``constant`` or ``constant * _schedule(batch)`` when the schedule targets it."""
    if genome.schedule.kind != "none" and genome.schedule["target"] == target:
        return f"{constant} * _schedule(batch)"
    return constant


def _shape_reward(genome: "Genome", constants: list[str]) -> str:
    r = genome.reward
    lines = ["def shape_reward(batch):"]
    if r.kind == "plain":
        lines.append("    return batch.correct.float()")
    elif r.kind in ("gated_length", "uniform_length"):
        constants.append(f"ALPHA = {r['alpha']!r}")
        lines += [f"    alpha = {_coef(genome, 'alpha', 'ALPHA')}",
                  "    frac = batch.length.float() / batch.max_length                 # (N,)"]
        if r.kind == "gated_length":
            lines.append("    return batch.correct.float() * (1.0 - alpha * frac)      # (N,)")
        else:
            lines.append("    return batch.correct.float() - alpha * frac              # (N,)")
    elif r.kind == "solved_length":
        constants.append(f"ALPHA = {r['alpha']!r}")
        lines += [f"    alpha = {_coef(genome, 'alpha', 'ALPHA')}",
                  "    c = batch.correct.float()                                     # (N,)",
                  "    g = int(batch.group.max()) + 1",
                  "    count = c.new_zeros(g).index_add_(0, batch.group, torch.ones_like(c))",
                  "    hits = c.new_zeros(g).index_add_(0, batch.group, c)             # (B,)",
                  "    solved = (hits >= count).float()[batch.group]  # (N,) 1 where all correct",
                  "    frac = batch.length.float() / batch.max_length                 # (N,)",
                  "    return c * (1.0 - alpha * solved * frac)                       # (N,)"]
    elif r.kind == "format_penalty":
        constants.append(f"FORMAT_PENALTY = {r['penalty']!r}")
        lines += [f"    penalty = {_coef(genome, 'format_penalty', 'FORMAT_PENALTY')}",
                  "    return batch.correct.float() - penalty * (~batch.valid).float()  # (N,)"]
    elif r.kind == "expr":
        from agents.builtin import expr

        lines += expr.render_reward(expr.parse(r["f"], "reward"))
    elif r.kind == "overlong":
        constants.append(f"OVERLONG_CACHE_FRACTION = {r['cache']!r}")
        lines += [
            "    cache = max(1, round(OVERLONG_CACHE_FRACTION * batch.max_length))",
            "    excess = (batch.length.float() - (batch.max_length - cache)).clamp_min(0.0)"
            "  # (N,)",
            "    return batch.correct.float() - (excess / cache).clamp_max(1.0)             "
            "# (N,)"]
    else:  # pragma: no cover - the catalog and this renderer are kept in step by tests
        raise ValueError(f"no renderer for reward gene {r.kind!r}")
    return "\n".join(lines)


def _compute_advantages(genome: "Genome", constants: list[str]) -> str:
    base_kind, norm_kind = genome.baseline.kind, genome.normalization.kind
    masked = genome.validity.kind == "stats"
    need_total = base_kind in ("group_mean", "loo") or norm_kind == "group_std"
    need_count = need_total or norm_kind in ("bernoulli", "beta")
    lines = ["def compute_advantages(batch, rewards):",
             "    group, g = batch.group, int(batch.group.max()) + 1"]
    if masked:
        lines.append("    w = batch.valid.to(rewards.dtype)      # (N,) only valid samples "
                     "enter the statistics")
    else:
        lines.append("    w = torch.ones_like(rewards)           # (N,) every sample enters "
                     "the statistics")
    if need_count:
        lines.append("    count = rewards.new_zeros(g).index_add_(0, group, w)             "
                     "# (B,)")
    if need_total:
        lines.append("    total = rewards.new_zeros(g).index_add_(0, group, w * rewards)   # (B,)")
    if base_kind == "group_mean" or norm_kind == "group_std":
        lines.append("    gmean = total / count.clamp_min(1)                                # (B,)")
    # baseline b (N,)
    if base_kind == "group_mean":
        lines.append("    base = torch.where(count > 1, gmean, torch.zeros_like(gmean))"
                     "[group]  # (N,) 0 for a lone sample")
    elif base_kind == "loo":
        lines += ["    others = count[group] - w                                         # (N,)",
                  "    loo = (total[group] - w * rewards) / others.clamp_min(1)",
                  "    base = torch.where(others >= 1, loo, torch.zeros_like(loo))        # (N,)"]
    elif base_kind == "batch_mean":
        lines.append("    base = ((w * rewards).sum() / w.sum().clamp_min(1)).expand_as(rewards)"
                     "  # (N,)")
    elif base_kind == "none":
        lines.append("    base = torch.zeros_like(rewards)")
    else:  # pragma: no cover
        raise ValueError(f"no renderer for baseline gene {base_kind!r}")
    # scale (N,) and advantage
    if norm_kind not in ("none", "expr"):
        constants.append("EPS = 1e-6")
    if norm_kind == "group_std":
        lines += [
            "    sq = rewards.new_zeros(g).index_add_(0, group, w * (rewards - gmean[group]) ** 2)",
            "    var = sq / (count - 1).clamp_min(1)",
            "    std = torch.where(count > 1, var.sqrt(), torch.ones_like(var))  # (B,) 1 if alone",
            "    adv = (rewards - base) / (std[group] + EPS)                       # (N,)"]
    elif norm_kind == "batch_std":
        lines += [
            "    centered = rewards - base                                         # (N,)",
            "    n = w.sum()",
            "    mu = (w * centered).sum() / n.clamp_min(1)",
            "    var = (w * (centered - mu) ** 2).sum() / (n - 1).clamp_min(1)",
            "    std = torch.where(n > 1, var.sqrt(), torch.ones_like(var))",
            "    adv = centered / (std + EPS)                                      # (N,)"]
    elif norm_kind == "none":
        lines.append("    adv = rewards - base                                              # (N,)")
    elif norm_kind == "expr":
        from agents.builtin import expr

        constants.append(f"SCALE_FLOOR = {expr.SCALE_FLOOR!r}")
        lines += expr.render_scale(expr.parse(genome.normalization["f"], "scale"))
        lines.append("    adv = (rewards - base) / scale[group]                             # (N,)")
    elif norm_kind in ("bernoulli", "beta"):
        lines += ["    succ = w * batch.correct.to(rewards.dtype)  # (N,) successes that count",
                  "    k = rewards.new_zeros(g).index_add_(0, group, succ)  # (B,)"]
        if norm_kind == "bernoulli":
            constants.append(f"PRIOR = {genome.normalization['prior']!r}")
            lines += [
                "    p = (k + PRIOR) / (count + 2 * PRIOR)                             # (B,)",
                "    adv = (rewards - base) / ((p * (1 - p)).sqrt()[group] + EPS)      # (N,)"]
        else:
            constants.append(f"PRIOR_STRENGTH = {genome.normalization['strength']!r}")
            lines += [
                "    p_batch = (succ.sum() / w.sum().clamp_min(1)).clamp(0.05, 0.95)",
                "    a = k + PRIOR_STRENGTH * p_batch                                  # (B,)",
                "    b = count - k + PRIOR_STRENGTH * (1 - p_batch)                    # (B,)",
                "    m = a / (a + b)",
                "    var = m * (1 - m) * (a + b) / (a + b + 1)      # (B,) E[p(1-p)] under "
                "Beta(a, b)",
                "    adv = (rewards - base) / (var.sqrt()[group] + EPS)                # (N,)"]
    else:  # pragma: no cover
        raise ValueError(f"no renderer for normalization gene {norm_kind!r}")
    if masked:
        constants.append(f"INVALID_ADVANTAGE = {genome.validity['invalid_adv']!r}")
        lines.append("    adv = torch.where(batch.valid, adv, torch.full_like(adv, "
                     "INVALID_ADVANTAGE))")
    if genome.filtering.kind == "zero_variance":
        lines += [
            "    # Exact zeros (not float residue) mark a zero-variance group for policy_loss.",
            "    size = rewards.new_zeros(g).index_add_(0, group, torch.ones_like(rewards))",
            "    hi = rewards.new_full((g,), -float(\"inf\")).scatter_reduce_(0, group, "
            "rewards, \"amax\")",
            "    lo = rewards.new_full((g,), float(\"inf\")).scatter_reduce_(0, group, "
            "rewards, \"amin\")",
            "    zero_var = (hi == lo) & (size > 1)                                # (B,)",
            "    adv = torch.where(zero_var[group], torch.zeros_like(adv), adv)"]
    lines.append("    return adv")
    return "\n".join(lines)


def _policy_loss(genome: "Genome", constants: list[str]) -> str:
    c = genome.clipping
    if c.kind == "clip_higher":
        low, high, dual = c["eps_low"], c["eps_high"], c["c"]
    else:
        low = high = c["eps"]
        dual = c["c"] if c.kind == "dual_clip" else 0.0
    constants.append(f"CLIP_LOW, CLIP_HIGH = {low!r}, {high!r}")
    lines = [
        "def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):",
        "    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)                  # (N, T)",
        "    ratio = torch.exp(log_ratio)",
        "    pg1 = -advantages * ratio",
        f"    pg2 = -advantages * ratio.clamp(1 - CLIP_LOW, 1 + "
        f"{_coef(genome, 'clip_high', 'CLIP_HIGH')})",
        "    clipped = torch.maximum(pg1, pg2)"]
    if dual:
        constants.append(f"CLIP_C = {dual!r}")
        lines += ["    pg3 = -advantages * CLIP_C",
                  "    per_token = torch.where(advantages < 0, torch.minimum(clipped, pg3), "
                  "clipped)  # (N, T)"]
    else:
        lines.append("    per_token = clipped                                               "
                     "# (N, T)")
    filtered = genome.filtering.kind == "zero_variance"
    valid_only = genome.validity.kind == "loss"
    if filtered:
        lines += [
            "    # A group is filtered when every advantage on its tokens is zero.",
            "    group, g = batch.group, int(batch.group.max()) + 1",
            "    signal = (advantages.detach().abs() * mask).sum(-1)               # (N,)",
            "    group_signal = signal.new_zeros(g).index_add_(0, group, signal)   # (B,)",
            "    size = signal.new_zeros(g).index_add_(0, group, torch.ones_like(signal))",
            "    keep = ((group_signal > 0) | (size == 1))[group].float()          # (N,)"]
    if valid_only:
        lines.append("    valid = batch.valid.to(mask.dtype)                                "
                     "# (N,) invalid samples leave the loss")
    if filtered or valid_only:
        factor = " * ".join(x for x, on in (("keep", filtered), ("valid", valid_only)) if on)
        factor = f"({factor})" if filtered and valid_only else factor
        lines.append(f"    loss_mask = mask * {factor}[:, None]                              "
                     "# (N, T)")
    else:
        lines.append("    loss_mask = mask")
    lines += [
        "    loss = _aggregate(per_token, loss_mask, batch)",
        "    n_tok = loss_mask.sum().clamp_min(1.0)",
        "    metrics = {",
        "        \"actor/pg_loss\": float(loss.detach()),",
        "        \"actor/pg_clipfrac\": float(((pg2 > pg1).float() * loss_mask).sum() / n_tok),",
        "        \"actor/ppo_kl\": float((-log_ratio.detach() * loss_mask).sum() / n_tok),",
        "    }"]
    if filtered:
        lines.append("    metrics[\"actor/zero_var_frac\"] = float(1.0 - keep.mean())")
    if valid_only:
        lines.append("    metrics[\"actor/invalid_frac\"] = float(1.0 - valid.mean())")
    if genome.kl.kind == "k3":
        constants.append(f"KL_COEF = {genome.kl['beta']!r}")
        lines += [
            "    if ref_logp is not None and KL_COEF > 0:",
            "        kl_loss = _aggregate(low_var_kl(logp, ref_logp), loss_mask, batch)",
            f"        loss = loss + {_coef(genome, 'kl_beta', 'KL_COEF')} * kl_loss",
            "        metrics[\"actor/kl_loss\"] = float(kl_loss.detach())"]
    lines.append("    return loss, metrics")
    return "\n".join(lines)


def _aggregate(genome: "Genome") -> str:
    kind = genome.aggregation.kind
    if kind == "seq_mean_token_mean":
        return '''
def _aggregate(x, mask, batch):
    """seq-mean-token-mean: mean over each response's tokens, then over non-empty ones."""
    n_tok = mask.sum(-1)                                               # (N,)
    per_seq = (x * mask).sum(-1) / n_tok.clamp_min(1.0)                # (N,)
    return per_seq.sum() / (n_tok > 0).sum().clamp_min(1)'''
    if kind == "token_mean":
        return '''
def _aggregate(x, mask, batch):
    """token-mean: mean over all response tokens of the batch."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)'''
    if kind == "seq_mean_token_sum_norm":
        return '''
def _aggregate(x, mask, batch):
    """seq-mean-token-sum-norm: token sum per response / max_length, mean over responses."""
    seq_sum = (x * mask).sum(-1)                                       # (N,)
    has_tokens = (mask.sum(-1) > 0).float()                            # (N,)
    return (seq_sum * has_tokens).sum() / has_tokens.sum().clamp_min(1.0) / batch.max_length'''
    raise ValueError(f"no renderer for aggregation gene {kind!r}")  # pragma: no cover


LOW_VAR_KL = '''
def low_var_kl(logp, ref_logp):
    """k3 estimator of KL(pi || ref), clamped to [-10, 10] as in verl."""
    log_ratio = (ref_logp - logp).clamp(-20.0, 20.0)
    return (log_ratio.exp() - log_ratio - 1).clamp(-10.0, 10.0)'''


def _schedule(genome: "Genome") -> str:
    s = genome.schedule
    lines = ["def _schedule(batch):",
             f'    """The multiplier on {s["target"]} at this step ({s["shape"]} {s.kind}, '
             f'floor {s["floor"]:g})."""',
             "    t = min(1.0, max(0.0, batch.step / max(1, batch.total_steps - 1)))"]
    if s["shape"] == "cosine":
        lines.append("    t = 0.5 - 0.5 * math.cos(math.pi * t)")
    if s.kind == "warmup":
        lines.append("    return SCHEDULE_FLOOR + (1.0 - SCHEDULE_FLOOR) * t")
    else:
        lines.append("    return 1.0 - (1.0 - SCHEDULE_FLOOR) * t")
    return "\n".join(lines)
