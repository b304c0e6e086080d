"""The builtin scientist's preferences: what the evidence says about each gene.

Each reflection tag (the analyst's vocabulary, e.g. "entropy-collapse") and each
directive keyword raises or lowers the score of some genes and pushes some parameters up
or down (``TAG_RULES``, ``DIRECTIVE_RULES``); reflections that carry a fitness and a
genome signature add an evidence score per gene; a length contract pushes the length
coefficient as a dual update does. ``preferences`` folds all of it into one
``Preferences`` that the scientist's operators (agents/builtin/scientist.py) draw from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from agents.builtin.genes import Gene, Genome
from evals.objective import BREVITY_WORDS, objective_from_directive

KIND_TEMPERATURE = 0.7      # kind weight = exp(KIND_TEMPERATURE * score)
TAG_CAP = 2.5               # the most one tag can weigh, however many reflections repeat it
EVIDENCE_WEIGHT = 1.0       # score per standard deviation of fitness above the mean
CONTRACT_PUSH = 1.5         # direction weight on the length coefficient under a contract
# Tags steer, the directive decides what is searched for: the reflections' tags, all
# together, add at most TAG_SCORE_CAP to one gene's score or one parameter's direction,
# and the directive's rules weigh DIRECTIVE_WEIGHT (as much as the most repeated tag,
# TAG_CAP). Measured (tests/test_builtin_agents.py): with four reflections about GRPO
# tagged "instability" (the analyst's reading of grad-norm spikes in ordinary runs), the
# share of GRPO's children that carry a length term under "accurate and concise" was 11%
# against 54% without tags when the directive weighed 1 and tags were uncapped (10 of the
# first 11 candidates of docs/campaigns/v5c-accurate-and-concise had none); now 34% vs 59%.
TAG_SCORE_CAP = 4.0
DIRECTIVE_WEIGHT = 2.5


# ----------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class Rule:
    """kind rule: (slot, kind, score); direction rule: (slot, param, sign * weight);
    value rule: (slot, param, value, score)."""
    slot: str
    name: str
    score: float
    value: str | None = None
    is_param: bool = False


def K(slot, kind, score):
    return Rule(slot, kind, score)


def D(slot, param, signed_weight):
    return Rule(slot, param, signed_weight, is_param=True)


def V(slot, param, value, score):
    return Rule(slot, param, score, value=value, is_param=True)


_STABILITY = [K("kl", "k3", 3.0), D("kl", "beta", +2.0), D("clipping", "eps", -2.0),
              D("clipping", "eps_high", -1.0), K("clipping", "dual_clip", 1.0),
              K("normalization", "batch_std", 1.0), K("normalization", "none", 0.5)]
_EXPLORATION = [K("clipping", "clip_higher", 3.0), D("clipping", "eps_high", +2.0),
                D("clipping", "eps", +1.0), K("kl", "k3", 1.0), D("kl", "beta", +1.0),
                K("filtering", "zero_variance", 0.5)]
_VALIDITY = [K("validity", "stats", 3.0), K("validity", "loss", 0.5),
             K("reward", "format_penalty", 3.0), D("reward", "penalty", +1.0),
             D("validity", "invalid_adv", -1.0), K("reward", "overlong", 1.0)]

TAG_RULES: dict[str, list[Rule]] = {
    "entropy-collapse": _EXPLORATION,
    "length-explosion": [K("reward", "gated_length", 3.0), K("reward", "solved_length", 2.0),
                         K("reward", "overlong", 2.0),
                         K("reward", "uniform_length", 1.0), D("reward", "alpha", +1.5),
                         K("aggregation", "seq_mean_token_sum_norm", 2.0),
                         K("aggregation", "token_mean", 0.5)],
    "length-collapse": [K("reward", "plain", 2.0), D("reward", "alpha", -2.0),
                        K("reward", "uniform_length", -1.5), K("schedule", "warmup", 1.0),
                        V("schedule", "target", "alpha", 2.0),
                        K("aggregation", "seq_mean_token_mean", 1.0)],
    "validity-drop": _VALIDITY,
    "plateau": [K("normalization", "bernoulli", 2.0), K("normalization", "beta", 2.0),
                K("normalization", "batch_std", 1.0), K("filtering", "zero_variance", 2.0),
                K("baseline", "loo", 1.0), K("baseline", "batch_mean", 0.5),
                K("clipping", "clip_higher", 1.0)],
    "instability": _STABILITY,
    "reward-hacking": [K("reward", "gated_length", 2.0), K("reward", "plain", 2.0),
                       K("reward", "uniform_length", -2.0), K("kl", "k3", 1.5),
                       D("kl", "beta", +1.0)],
    "regression": [],     # handled as a pull back toward GRPO's genes (Preferences.revert)
    "improvement": [],    # handled as smaller steps around the parent (Preferences.exploit)
}

DIRECTIVE_RULES: list[tuple[tuple[str, ...], list[Rule]]] = [
    (BREVITY_WORDS,   # the objective's brevity words: the length rules follow the contract
     [K("reward", "gated_length", 4.0), K("reward", "solved_length", 4.0),
      K("reward", "overlong", 1.0),
      K("reward", "uniform_length", 0.5), K("aggregation", "seq_mean_token_sum_norm", 1.0),
      K("schedule", "warmup", 0.5), V("schedule", "target", "alpha", 1.0)]),
    (("accurate", "accuracy", "correct", "pass@", "reasoning"),
     # genes that sharpen the correctness signal, none singled out
     [K("normalization", "bernoulli", 1.0), K("normalization", "beta", 1.0),
      K("normalization", "batch_std", 1.0), K("validity", "stats", 1.0),
      K("filtering", "zero_variance", 1.0), K("clipping", "clip_higher", 1.0),
      K("baseline", "loo", 1.0), K("reward", "uniform_length", -1.0)]),
    (("stable", "robust", "safe"), _STABILITY),
    (("explore", "diverse", "diversity", "entropy"), _EXPLORATION),
    (("valid", "format"), _VALIDITY),
]


@dataclass
class Preferences:
    """Gene scores, parameter directions and value scores, with the reasons behind them."""
    kind: dict[tuple[str, str], float] = field(default_factory=dict)
    direction: dict[tuple[str, str], float] = field(default_factory=dict)
    value: dict[tuple[str, str, str], float] = field(default_factory=dict)
    reasons: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    exploit: bool = False
    revert: bool = False
    excluded: frozenset = frozenset()   # (slot, kind) the catalog lacks (an ablation)
    compose: float = 0.0                # P(a proposal composes a reward / normalization)

    def add(self, rule: Rule, weight: float, reason: str) -> None:
        if rule.value is not None:
            key3 = (rule.slot, rule.name, rule.value)
            self.value[key3] = self.value.get(key3, 0.0) + weight * rule.score
        elif rule.is_param:
            key = (rule.slot, rule.name)
            self.direction[key] = self.direction.get(key, 0.0) + weight * rule.score
        else:
            key = (rule.slot, rule.name)
            self.kind[key] = self.kind.get(key, 0.0) + weight * rule.score
        if rule.score > 0:
            self.reasons.setdefault((rule.slot, rule.name), [])
            if reason not in self.reasons[(rule.slot, rule.name)]:
                self.reasons[(rule.slot, rule.name)].append(reason)

    def merge(self, other: "Preferences", cap: float) -> None:
        """Add ``other``'s scores, each clamped to [-cap, cap], and its reasons."""
        for mine, theirs in ((self.kind, other.kind), (self.direction, other.direction),
                             (self.value, other.value)):
            for key, score in theirs.items():
                mine[key] = mine.get(key, 0.0) + max(-cap, min(cap, score))
        for key, reasons in other.reasons.items():
            mine = self.reasons.setdefault(key, [])
            mine += [r for r in reasons if r not in mine]

    def direction_in(self, slot: str) -> bool:
        return any(s == slot and w for (s, _), w in self.direction.items()) or any(
            s == slot and w for (s, _, _), w in self.value.items())

    def kind_score(self, slot: str, kind: str) -> float:
        return max(-4.0, min(6.0, self.kind.get((slot, kind), 0.0)))

    def why(self, g: Gene) -> list[str]:
        out = list(self.reasons.get((g.slot, g.kind), []))
        for name, _ in g.params:
            out += [r for r in self.reasons.get((g.slot, name), []) if r not in out]
        return out


def _tags(ref: dict) -> list[str]:
    """A reflection's tags, normalized ("Length_collapse" -> "length-collapse")."""
    tags = ref.get("tags") or ()
    return [str(t).strip().lower().replace("_", "-").replace(" ", "-")
            for t in (tags.split(",") if isinstance(tags, str) else tags)]


def preferences(parent: Genome, directive: str, reflections: Sequence[dict],
                contract: bool | None = None) -> Preferences:
    """``contract``: the objective minimizes length within a margin (None: as the builtin
    objective reads the directive, ``evals.objective.objective_from_directive``); it
    decides the length rules of ``DIRECTIVE_RULES`` too, so an LLM objective's spec is
    followed."""
    prefs = Preferences()
    parent_sig = parent.signature()
    tag_weight: dict[str, float] = {}
    own: list[str] | None = None   # the tags of the reflections about the parent
    for ref in reflections:
        about_parent = _signature(ref) == parent_sig
        tags = _tags(ref)
        if about_parent:
            own = (own or []) + tags
        for t in tags:
            tag_weight[t] = tag_weight.get(t, 0.0) + (2.0 if about_parent else 1.0)
    tagged = Preferences()
    for tag, w in tag_weight.items():
        w = min(TAG_CAP, w)
        for rule in TAG_RULES.get(tag, ()):
            tagged.add(rule, w, f"reflections report {tag}")
    prefs.merge(tagged, cap=TAG_SCORE_CAP)
    prefs.exploit = tag_weight.get("improvement", 0.0) > tag_weight.get("regression", 0.0)
    prefs.revert = tag_weight.get("regression", 0.0) > tag_weight.get("improvement", 0.0)
    if prefs.revert:  # pull the slots where the parent departs from GRPO back toward it
        grpo = Genome.grpo()
        for slot in parent.diff(grpo):
            prefs.add(K(slot, getattr(grpo, slot).kind, 1.5), 1.0,
                      "the parent regressed: revert toward GRPO")
    text = directive.lower()
    if contract is None:
        contract = bool(text.strip()) and objective_from_directive(directive).minimizes_length
    for words, rules in DIRECTIVE_RULES:
        hit = next((word for word in words if word in text), None)
        why = f"the directive asks for {hit!r}" if hit else None
        if words is BREVITY_WORDS:  # the objective's word, whatever the directive's words
            why = (why or "the objective minimizes length") if contract else None
        for rule in rules if why else ():
            prefs.add(rule, DIRECTIVE_WEIGHT, why)
    if contract and own is not None:
        _contract_push(prefs, own)
    _add_fitness_evidence(prefs, reflections)
    return prefs


def _contract_push(prefs: Preferences, own: list[str]) -> None:
    """Under a length contract, given the tags of the reflections about the parent: a
    stronger length term while it holds GRPO's Overall, a weaker one once it fell below
    (the analyst's "regression" tag)."""
    if "regression" in own:
        prefs.add(D("reward", "alpha", -CONTRACT_PUSH), 1.0,
                  "the parent scored a point or more below GRPO's Overall (a regression): "
                  "a weaker length term")
    else:
        prefs.add(D("reward", "alpha", +CONTRACT_PUSH), 1.0,
                  "the parent holds GRPO's Overall under the length contract: spend the "
                  "slack on a stronger length term")


def _add_fitness_evidence(prefs: Preferences, reflections: Sequence[dict]) -> None:
    scored = []
    for ref in reflections:
        sig, fit = _signature(ref), ref.get("fitness")
        if sig and isinstance(fit, (int, float)) and math.isfinite(fit):
            try:
                scored.append((Genome.from_signature(sig), float(fit)))
            except (ValueError, KeyError):
                continue  # a signature from an older catalog: no evidence
    if len(scored) < 3:
        return
    fits = [f for _, f in scored]
    mean = sum(fits) / len(fits)
    sd = math.sqrt(sum((f - mean) ** 2 for f in fits) / (len(fits) - 1)) or 1.0
    by_gene: dict[tuple[str, str], list[float]] = {}
    for genome, fit in scored:
        for g in genome.genes():
            by_gene.setdefault((g.slot, g.kind), []).append(fit)
    for (slot, kind), group in by_gene.items():
        if len(group) == len(scored):
            continue  # every scored genome carries it: no contrast
        z = (sum(group) / len(group) - mean) / sd
        score = max(-1.5, min(1.5, z)) * EVIDENCE_WEIGHT
        prefs.add(K(slot, kind, score), 1.0, f"fitness evidence ({z:+.1f} sd)")


def _signature(ref: dict) -> str | None:
    sig = ref.get("genome") or ref.get("signature")
    if isinstance(sig, Genome):
        return sig.signature()
    return sig if isinstance(sig, str) and sig else None


__all__ = ["Rule", "K", "D", "V", "TAG_RULES", "DIRECTIVE_RULES", "Preferences", "preferences"]
