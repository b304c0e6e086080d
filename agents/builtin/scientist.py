"""The builtin scientist: proposes a genome by mutation, ablation or crossover, offline.

The search is random under the caller's ``random.Random`` and biased, never scripted:

- evidence sets preferences. Each reflection tag (the analyst's vocabulary, e.g.
  "entropy-collapse") and each directive keyword ("concise", "accurate", ...; the length
  rules follow the run's objective: they apply when it minimizes length) raises or
  lowers the score of some genes and pushes some parameters up or down (``TAG_RULES``,
  ``DIRECTIVE_RULES``); reflections about the parent itself count double. The directive
  weighs as much as the most repeated tag, and the tags together add at most
  ``TAG_SCORE_CAP`` to any one gene or parameter, so reflections shape how the search
  follows the directive without outvoting it. Reflections
  that carry a fitness and a genome signature add an evidence score per gene: how far
  the mean fitness of genomes carrying it sits above the mean (in standard deviations).
- mutation changes 1-3 slots, a slot drawn with weight 1 + the positive scores of the
  alternatives it offers; within a slot a new kind is drawn with weight exp(0.7 * score),
  or the same kind with one parameter moved (toward the preferred direction, if any).
- crossover takes each differing slot from one of two archive genomes, the second
  parent's gene with probability sigmoid(score difference).
- composition: with probability ``compose`` (the run's ``compose_rate``) a proposal is a
  composition: the reward or the normalization slot (drawn evenly) gets a new expression
  over primitives (agents/builtin/expr.py: one or two random edits of the current gene's
  expression) and nothing else changes; one with the signal of a catalog gene the search
  may draw is redrawn, so what comes out is a mechanism the catalog does not hold. A
  parent's composed gene, when a mutation picks its slot, is refined as an expression
  (probability 0.6) rather than swapped for a catalog gene.
- ablation: when the parent departs from GRPO in two slots or more, a proposal is with
  probability ``ABLATION_RATE`` (``ABLATION_RATE_REVERT`` after a "regression") the
  parent with one departure set back to GRPO's gene, the slot drawn with weight
  exp(-0.7 * score of the parent's gene) so the gene the directive and the evidence
  favour goes last: it tests whether the parent needs the gene, and it is how a search
  that stacked genes on its first good child reaches the simpler mechanism underneath.
- a length contract (the objective minimizes length within a margin of GRPO's Overall,
  e.g. "concise") steers the length coefficient by the constraint, as a dual update does:
  while the reflections about the parent show it holding GRPO's Overall (no
  "regression" tag) the reward's alpha is pushed up (the slack is spent on length); once
  the parent fell below (a "regression"), alpha is pushed down. Without a reflection
  about the parent there is no push.
- novelty: a genome whose signature is the parent's or any archive reference's is
  redrawn, up to ``max_tries`` times, then with larger unbiased jumps; ``NoNovelProposal``
  if even those all collide.

The rules and the evidence live in agents/builtin/preferences.py; the operators here.

Every gene keeps a non-zero probability, so no answer is privileged beyond what the
evidence says; nothing here names a known winning combination.
"""
from __future__ import annotations

import math
import random

from agents.builtin import expr
from agents.builtin.genes import (CATALOG, EXPRESSION_SITES, SCHEDULE_TARGETS, SLOT_TITLES,
                                  SLOTS, Gene, Genome, as_expression, catalog_match, gene)
from agents.proposal import Proposal  # what propose returns: kind, genome and parents set
from agents.builtin.preferences import (  # the rules, re-exported for callers
    CONTRACT_PUSH, DIRECTIVE_RULES, KIND_TEMPERATURE, TAG_RULES, TAG_SCORE_CAP, Preferences,
    preferences)

CROSSOVER_RATE = 0.3
# An ablation reverts one of the parent's departures from GRPO to GRPO's gene: the test of
# whether the parent needs it. Without it the search only adds genes: every candidate of
# docs/campaigns/v6-accurate-and-concise that carried the length penalty descended from
# the first proposal (gated length + seq-mean-token aggregation) and stacked more genes on
# it; the bare penalty on GRPO (gated_010, +0.5 on val at -40% length) was never proposed.
ABLATION_RATE = 0.25
ABLATION_RATE_REVERT = 0.5  # when the reflections about the parent report a regression
MAX_TRIES = 48

class NoNovelProposal(RuntimeError):
    """Every draw collided with a genome already in the archive references."""


# ----------------------------------------------------------------------------- operators

def _weighted(rng: random.Random, items: list, weights: list[float]):
    total = sum(weights)
    x = rng.random() * total
    for item, w in zip(items, weights):
        x -= w
        if x < 0:
            return item
    return items[-1]


def _kind_weight(prefs: Preferences, slot: str, kind: str) -> float:
    return math.exp(KIND_TEMPERATURE * prefs.kind_score(slot, kind))


def _draw_value(rng: random.Random, prefs: Preferences, slot: str, param, current=None):
    """A value for ``param``: biased by direction/value preferences, else the default
    with probability 0.6 (when no current value is to be moved)."""
    choices = [v for v in param.values if v != current]
    if not choices:
        return current
    direction = prefs.direction.get((slot, param.name), 0.0)
    if isinstance(param.default, str):
        weights = [math.exp(KIND_TEMPERATURE * prefs.value.get((slot, param.name, v), 0.0))
                   for v in choices]
    elif direction:
        ref = current if current is not None else param.default
        weights = [math.exp(KIND_TEMPERATURE * direction * ((v > ref) - (v < ref)))
                   for v in choices]
    elif current is None and rng.random() < 0.6:
        return param.default
    else:
        weights = [1.0] * len(choices)
    return _weighted(rng, choices, weights)


def _new_kind_gene(rng, prefs, slot: str, kind: str) -> Gene:
    spec = CATALOG[slot][kind]
    return gene(slot, kind, **{p.name: _draw_value(rng, prefs, slot, p) for p in spec.params})


def _tweak_weight(prefs: Preferences, g: Gene) -> float:
    if not g.params:
        return 0.0
    pull = max([abs(prefs.direction.get((g.slot, n), 0.0)) for n, _ in g.params]
               + [max([abs(s) for (sl, n, _), s in prefs.value.items() if sl == g.slot],
                      default=0.0)])
    return (2.0 if prefs.exploit else 1.0) * math.exp(KIND_TEMPERATURE * min(pull, 6.0))


def _composable(prefs: Preferences, slot: str) -> bool:
    return prefs.compose > 0 and slot in EXPRESSION_SITES \
        and (slot, "expr") not in prefs.excluded


def compose_gene(rng: random.Random, prefs: Preferences, current: Gene) -> Gene | None:
    """A composed gene for ``current``'s slot: 1-2 expression mutations (agents/builtin/
    expr.py) of current's expression (the site's plainest one when the grammar cannot
    write current), admissible, a different signal than current's and than every
    catalog gene the search may draw (``catalog_match``). None when 60 draws fail."""
    site = EXPRESSION_SITES[current.slot]
    start = expr.parse(as_expression(current) or CATALOG[current.slot]["expr"].params[0]
                       .default, site)

    def known(node) -> bool:
        return catalog_match(gene(current.slot, "expr", f=expr.unparse(node)),
                             prefs.excluded) is not None

    node = expr.compose(rng, start, site, reject=known, changes=1 + (rng.random() < 0.5))
    return None if node is None else gene(current.slot, "expr", f=expr.unparse(node))


def mutate_gene(rng: random.Random, prefs: Preferences, current: Gene) -> Gene:
    """A different gene for ``current``'s slot: another kind, or one parameter moved;
    a composed ``current`` (when composing is on) is refined as an expression with
    probability 0.6 (``compose_gene``)."""
    slot = current.slot
    if current.composed and _composable(prefs, slot) and rng.random() < 0.6:
        composed = compose_gene(rng, prefs, current)
        if composed is not None:
            return composed
    options = [k for k in CATALOG[slot] if k != current.kind
               and (slot, k) not in prefs.excluded and k != "expr"]
    weights = [_kind_weight(prefs, slot, k) for k in options]
    tweak = 0.0 if current.composed else _tweak_weight(prefs, current)
    choice = _weighted(rng, options + ["<tweak>"], weights + [tweak])
    if choice != "<tweak>":
        return _new_kind_gene(rng, prefs, slot, choice)
    spec = current.spec
    movable = [p for p in spec.params if len(p.values) > 1]
    p = _weighted(rng, movable, [1.0 + abs(prefs.direction.get((slot, q.name), 0.0))
                                 for q in movable])
    params = dict(current.params)
    params[p.name] = _draw_value(rng, prefs, slot, p, current=params[p.name])
    return gene(slot, current.kind, **params)


def _changeable(prefs: Preferences, g: Gene) -> bool:
    """Another kind is allowed in g's slot, or one of g's parameters can move."""
    return any(k != g.kind and (g.slot, k) not in prefs.excluded and k != "expr"
               for k in CATALOG[g.slot]) \
        or any(len(p.values) > 1 for p in g.spec.params) or _composable(prefs, g.slot)


def _slot_weight(prefs: Preferences, genome: Genome, slot: str) -> float:
    current = getattr(genome, slot)
    gain = sum(_kind_weight(prefs, slot, k) - 1.0 for k in CATALOG[slot]
               if k != current.kind and prefs.kind_score(slot, k) > 0)
    return 1.0 + gain + _tweak_weight(prefs, current) * (1.0 if prefs.direction_in(slot) else 0.0)


def _repair(rng: random.Random, prefs: Preferences, slots: dict[str, Gene]) -> Genome:
    """Fix a schedule whose target coefficient the genome lacks: retarget it."""
    try:
        return Genome.from_slots(slots)
    except ValueError:
        pass
    sched = slots["schedule"]
    fits = []
    for target in SCHEDULE_TARGETS:
        trial = dict(slots, schedule=gene("schedule", sched.kind,
                                          **dict(sched.params, target=target)))
        try:
            fits.append(Genome.from_slots(trial))
        except ValueError:
            continue
    weights = [math.exp(KIND_TEMPERATURE * prefs.value.get(
        ("schedule", "target", g.schedule["target"]), 0.0)) for g in fits]
    return _weighted(rng, fits, weights)


def mutate(rng: random.Random, prefs: Preferences, parent: Genome,
           n_changes: int | None = None, biased: bool = True) -> Genome:
    if n_changes is None:
        n_changes = 1 if prefs.exploit else 1 + (rng.random() < 0.35) + (rng.random() < 0.1)
    neutral = Preferences(excluded=prefs.excluded, compose=prefs.compose)
    p = prefs if biased else neutral
    slots = {s: getattr(parent, s) for s in SLOTS}
    remaining = [s for s in SLOTS if _changeable(p, slots[s])]
    for _ in range(min(n_changes, len(remaining))):
        slot = _weighted(rng, remaining, [_slot_weight(p, parent, s) for s in remaining])
        remaining.remove(slot)
        slots[slot] = mutate_gene(rng, p, slots[slot])
    return _repair(rng, p, slots)


def crossover(rng: random.Random, prefs: Preferences, a: Genome, b: Genome) -> Genome:
    differ = a.diff(b)
    slots = {s: getattr(a, s) for s in SLOTS}
    for s in differ:
        ga, gb = getattr(a, s), getattr(b, s)
        edge = prefs.kind_score(s, gb.kind) - prefs.kind_score(s, ga.kind)
        if rng.random() < 1.0 / (1.0 + math.exp(-edge)) and (s, gb.kind) not in prefs.excluded:
            slots[s] = gb
    if len(differ) >= 2:  # a child that is one of its parents is no crossover
        taken = [s for s in differ if slots[s] == getattr(b, s)]
        if not taken:
            s = rng.choice(differ)
            slots[s] = getattr(b, s)
        elif len(taken) == len(differ):
            s = rng.choice(differ)
            slots[s] = getattr(a, s)
    return _repair(rng, prefs, slots)


# ----------------------------------------------------------------------------- propose

def propose(parent: Genome | None, directive: str, reflections: list[dict],
            archive_refs: list[Genome], rng: random.Random, *,
            max_tries: int = MAX_TRIES, excluded: frozenset = frozenset(),
            compose: float = 0.0, contract: bool | None = None) -> Proposal:
    """A novel genome, by mutation of ``parent`` (GRPO if None) or crossover with an
    archive reference, with a hypothesis that states the change and the evidence.
    ``excluded``: (slot, kind) pairs no child may carry (``genes.excluded_kinds``);
    ``compose``: the probability that a proposal composes a new reward or normalization
    expression from primitives instead of drawing from the catalog (0: catalog only);
    ``contract``: the objective minimizes length within a margin (None: the directive's
    words say)."""
    base = parent or Genome.grpo()
    prefs = preferences(base, directive, reflections, contract)
    prefs.excluded = frozenset(excluded)
    prefs.compose = float(compose)
    seen = {g.signature() for g in archive_refs} | {base.signature()}
    mates = _distinct([g for g in archive_refs if g.signature() != base.signature()])
    pool = [base] + mates if parent is not None else _distinct(list(archive_refs))
    ablatable = len(base.diff(Genome.grpo())) >= 2   # GRPO itself when parent is None
    ablation_rate = ABLATION_RATE_REVERT if prefs.revert else ABLATION_RATE
    for attempt in range(2 * max_tries):
        biased = attempt < max_tries  # then larger unbiased jumps
        child = _ablation(rng, prefs, base) if biased and ablatable \
            and rng.random() < ablation_rate else None
        if child is None and biased and prefs.compose > 0 and rng.random() < prefs.compose:
            child = _composition(rng, prefs, base)
        if child is not None:
            kind, parents = "mutation", [base]
        elif biased and len(pool) >= 2 and rng.random() < CROSSOVER_RATE:
            a = pool[0] if parent is not None else rng.choice(pool)
            others = [g for g in pool if g != a]
            b = _weighted(rng, others, [1.0 + a.distance(g) for g in others])
            child = crossover(rng, prefs, a, b)
            kind, parents = "crossover", [a, b]
        else:
            child = mutate(rng, prefs, base, None if biased else 3 + rng.randrange(3),
                           biased)
            kind, parents = "mutation", [base]
        if child.signature() not in seen and not any(
                (g.slot, g.kind) in prefs.excluded for g in child.genes()):
            return _proposal(child, kind, parents, prefs, directive)
    raise NoNovelProposal(f"no novel genome in {2 * max_tries} draws around "
                          f"{base.slug()}: every draw is already among the "
                          f"{len(archive_refs)} archive references")


def _ablation(rng: random.Random, prefs: Preferences, base: Genome) -> Genome | None:
    """``base`` with one slot where it departs from GRPO set back to GRPO's gene. The
    slot is drawn with weight exp(-KIND_TEMPERATURE * score of base's gene): the genes the
    directive, the reflections and the fitness evidence favour (the length penalty under a
    length contract) are the last to go. None when the reverted genome is invalid."""
    grpo = Genome.grpo()
    slots = [s for s in base.diff(grpo)
             if (s, getattr(grpo, s).kind) not in prefs.excluded]
    if not slots:
        return None
    slot = _weighted(rng, slots, [math.exp(-KIND_TEMPERATURE * prefs.kind_score(
        s, getattr(base, s).kind)) for s in slots])
    try:
        return Genome.from_slots({**{s: getattr(base, s) for s in SLOTS},
                                  slot: getattr(grpo, slot)})
    except ValueError:
        return None


def _composition(rng: random.Random, prefs: Preferences, base: Genome) -> Genome | None:
    """``base`` with one expression slot (reward or normalization, drawn evenly among the
    composable ones) given a composed gene; None when no slot can compose."""
    slots = [s for s in sorted(EXPRESSION_SITES) if _composable(prefs, s)]
    if not slots:
        return None
    slot = rng.choice(slots)
    new = compose_gene(rng, prefs, getattr(base, slot))
    if new is None:
        return None
    return _repair(rng, prefs, {**{s: getattr(base, s) for s in SLOTS}, slot: new})


def _distinct(genomes: list[Genome]) -> list[Genome]:
    return list({g.signature(): g for g in genomes}.values())


def _proposal(child: Genome, kind: str, parents: list[Genome], prefs: Preferences,
              directive: str) -> Proposal:
    first = parents[0]
    changes = child.diff(first)
    sentences, rationale = [], []
    if kind == "crossover":
        from_b = [s for s in changes if getattr(child, s) == getattr(parents[1], s)]
        sentences.append(
            f"Crossing {first.slug()} with {parents[1].slug()}: take "
            f"{', '.join(SLOT_TITLES[s].lower() for s in from_b) or 'nothing'} from the "
            f"second and keep the rest of the first, testing whether the mechanisms "
            "combine.")
    grpo = Genome.grpo()
    ablated = kind == "mutation" and len(changes) == 1 and first != grpo \
        and getattr(child, changes[0]) == getattr(grpo, changes[0])
    if ablated:
        sentences.append(f"Ablation of {first.slug()}: {SLOT_TITLES[changes[0]].lower()} "
                         "back to GRPO's, testing whether the parent needs it (a simpler "
                         "mechanism that scores as well is the better explanation).")
        rationale.append(f"{changes[0]}: an ablation: does the parent need its "
                         f"{getattr(first, changes[0]).label()}?")
    for s in changes:
        old, new = getattr(first, s), getattr(child, s)
        shown = f"composed [{new.math()}]" if new.composed else new.label()
        sentences.append(f"{SLOT_TITLES[s]}: {old.label()} -> {shown}; this "
                         f"{new.effect()}.")
        why = prefs.why(new)
        rationale += [f"{s}: {r}" for r in why]
        if new.composed and new != old:
            rationale.append(f"{s}: composed from primitives, an expression mutation of "
                             f"{old.label()} (not a catalog gene)")
        elif not why and not ablated:
            rationale.append(f"{s}: exploration (no evidence for or against)")
    goal = directive.strip() or "the default objective"
    because = "; ".join(dict.fromkeys(r.split(": ", 1)[1] for r in rationale
                                      if "exploration" not in r and "composed" not in r
                                      and "an ablation" not in r))
    if ablated:
        sentences.append(f"Hypothesis: the child does as well as its parent on {goal!r} "
                         f"without its {getattr(first, changes[0]).label()}"
                         + (f" ({because})." if because else "."))
    else:
        sentences.append(f"Hypothesis: the child beats its parent on {goal!r}"
                         + (f" ({because})." if because else ", an untested direction."))
    return Proposal(name=child.slug(), hypothesis=" ".join(sentences),
                    mechanism=child.describe(), math=child.math(), genome=child, kind=kind,
                    parents=[p.signature() for p in parents], changes=changes,
                    rationale=rationale)


__all__ = ["Proposal", "propose", "preferences", "Preferences", "mutate", "crossover",
           "mutate_gene", "compose_gene", "NoNovelProposal", "TAG_RULES", "DIRECTIVE_RULES",
           "CONTRACT_PUSH", "TAG_SCORE_CAP", "KIND_TEMPERATURE"]
