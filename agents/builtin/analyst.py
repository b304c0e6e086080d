"""The builtin analyst: rule-based diagnosis of a training run from its curves.

Input: the per-step rows the local trainer logs (trainers/local/trainer.py: reward,
accuracy, entropy, response_length, validity, kl_to_start, grad_norm, clip_fraction,
all_fail_groups, all_correct_groups), the periodic evaluations, the final evaluation and
the baseline's final evaluation (Overall in points, 0-100). "Early" and "late" are the
means over the first and the last fifth of the run (at least 2 steps each).

Rules (thresholds are the module constants below):
- entropy-collapse: late entropy < ENTROPY_COLLAPSE * early entropy and, when GRPO's
  own ratio on this testbed is known (``baseline_entropy_ratio``: the seed's late/early
  entropy), also below ENTROPY_VS_BASELINE * that ratio: sharpening that GRPO itself
  shows is the testbed's, not a pathology of the candidate (on testbed v2 GRPO's entropy
  falls to ~0.4x in 40 steps while Overall rises, and an absolute rule tagged every
  candidate, steering every proposal toward exploration genes).
- length-explosion: late length > LENGTH_EXPLOSION * early and at least MIN_LENGTH_CHANGE
  tokens longer.
- length-collapse: late length < LENGTH_COLLAPSE * early while accuracy or validity fell
  by more than DROP (shorter answers that stay right are the goal of a concise directive,
  not a collapse).
- validity-drop: validity fell by more than VALIDITY_DROP (absolute).
- plateau: train accuracy moved by less than PLATEAU_GAIN (and, with two or more
  evaluations, Overall by less than PLATEAU_EVAL_GAIN points), below the ceiling.
- instability: a grad norm above GRAD_SPIKE x the median, step-to-step reward jitter
  (sd of first differences) above REWARD_JITTER, the smoothed reward falling more than
  REWARD_CRASH below its peak, or a non-finite metric.
- reward-hacking: reward up by REWARD_GAIN or more while accuracy did not rise, unless
  the genome's reward explains it (a correctness-gated or overlong length term with
  accuracy held, a format penalty with validity up).
- improvement / regression: final Overall at least EFFECT points above / below the
  baseline's.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

from pydantic import BaseModel

from agents.builtin.genes import Genome

TAGS = ("entropy-collapse", "length-explosion", "length-collapse", "validity-drop",
        "plateau", "instability", "reward-hacking", "improvement", "regression")

MIN_STEPS = 4
ENTROPY_COLLAPSE = 0.5
ENTROPY_VS_BASELINE = 0.8
LENGTH_EXPLOSION = 1.5
LENGTH_COLLAPSE = 0.5
MIN_LENGTH_CHANGE = 3.0
DROP = 0.05
VALIDITY_DROP = 0.10
PLATEAU_GAIN = 0.02
PLATEAU_EVAL_GAIN = 1.0
CEILING = 0.95
GRAD_SPIKE = 5.0
REWARD_JITTER = 0.25
REWARD_CRASH = 0.2
REWARD_GAIN = 0.10
EFFECT = 1.0


class Diagnosis(BaseModel):
    """A mechanism-level diagnosis: what happened, why, what to try next; with tags."""
    text: str
    tags: list[str]
    metrics: dict[str, float] = {}


def diagnose(curve: Sequence[dict], evals: Sequence[dict], final: dict,
             baseline_final: dict | None, genome: Genome | None = None,
             baseline_entropy_ratio: float | None = None) -> Diagnosis:
    """Diagnose one run. ``genome`` (when the candidate has one) sharpens the "why";
    ``baseline_entropy_ratio``: GRPO's late/early entropy on this testbed
    (``entropy_ratio`` of the seed's curves), the yardstick of entropy-collapse."""
    m: dict[str, float] = {}
    facts, tags = [], []
    nonfinite = sorted({k for row in curve for k, v in row.items()
                        if isinstance(v, (int, float)) and not math.isfinite(v)})
    if len(evals) >= 2 and "overall" in evals[0] and "overall" in evals[-1]:
        m["eval_overall_gain"] = float(evals[-1]["overall"]) - float(evals[0]["overall"])
    n = len(curve)
    if n >= MIN_STEPS:
        w = _window(n)
        for key in ("reward", "accuracy", "entropy", "response_length", "validity",
                    "grad_norm", "clip_fraction", "kl_to_start", "all_fail_groups",
                    "all_correct_groups"):
            el = _early_late(_series(curve, key), w)
            if el is not None:
                m[f"{key}_early"], m[f"{key}_late"] = el
        tags += _curve_tags(curve, w, m, genome, facts, baseline_entropy_ratio)
    else:
        facts.append(f"only {n} step(s) logged: too short to read the curves")
    if nonfinite:
        facts.append(f"non-finite values in {', '.join(nonfinite)}")
        if "instability" not in tags:
            tags.append("instability")
    tags += _baseline_tags(final, baseline_final, m, facts)
    return Diagnosis(text=_text(facts, tags, genome, m), tags=tags, metrics=m)


def _series(curve: Sequence[dict], key: str) -> list[float]:
    out = []
    for row in curve:
        v = row.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(float(v))
    return out


def _window(n: int) -> int:
    """Steps in "early" and in "late": a fifth of the run, at least 2."""
    return max(2, n // 5)


def _early_late(xs: list[float], w: int) -> tuple[float, float] | None:
    """The means of the first and the last ``w`` values (None with fewer than 2w)."""
    return (sum(xs[:w]) / w, sum(xs[-w:]) / w) if len(xs) >= 2 * w else None


def entropy_ratio(curves: Sequence[dict]) -> float | None:
    """Mean over seeds of late / early entropy, read as ``diagnose`` reads a run, from
    archived curves ({metric: [[step, value], ...]} per seed); None when no seed logged
    enough."""
    ratios = []
    for c in curves:
        xs = _series([{"entropy": v} for _, v in (c or {}).get("entropy", [])], "entropy")
        el = _early_late(xs, _window(len(xs))) if len(xs) >= MIN_STEPS else None
        if el is not None and el[0] > 0:
            ratios.append(el[1] / el[0])
    return sum(ratios) / len(ratios) if ratios else None


def _curve_tags(curve, w: int, m: dict, genome: Genome | None, facts: list[str],
                base_ratio: float | None = None) -> list[str]:
    tags = []

    def has(key):
        return f"{key}_early" in m

    def change(key):
        return m[f"{key}_late"] - m[f"{key}_early"]

    if has("accuracy"):
        facts.append(f"train accuracy {m['accuracy_early']:.2f} -> {m['accuracy_late']:.2f}")
    if has("reward"):
        facts.append(f"reward {m['reward_early']:.2f} -> {m['reward_late']:.2f}")
    if has("entropy"):
        e0, e1 = m["entropy_early"], m["entropy_late"]
        facts.append(f"entropy {e0:.3f} -> {e1:.3f}")
        if e0 > 0 and e1 < ENTROPY_COLLAPSE * e0:
            if base_ratio is None or e1 / e0 < ENTROPY_VS_BASELINE * base_ratio:
                tags.append("entropy-collapse")
            else:
                facts.append(f"entropy fell to {e1 / e0:.2f}x, as GRPO's does on this "
                             f"testbed ({base_ratio:.2f}x): not a collapse of its own")
    if has("response_length"):
        l0, l1 = m["response_length_early"], m["response_length_late"]
        facts.append(f"response length {l0:.1f} -> {l1:.1f} tokens")
        if l1 > LENGTH_EXPLOSION * l0 and l1 - l0 >= MIN_LENGTH_CHANGE:
            tags.append("length-explosion")
        fell = ((has("accuracy") and change("accuracy") < -DROP)
                or (has("validity") and change("validity") < -DROP))
        if l1 < LENGTH_COLLAPSE * l0 and l0 - l1 >= MIN_LENGTH_CHANGE and fell:
            tags.append("length-collapse")
    if has("validity"):
        facts.append(f"validity {m['validity_early']:.2f} -> {m['validity_late']:.2f}")
        if change("validity") < -VALIDITY_DROP:
            tags.append("validity-drop")
    if "eval_overall_gain" in m:
        facts.append(f"held-out Overall moved {m['eval_overall_gain']:+.1f} points over "
                     "the evaluations")
    if has("accuracy") and abs(change("accuracy")) < PLATEAU_GAIN \
            and m["accuracy_late"] < CEILING \
            and m.get("eval_overall_gain", 0.0) < PLATEAU_EVAL_GAIN:
        tags.append("plateau")
    if _unstable(curve, w, m, facts):
        tags.append("instability")
    if has("reward") and has("accuracy") and change("reward") >= REWARD_GAIN \
            and change("accuracy") <= 0.01 and not _explained(genome, m):
        tags.append("reward-hacking")
    if has("all_fail_groups") and has("all_correct_groups"):
        dead = m["all_fail_groups_late"] + m["all_correct_groups_late"]
        m["no_signal_groups_late"] = dead
        if dead > 0.5:
            facts.append(f"{dead:.0%} of groups carried no signal late in training "
                         "(all-fail or all-correct)")
    if has("clip_fraction") and m["clip_fraction_late"] > 0.2:
        facts.append(f"clip fraction {m['clip_fraction_late']:.2f} late: the ratio often "
                     "hits the clip bound")
    return tags


def _unstable(curve, w: int, m: dict, facts: list[str]) -> bool:
    why = []
    grads = _series(curve, "grad_norm")
    if len(grads) >= 4:
        med = statistics.median(grads)
        m["grad_spike_ratio"] = max(grads) / med if med > 0 else 0.0
        if med > 0 and max(grads) > GRAD_SPIKE * med:
            why.append(f"grad norm spiked to {max(grads):.2g} ({max(grads) / med:.1f}x the "
                       "median)")
    rewards = _series(curve, "reward")
    if len(rewards) >= 4:
        diffs = [b - a for a, b in zip(rewards, rewards[1:])]
        m["reward_jitter"] = statistics.stdev(diffs)
        if m["reward_jitter"] > REWARD_JITTER:
            why.append(f"reward jumps by {m['reward_jitter']:.2f} per step (sd)")
        smooth = [sum(rewards[i:i + w]) / w for i in range(len(rewards) - w + 1)]
        m["reward_drop_from_peak"] = max(smooth) - smooth[-1]
        if m["reward_drop_from_peak"] > REWARD_CRASH:
            why.append(f"reward fell {m['reward_drop_from_peak']:.2f} below its peak")
    facts.extend(why)
    return bool(why)


def _explained(genome: Genome | None, m: dict) -> bool:
    """Does the genome's reward shaping account for reward rising without accuracy?"""
    if genome is None:
        return False
    acc = m["accuracy_late"] - m["accuracy_early"]
    kind = genome.reward.kind
    if kind == "plain":
        return True  # reward is accuracy: a gap is sampling noise, not hacking
    if kind in ("gated_length", "solved_length", "overlong"):
        return acc >= -DROP
    if kind == "format_penalty" and "validity_early" in m:
        return m["validity_late"] > m["validity_early"] and acc >= -DROP
    return False


def _baseline_tags(final: dict, baseline: dict | None, m: dict, facts: list[str]) -> list[str]:
    if not baseline or "overall" not in final or "overall" not in baseline:
        return []
    delta = float(final["overall"]) - float(baseline["overall"])
    m["overall_delta"] = delta
    text = f"final Overall {float(final['overall']):.1f} vs baseline " \
           f"{float(baseline['overall']):.1f} ({delta:+.1f})"
    if "length" in final and "length" in baseline and float(baseline["length"]) > 0:
        rel = float(final["length"]) / float(baseline["length"]) - 1
        m["length_vs_baseline"] = rel
        text += f", answers {abs(rel):.0%} {'shorter' if rel < 0 else 'longer'}"
    if "valid" in final and "valid" in baseline:
        m["valid_delta"] = float(final["valid"]) - float(baseline["valid"])
        text += f", validity {m['valid_delta']:+.1f} points"
    facts.append(text)
    if delta >= EFFECT:
        return ["improvement"]
    if delta <= -EFFECT:
        return ["regression"]
    return []


# ----------------------------------------------------------------------------- text

def _why_next(tag: str, g: Genome | None) -> tuple[str, str]:
    """A mechanism-level cause given the genome, and what to try next."""
    if tag == "entropy-collapse":
        if g and g.clipping.kind == "clip_higher":
            why = (f"even clip-higher (eps_high={g.clipping['eps_high']:g}) did not keep "
                   "low-probability tokens alive")
        else:
            eps = g.clipping["eps"] if g else 0.2
            why = (f"the symmetric clip (eps={eps:g}) caps the growth of rare tokens with "
                   "positive advantage while probable ones sharpen")
        if g and g.kl.kind == "none":
            why += ", and no KL term holds the policy near the warm start"
        return why, "raise the upper clip bound (clip-higher) or add/raise a k3 KL term"
    if tag == "length-explosion":
        if g and g.aggregation.kind == "seq_mean_token_mean":
            why = ("seq-mean-token-mean dilutes the per-token penalty of long wrong answers, "
                   "so length grows unchecked")
        else:
            why = "nothing in the reward prices length"
        if g and g.reward.kind in ("gated_length", "uniform_length", "solved_length"):
            why = f"the length term (alpha={g.reward['alpha']:g}) is too weak to hold length"
        return why, ("a correctness-gated length penalty, the overlong penalty, or "
                     "token-sum-norm aggregation")
    if tag == "length-collapse":
        why = ("the length term outweighs the correctness signal: the policy dropped the "
               "scratchpad it needs")
        if g and g.reward.kind == "uniform_length":
            why = "the uniform length penalty pays wrong short answers, buying length with accuracy"
        return why, "gate the length penalty on correctness, lower alpha, or warm it up"
    if tag == "validity-drop":
        why = "format-invalid answers are scored like wrong ones, so nothing defends the format"
        if g and g.validity.kind == "loss":
            why = "invalid samples are masked out of the loss, so breaking the format is free"
        return why, "validity masking of the group statistics, or a format penalty"
    if tag == "plateau":
        why = ("most groups are all-fail or all-correct and carry no signal, or the std "
               "normalization spends the gradient on near-uniform groups")
        if g and g.filtering.kind == "zero_variance":
            why = "with zero-variance groups filtered, too few groups are left to learn from"
        return why, ("change the normalization (analytic or Bayesian variance), filter "
                     "zero-variance groups, or a leave-one-out baseline")
    if tag == "instability":
        why = "updates are too large for the step"
        if g and g.kl.kind == "none":
            why += " and no KL term anchors the policy"
        if g and g.normalization.kind in ("group_std", "bernoulli", "beta"):
            why += "; per-group scaling blows up advantages of nearly uniform groups"
        return why, "a tighter clip, a k3 KL term (or a larger beta), or batch-level scaling"
    if tag == "reward-hacking":
        kind = g.reward.kind if g else "the shaped reward"
        return (f"the reward ({kind}) can rise without more correct answers"), \
            "gate the shaping on correctness, or return to the plain reward"
    if tag == "improvement":
        return "the genome's departures from the baseline paid off", \
            "exploit: small parameter moves around this genome, or cross it with another winner"
    if tag == "regression":
        return "a departure from the baseline hurt", \
            "revert the newest change, or keep it and fix its side effect"
    return "", ""


def _text(facts: list[str], tags: list[str], g: Genome | None, m: dict) -> str:
    lines = ["What happened: " + ("; ".join(facts) if facts else "nothing to report") + "."]
    if not tags:
        lines.append("Why: the curves look healthy; no rule fired.")
        lines.append("Next: keep the mechanism and probe its parameters.")
        return "\n".join(lines)
    whys, nexts = [], []
    for tag in tags:
        why, nxt = _why_next(tag, g)
        whys.append(f"{tag}: {why}")
        nexts.append(f"{tag}: {nxt}")
    lines.append("Why: " + "; ".join(whys) + ".")
    lines.append("Next: " + "; ".join(nexts) + ".")
    return "\n".join(lines)


__all__ = ["Diagnosis", "diagnose", "TAGS"]
