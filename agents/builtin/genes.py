"""The catalog of mechanism genes the builtin scientist searches over, and the genome.

A genome is one gene per slot (reward shaping, validity masking, advantage baseline,
advantage normalization, group filtering, clipping, loss aggregation, KL, step schedule).
A gene is a kind from the catalog plus values for its parameters, each drawn from a small
fixed set, so the search space is discrete and a genome has a canonical ``signature()``.
``Genome.render()`` writes the genome as one self-contained candidate module (see
trainers/algorithm.py; rendering lives in agents/builtin/render.py); ``describe()`` says
in words and math what the module does. GRPO, Dr. GRPO, DAPO and RLOO are genomes too
(``BASELINE_GENOMES``); their rendered modules give the same numbers as
trainers/baselines/ (tests/test_builtin_agents.py).
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, fields, replace
from typing import Iterator, Union

Value = Union[float, str]

SLOTS = ("reward", "validity", "baseline", "normalization", "filtering", "clipping",
         "aggregation", "kl", "schedule")


@dataclass(frozen=True)
class Param:
    name: str
    values: tuple[Value, ...]   # the allowed values, ordered low to high for numbers
    default: Value
    site: str = ""              # an expression of this site (agents/builtin/expr.py)
                                # instead of a value from ``values``


@dataclass(frozen=True)
class GeneSpec:
    """One entry of the catalog. ``words``, ``math`` and ``effect`` are format strings
    over the parameter names; ``abbrev`` goes into proposal names ("" for GRPO's own)."""
    slot: str
    kind: str
    abbrev: str
    words: str
    math: str
    effect: str
    params: tuple[Param, ...] = ()

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"gene {self.slot}.{self.kind} has no parameter {name!r}; it has "
                       f"{', '.join(p.name for p in self.params) or 'none'}")


def _spec(slot, kind, abbrev, words, math, effect, *params) -> GeneSpec:
    return GeneSpec(slot, kind, abbrev, words, math, effect, tuple(params))


SCHEDULE_TARGETS = ("alpha", "format_penalty", "clip_high", "kl_beta")
_TARGET_ABBREV = {"alpha": "alpha", "format_penalty": "fp", "clip_high": "clip",
                  "kl_beta": "kl"}
_SCHEDULE_PARAMS = (Param("target", SCHEDULE_TARGETS, "clip_high"),
                    Param("floor", (0.0, 0.25, 0.5), 0.25),
                    Param("shape", ("linear", "cosine"), "linear"))

CATALOG: dict[str, dict[str, GeneSpec]] = {slot: {} for slot in SLOTS}
for _s in (
    # ------------------------------------------------------------------ reward shaping
    _spec("reward", "plain", "", "reward 1 for a correct answer, 0 otherwise",
          "r = 1[correct]",
          "keeps the reward equal to correctness, so nothing else is optimized"),
    _spec("reward", "gated_length", "gl",
          "correctness-gated length penalty: a correct answer earns 1 - {alpha} * L/L_max, "
          "a wrong one 0, so every correct answer still beats every wrong one",
          "r = 1[correct] * (1 - {alpha} * L / L_max)",
          "rewards shorter correct answers without ever letting length buy reward over "
          "correctness", Param("alpha", (0.1, 0.25, 0.5), 0.25)),
    _spec("reward", "solved_length", "sl",
          "length penalty only in solved groups: where every answer of the group is "
          "correct each earns 1 - {alpha} * L/L_max; elsewhere reward is correctness",
          "r = 1[correct] * (1 - {alpha} * 1[all of g(i) correct] * L / L_max)",
          "prices length only on problems the policy no longer gets wrong, so brevity "
          "never competes with learning a problem it can still fail",
          Param("alpha", (0.25, 0.5, 1.0), 0.5)),
    _spec("reward", "uniform_length", "ul",
          "uniform length penalty on every answer, right or wrong",
          "r = 1[correct] - {alpha} * L / L_max",
          "pushes every answer shorter, wrong ones too, which may trade accuracy for "
          "brevity", Param("alpha", (0.05, 0.1, 0.2), 0.1)),
    _spec("reward", "format_penalty", "fp",
          "format penalty: a format-invalid answer earns -{penalty}, a valid wrong one 0",
          "r = 1[correct] - {penalty} * 1[invalid]",
          "separates a broken format from a wrong but well-formed answer, so the policy "
          "is pushed to keep the format", Param("penalty", (0.25, 0.5, 1.0), 0.5)),
    _spec("reward", "expr", "rx",
          "composed reward r = {f}, built by the builtin scientist from primitives",
          "r = {f}",
          "is a reward composed from primitives (correctness, validity, L/L_max, step, "
          "group success rate), not a catalog gene",
          Param("f", ("correct",), "correct", site="reward")),
    _spec("reward", "overlong", "ol",
          "DAPO soft overlong penalty: linear from 0 to -1 over the last {cache} of the "
          "response budget",
          "r = 1[correct] - clip((L - (L_max - C)) / C, 0, 1),  C = max(1, round({cache} * "
          "L_max))",
          "punishes only responses that approach the budget (where the format breaks), "
          "leaving normal lengths alone", Param("cache", (0.1, 0.2, 0.3), 0.2)),
    # ------------------------------------------------------------------ validity masking
    _spec("validity", "none", "", "invalid answers count like wrong ones everywhere", "",
          "treats a format break as an ordinary wrong answer"),
    _spec("validity", "stats", "vm",
          "validity masking of the statistics: each group's baseline and scale come from "
          "its valid samples only; an invalid sample gets the fixed advantage "
          "{invalid_adv}",
          "b, sigma over (i in g : valid_i);  A_i = {invalid_adv} if invalid_i",
          "stops broken answers from moving the bar for the valid ones, while still "
          "discouraging them by a fixed amount",
          Param("invalid_adv", (-1.0, -0.5, 0.0), -1.0)),
    _spec("validity", "loss", "vl",
          "invalid samples are masked out of the loss: no gradient, and their tokens are "
          "not counted in the loss denominators",
          "m_it = 0 for invalid i in the loss",
          "removes the noisy gradient of broken answers (but no longer discourages them)"),
    # ------------------------------------------------------------------ advantage baseline
    _spec("baseline", "group_mean", "",
          "the group's mean reward (0 for a group of one)",
          "b_i = mean_(j in g(i)) r_j", "is GRPO's baseline"),
    _spec("baseline", "loo", "loo",
          "the mean reward of the other samples of the group (leave-one-out)",
          "b_i = (sum_(j in g(i)) r_j - r_i) / (|g(i)| - 1)",
          "makes the baseline independent of the sample itself, an unbiased estimator"),
    _spec("baseline", "batch_mean", "bb", "the mean reward of the whole batch",
          "b_i = mean_j r_j",
          "credits easy prompts (all-correct groups) and blames hard ones (all-fail "
          "groups) instead of cancelling them"),
    _spec("baseline", "none", "nb", "none (b = 0)", "b_i = 0",
          "keeps the raw reward as the signal (REINFORCE without a baseline)"),
    # ------------------------------------------------------------------ normalization
    _spec("normalization", "group_std", "",
          "advantage divided by the group's reward std (unbiased, 1 for a group of one)",
          "A_i = (r_i - b_i) / (sigma_g + 1e-6)", "is GRPO's normalization"),
    _spec("normalization", "batch_std", "bs",
          "advantage divided by the std of the centered rewards over the batch",
          "A_i = (r_i - b_i) / (std_batch(r - b) + 1e-6)",
          "weighs groups of different difficulty equally per unit of reward, instead of "
          "blowing up nearly-uniform groups"),
    _spec("normalization", "none", "nn", "advantage not rescaled", "A_i = r_i - b_i",
          "removes the std normalization's bias toward low-variance (too easy or too hard) "
          "prompts"),
    _spec("normalization", "bernoulli", "av",
          "analytic variance: divided by sqrt(p(1-p)) of the group success rate p, "
          "smoothed by {prior} pseudo-successes and {prior} pseudo-failures",
          "p_g = (k_g + {prior}) / (n_g + 2*{prior});  A_i = (r_i - b_i) / "
          "(sqrt(p_g (1 - p_g)) + 1e-6)",
          "uses the Bernoulli variance of correctness, which is defined and stable even "
          "when the sampled rewards barely vary", Param("prior", (0.5, 1.0, 2.0), 1.0)),
    _spec("normalization", "beta", "bv",
          "Bayesian variance: divided by sqrt(E[p(1-p)]) under the Beta posterior of the "
          "group success rate, with a prior of strength {strength} centred on the batch "
          "success rate",
          "p ~ Beta(k_g + s*p_B, n_g - k_g + s*(1 - p_B)), s = {strength};  A_i = "
          "(r_i - b_i) / (sqrt(m(1-m)(a+b)/(a+b+1)) + 1e-6)",
          "shrinks each group's success rate toward the batch's, so small groups get a "
          "calibrated scale", Param("strength", (1.0, 2.0, 4.0), 2.0)),
    _spec("normalization", "expr", "nx",
          "advantage divided by a composed group scale s_g = {f}, floored at 0.05, built "
          "by the builtin scientist from primitives",
          "A_i = (r_i - b_i) / max(s_g, 0.05),  s_g = {f}",
          "is an advantage scale composed from group statistics (reward std, success "
          "rate p, p(1-p), reward range, step), not a catalog gene",
          Param("f", ("std",), "std", site="scale")),
    # ------------------------------------------------------------------ group filtering
    _spec("filtering", "none", "", "every group is kept", "", "keeps every group"),
    _spec("filtering", "zero_variance", "zf",
          "zero-variance groups (all shaped rewards equal) get advantage 0 and are dropped "
          "from the loss and its denominators (DAPO's dynamic sampling, no resampling)",
          "keep_g = 1[max_g r != min_g r or |g| = 1]",
          "stops groups without signal from diluting the gradient of informative ones"),
    # ------------------------------------------------------------------ clipping
    _spec("clipping", "symmetric", "sc",
          "PPO clip of the ratio to [1 - {eps}, 1 + {eps}], no dual clip",
          "L_t = max(-A rho_t, -A clip(rho_t, 1 - {eps}, 1 + {eps}))",
          "bounds the update symmetrically", Param("eps", (0.1, 0.2, 0.3), 0.2)),
    _spec("clipping", "dual_clip", "dc",
          "PPO clip to [1 - {eps}, 1 + {eps}] with dual clip c = {c:g} on "
          "negative advantages",
          "L_t = min(max(-A rho_t, -A clip(rho_t, 1 - {eps}, 1 + {eps})), -c A) if A < 0",
          "bounds the update and the loss of a negative advantage at a large ratio",
          Param("eps", (0.1, 0.2, 0.3), 0.2), Param("c", (3.0, 10.0), 3.0)),
    _spec("clipping", "clip_higher", "ch",
          "asymmetric clip-higher: ratio clipped to [1 - {eps_low}, 1 + {eps_high}], dual "
          "clip c = {c:g} on negative advantages (c = 0: off)",
          "L_t = max(-A rho_t, -A clip(rho_t, 1 - {eps_low}, 1 + {eps_high}))",
          "lets low-probability tokens with positive advantage grow further, which "
          "counters entropy collapse", Param("eps_low", (0.1, 0.2), 0.2),
          Param("eps_high", (0.24, 0.28, 0.32), 0.28), Param("c", (0.0, 3.0, 10.0), 10.0)),
    # ------------------------------------------------------------------ loss aggregation
    _spec("aggregation", "seq_mean_token_mean", "",
          "loss averaged over each response's tokens, then over responses",
          "L = mean_i (1/|y_i|) sum_t L_it", "is GRPO's aggregation"),
    _spec("aggregation", "token_mean", "tm",
          "loss averaged over all response tokens of the batch",
          "L = sum_it L_it / sum_i |y_i|",
          "gives every token the same weight, so long responses are not under-weighted"),
    _spec("aggregation", "seq_mean_token_sum_norm", "tsn",
          "loss summed over each response's tokens, divided by the constant L_max, then "
          "averaged over responses (Dr. GRPO)",
          "L = mean_i (1/L_max) sum_t L_it",
          "removes the length normalization bias that favours long wrong answers"),
    # ------------------------------------------------------------------ KL
    _spec("kl", "none", "nokl", "no KL penalty", "", "lets the policy drift freely"),
    _spec("kl", "k3", "kl",
          "k3 (low-variance) KL penalty to the reference policy, coefficient {beta}",
          "L += {beta} * agg(exp(ref - logp) - (ref - logp) - 1)",
          "anchors the policy to the warm start", Param("beta", (0.001, 0.01, 0.05), 0.001)),
    # ------------------------------------------------------------------ schedules
    _spec("schedule", "none", "", "coefficients constant over training", "",
          "keeps every coefficient fixed"),
    _spec("schedule", "warmup", "wu",
          "{shape} warmup of {target}: its multiplier rises from {floor} to 1 over training",
          "coef(t) = coef * ({floor} + (1 - {floor}) * s(t)),  t = step / (T - 1)",
          "lets the policy learn first and tightens the {target} term later",
          *_SCHEDULE_PARAMS),
    _spec("schedule", "decay", "dec",
          "{shape} decay of {target}: its multiplier falls from 1 to {floor} over training",
          "coef(t) = coef * (1 - (1 - {floor}) * s(t)),  t = step / (T - 1)",
          "applies the {target} term early and relaxes it as training converges",
          *_SCHEDULE_PARAMS),
):
    CATALOG[_s.slot][_s.kind] = _s

SLOT_TITLES = {"reward": "Reward", "validity": "Validity", "baseline": "Baseline",
               "normalization": "Normalization", "filtering": "Group filtering",
               "clipping": "Clipping", "aggregation": "Loss aggregation", "kl": "KL",
               "schedule": "Schedule"}


# The original system's discoveries, as catalog kinds: validity masking (of the group
# statistics or of the loss), analytic-variance scaling (and its Bayesian cousin) and the
# correctness-gated length penalty. ``--without-genes paper`` removes them for an ablation.
PAPER_GENES = ("validity=stats", "validity=loss", "normalization=bernoulli",
               "normalization=beta", "reward=gated_length")


def excluded_kinds(names) -> frozenset[tuple[str, str]]:
    """``slot=kind`` names (or ``paper`` for ``PAPER_GENES``) as (slot, kind) pairs; an
    unknown one, or one that would leave a slot empty, is a ValueError."""
    out = set()
    for name in names:
        name = name.strip()
        for item in (PAPER_GENES if name == "paper" else [name]):
            slot, _, kind = item.partition("=")
            if slot not in CATALOG or kind not in CATALOG[slot]:
                known = ", ".join(f"{s}={k}" for s in SLOTS for k in CATALOG[s])
                raise ValueError(f"unknown gene {item!r} (slot=kind, or 'paper'); the "
                                 f"catalog has {known}")
            out.add((slot, kind))
    for slot in SLOTS:
        if all((slot, k) in out for k in CATALOG[slot]):
            raise ValueError(f"excluding every {slot} gene leaves the slot empty")
    return frozenset(out)


# Catalog genes the expression grammar can write, as (slot, kind) -> the expression of
# the gene with these parameters (agents/builtin/expr.py). A composed gene equal to one
# of them on the probes is that catalog gene, not an invention.
AS_EXPRESSION = {
    ("reward", "plain"): lambda p: "correct",
    ("reward", "gated_length"): lambda p: f"mul correct onem mul {p['alpha']:g} lfrac",
    ("reward", "uniform_length"): lambda p: f"sub correct mul {p['alpha']:g} lfrac",
    ("reward", "format_penalty"): lambda p: f"sub correct mul {p['penalty']:g} onem valid",
    ("normalization", "group_std"): lambda p: "std",
    ("normalization", "none"): lambda p: "1",
    ("normalization", "bernoulli"): lambda p: "sqrt pq" if p["prior"] == 1.0 else None,
}
EXPRESSION_SITES = {"reward": "reward", "normalization": "scale"}


def as_expression(g: "Gene") -> str | None:
    """``g`` as an expression text of its slot's site, or None when the grammar cannot
    write it (or the slot takes no expression)."""
    if g.composed:
        return g["f"]
    fn = AS_EXPRESSION.get((g.slot, g.kind))
    return fn(dict(g.params)) if fn else None


def catalog_match(g: "Gene", excluded=frozenset()) -> "Gene | None":
    """The catalog gene (kinds in ``excluded`` left out) whose expression has composed
    gene ``g``'s ``expr.shape`` (the same signal up to the shifts and scales GRPO's
    normalization undoes), or None: ``g`` is new to the catalog."""
    from agents.builtin import expr

    site = EXPRESSION_SITES[g.slot]
    mine = expr.shape(expr.parse(g["f"], site), site)
    for other in all_genes(g.slot):
        if other.composed or (other.slot, other.kind) in excluded:
            continue
        text = as_expression(other)
        if text is not None and expr.shape(expr.parse(text, site), site) == mine:
            return other
    return None


def spec(slot: str, kind: str) -> GeneSpec:
    if slot not in CATALOG:
        raise KeyError(f"unknown slot {slot!r}; slots: {', '.join(SLOTS)}")
    if kind not in CATALOG[slot]:
        raise KeyError(f"unknown {slot} gene {kind!r}; known: {', '.join(CATALOG[slot])}")
    return CATALOG[slot][kind]


# ----------------------------------------------------------------------------- genes

@dataclass(frozen=True)
class Gene:
    """A catalog entry with parameter values; build with ``gene(slot, kind, **params)``."""
    slot: str
    kind: str
    params: tuple[tuple[str, Value], ...] = ()

    def __post_init__(self):
        s = spec(self.slot, self.kind)
        names = tuple(n for n, _ in self.params)
        if names != tuple(p.name for p in s.params):
            raise ValueError(f"gene {self.slot}.{self.kind} needs parameters "
                             f"{[p.name for p in s.params]}, got {list(names)}")
        canonical = []
        for name, value in self.params:
            site = s.param(name).site
            if site:  # an expression: parsed, simplified and written canonically
                from agents.builtin import expr

                try:
                    value = expr.unparse(expr.simplify(expr.parse(value, site)))
                except expr.ExprError as e:
                    raise ValueError(f"gene {self.slot}.{self.kind}: {name}: {e}") from None
            elif value not in s.param(name).values:
                raise ValueError(f"gene {self.slot}.{self.kind}: {name}={value!r} is not "
                                 f"one of {s.param(name).values}")
            canonical.append((name, value))
        object.__setattr__(self, "params", tuple(canonical))

    @property
    def spec(self) -> GeneSpec:
        return spec(self.slot, self.kind)

    def __getitem__(self, name: str) -> Value:
        for n, v in self.params:
            if n == name:
                return v
        raise KeyError(f"gene {self.slot}.{self.kind} has no parameter {name!r}")

    def get(self, name: str, default: Value | None = None) -> Value | None:
        return dict(self.params).get(name, default)

    def label(self) -> str:
        """``kind(p=v, ...)``, the gene's part of a signature."""
        if not self.params:
            return self.kind
        return f"{self.kind}({','.join(f'{n}={_fmt(v)}' for n, v in self.params)})"

    @property
    def composed(self) -> bool:
        """The gene carries an expression the scientist composed (agents/builtin/expr.py)."""
        return any(p.site for p in self.spec.params)

    def _shown(self) -> dict[str, Value]:
        """Parameter values for the texts: an expression as infix math."""
        out = dict(self.params)
        for p in self.spec.params:
            if p.site:
                from agents.builtin import expr

                out[p.name] = expr.infix(expr.parse(out[p.name], p.site),
                                         {"lfrac": "L/L_max"})
        return out

    def words(self) -> str:
        return self.spec.words.format(**self._shown())

    def math(self) -> str:
        return self.spec.math.format(**self._shown())

    def effect(self) -> str:
        return self.spec.effect.format(**self._shown())


def gene(slot: str, kind: str, **params: Value) -> Gene:
    """A gene with the catalog's defaults for parameters not given."""
    s = spec(slot, kind)
    unknown = set(params) - {p.name for p in s.params}
    if unknown:
        raise ValueError(f"gene {slot}.{kind} has no parameter(s) {sorted(unknown)}")
    return Gene(slot, kind, tuple((p.name, params.get(p.name, p.default)) for p in s.params))


def all_genes(slot: str) -> Iterator[Gene]:
    """Every gene of a slot: each kind with each combination of parameter values."""
    for s in CATALOG[slot].values():
        for values in itertools.product(*(p.values for p in s.params)):
            yield Gene(slot, s.kind, tuple(zip((p.name for p in s.params), values)))


def _fmt(v: Value) -> str:
    return v if isinstance(v, str) else f"{v:g}"


def _compact(v: Value) -> str:
    """A parameter value as slug characters: 0.25 -> "25", -1.0 -> "m1", "cosine" -> "cos"."""
    if isinstance(v, str):
        return v[:3]
    return _fmt(v).replace("0.", "").replace(".", "").replace("-", "m")


def _parse_value(text: str) -> Value:
    try:
        return float(text)
    except ValueError:
        return text


# ----------------------------------------------------------------------------- genome

@dataclass(frozen=True)
class Genome:
    """One gene per slot. Invalid combinations (a schedule on a coefficient the genome
    lacks) raise ValueError; ``conflicts()`` lists them without raising."""
    reward: Gene
    validity: Gene
    baseline: Gene
    normalization: Gene
    filtering: Gene
    clipping: Gene
    aggregation: Gene
    kl: Gene
    schedule: Gene

    def __post_init__(self):
        for slot in SLOTS:
            g = getattr(self, slot)
            if not isinstance(g, Gene) or g.slot != slot:
                raise ValueError(f"Genome.{slot} must be a {slot} Gene, got {g!r}")
        problems = self.conflicts()
        if problems:
            raise ValueError("invalid genome: " + "; ".join(problems))

    # --- construction
    @classmethod
    def grpo(cls) -> "Genome":
        return cls(reward=gene("reward", "plain"), validity=gene("validity", "none"),
                   baseline=gene("baseline", "group_mean"),
                   normalization=gene("normalization", "group_std"),
                   filtering=gene("filtering", "none"),
                   clipping=gene("clipping", "dual_clip", eps=0.2, c=3.0),
                   aggregation=gene("aggregation", "seq_mean_token_mean"),
                   kl=gene("kl", "k3", beta=0.001), schedule=gene("schedule", "none"))

    def with_genes(self, *genes: Gene) -> "Genome":
        return replace(self, **{g.slot: g for g in genes})

    @classmethod
    def from_slots(cls, genes: dict[str, Gene]) -> "Genome":
        return cls(**{slot: genes[slot] for slot in SLOTS})

    @classmethod
    def from_signature(cls, signature: str) -> "Genome":
        """Inverse of ``signature()``."""
        genes: dict[str, Gene] = {}
        for part in signature.strip().split(";"):
            slot, _, label = part.partition("=")
            kind, _, rest = label.partition("(")
            params = tuple((n, _parse_value(v)) for n, _, v in
                           (p.partition("=") for p in rest.rstrip(")").split(",") if p))
            genes[slot.strip()] = Gene(slot.strip(), kind.strip(), params)
        missing = [s for s in SLOTS if s not in genes]
        if missing:
            raise ValueError(f"signature {signature!r} lacks slot(s) {', '.join(missing)}")
        return cls.from_slots(genes)

    # --- views
    def genes(self) -> tuple[Gene, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def signature(self) -> str:
        """Canonical text, ``slot=kind(p=v,...)`` joined by ";" in slot order."""
        return ";".join(f"{g.slot}={g.label()}" for g in self.genes())

    def diff(self, other: "Genome") -> list[str]:
        """Slots whose gene differs from ``other``'s."""
        return [s for s in SLOTS if getattr(self, s) != getattr(other, s)]

    def distance(self, other: "Genome") -> float:
        """1 per slot of a different kind, 0.5 per slot with the same kind but other
        parameter values."""
        d = 0.0
        for s in SLOTS:
            a, b = getattr(self, s), getattr(other, s)
            d += 0.0 if a == b else (0.5 if a.kind == b.kind else 1.0)
        return d

    def conflicts(self) -> list[str]:
        sched = self.schedule
        if sched.kind == "none":
            return []
        target = sched["target"]
        needs = {"alpha": ("reward", ("gated_length", "uniform_length", "solved_length")),
                 "format_penalty": ("reward", ("format_penalty",)),
                 "kl_beta": ("kl", ("k3",))}
        if target in needs:
            slot, kinds = needs[target]
            if getattr(self, slot).kind not in kinds:
                return [f"schedule target {target!r} needs a {slot} gene among "
                        f"{', '.join(kinds)}, got {getattr(self, slot).kind!r}"]
        return []

    def slug(self) -> str:
        """A name from the genes that depart from GRPO, e.g. ``vm-av-grpo``."""
        ref = Genome.grpo()
        parts = []
        for s in SLOTS:
            g, r = getattr(self, s), getattr(ref, s)
            if g == r:
                continue
            abbrev = g.spec.abbrev or g.kind.replace("_", "")
            if g.composed:  # an expression: a short stable digest of it
                abbrev += hashlib.sha1(g.label().encode()).hexdigest()[:4]
            elif g.kind == r.kind:  # same mechanism, other values: name the first change
                abbrev += next(_compact(v) for (_, v), (_, rv) in zip(g.params, r.params)
                               if v != rv)
            elif s == "schedule":
                abbrev += "-" + _TARGET_ABBREV[str(g["target"])]
            else:  # a new mechanism: name the values that are not its defaults
                abbrev += "".join(_compact(v) for (n, v), p in zip(g.params, g.spec.params)
                                  if v != p.default)
            parts.append(abbrev)
        return "-".join(parts[:6] + ["grpo"]) if parts else "grpo"

    def describe(self) -> str:
        """The mechanism in words and math, one line per slot, departures from GRPO
        marked with '*'."""
        ref = Genome.grpo()
        lines = []
        for s in SLOTS:
            g = getattr(self, s)
            mark = "*" if g != getattr(ref, s) else " "
            math = f"  [{g.math()}]" if g.math() else ""
            lines.append(f"{mark} {SLOT_TITLES[s]}: {g.words()}{math}")
        return "\n".join(lines)

    def math(self) -> str:
        """The math of the genes that depart from GRPO (GRPO's own if none)."""
        ref = Genome.grpo()
        changed = [getattr(self, s) for s in SLOTS if getattr(self, s) != getattr(ref, s)]
        shown = changed or [self.reward, self.baseline, self.normalization, self.clipping]
        return "\n".join(f"{SLOT_TITLES[g.slot]}: {g.math()}" for g in shown if g.math()) \
            or "GRPO"

    def render(self, name: str | None = None, *, full: bool = False) -> str:
        """The candidate module's source. Hooks identical to GRPO's are left out (the
        contract falls back to GRPO's) unless ``full``."""
        from agents.builtin.render import render_module

        return render_module(self, name or self.slug(), full=full)


BASELINE_GENOMES: dict[str, Genome] = {
    "grpo": Genome.grpo(),
    "dr_grpo": Genome.grpo().with_genes(
        gene("normalization", "none"), gene("aggregation", "seq_mean_token_sum_norm"),
        gene("kl", "none")),
    "dapo": Genome.grpo().with_genes(
        gene("reward", "overlong", cache=0.2), gene("filtering", "zero_variance"),
        gene("clipping", "clip_higher", eps_low=0.2, eps_high=0.28, c=10.0),
        gene("aggregation", "token_mean"), gene("kl", "none")),
    "rloo": Genome.grpo().with_genes(gene("baseline", "loo"), gene("normalization", "none")),
}

__all__ = ["SLOTS", "CATALOG", "as_expression", "catalog_match", "EXPRESSION_SITES", "SCHEDULE_TARGETS", "Param", "GeneSpec", "Gene", "Genome",
           "gene", "all_genes", "spec", "BASELINE_GENOMES"]
