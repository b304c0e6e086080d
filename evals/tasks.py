"""The testbed task suite: arithmetic with a worked-steps format that can break, and
verbosity a policy can drop without losing accuracy.

A prompt is ``"<a><op><b>="`` (operands zero-padded to a fixed width). A response is an
optional restatement of the problem, an optional scratchpad of column steps (least
significant column first, carries and borrows written out), optional filler, optional
re-checks of the answer, and the final answer in a required format, then EOS::

    2+7=9;3+9=12;4+1=5;~~=529;=529;#529.        (steps, filler, two re-checks)
    00432+00097;2+7=9;3+9=12;4+1=5;#529.        (restated first: allowed, testbed v2)
    2+7=9;3+9=12;4+1=5;#529.                    (the steps accuracy may need)
    #529.                                       (the shortest correct form: the oracle)

The strict parser accepts exactly ``RESTATE? (STEP;|~)* (=N;)* '#' ANSWER '.'`` followed by
EOS within the response budget, where RESTATE is the prompt's ``a<op>b;``, STEP is the family's column
step (``d+d(+1)?=n``, ``1?d-d(-1)?=d``, ``d*d(+c)?=n``) and ANSWER has no leading zero;
anything else (no EOS, a second '#', text after '.', a stray character) is invalid and
earns no reward. Correct = valid and ANSWER equals the result. The steps' arithmetic is
not checked: only the answer counts, as in math benchmarks.

**Search families** (the RL prompt stream, selection and Overall): ``add2`` (easy, many
all-correct groups), ``add3`` (medium), ``add5`` (hard: concise answers are mostly wrong,
long scratchpads break the format more often, many all-fail groups).

**Transfer families** (``TRANSFER_FAMILIES``: in the warm start's corpus, never in the
search's prompt stream, evaluation or selection): ``sub2``, two-digit subtraction with
borrows, and ``mul3``, a three-digit number times one digit. A campaign trains its
winner and the baselines on them with RL at the end, to see what transfers.

**Verbosity.** Real reasoning models over-think; the warm start does too, in measured
proportions (``CorpusNoise``): it re-checks its answer (twice, greedily), writes filler
and redundant steps, and writes scratchpads on problems easy enough to answer directly.
None of it changes correctness; the scratchpad on hard problems is what accuracy needs.
Testbed v2 also restated the problem first; that turned out to be verbosity the model
needs (GRPO raised it to every answer, and removing it cost accuracy), so testbed v3
writes none, and testbed v4 writes more of the filler GRPO keeps (docs/testbed.md). ``anatomy`` splits a response into these parts,
``oracle_length`` is the shortest correct response, so the room for shortening is a
number (``python -m trainers.local.testbed``). Problems are split into train / val /
test by a hash of (op, a, b), so the splits are disjoint and fixed forever.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace

# ----------------------------------------------------------------------------- vocabulary

PAD, BOS, EOS = 0, 1, 2
CHARS = "0123456789+=#.;~-*"
VOCAB = ["<pad>", "<bos>", "<eos>"] + list(CHARS)
STOI = {c: i + 3 for i, c in enumerate(CHARS)}
VOCAB_SIZE = len(VOCAB)


def encode(text: str) -> list[int]:
    try:
        return [STOI[c] for c in text]
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the task vocabulary "
                         f"{CHARS!r}") from None


def decode(ids) -> str:
    """Response token ids -> text, stopping at EOS (PAD is skipped)."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i >= 3:
            out.append(VOCAB[i])
    return "".join(out)


# ----------------------------------------------------------------------------- families

@dataclass(frozen=True)
class Family:
    name: str
    op: str              # "+", "-" or "*"
    digits: int          # the first operand has up to this many digits (the second too,
                         # except for "*", whose second operand is one digit)
    weight: float        # share of the RL prompt stream of its kind (search or transfer)
    scratch_prob: float  # share of SFT examples written with a scratchpad
    sft_weight: float    # share of the warm start's SFT corpus


FAMILIES = (  # the search families: RL, selection, Overall
    Family("add2", "+", 2, 0.3, 0.6, 0.24),
    Family("add3", "+", 3, 0.4, 0.6, 0.32),
    Family("add5", "+", 5, 0.3, 0.8, 0.24),
)
TRANSFER_FAMILIES = (  # never searched on: RL'd and scored only in a transfer stage
    Family("sub2", "-", 2, 0.5, 0.8, 0.10),
    Family("mul3", "*", 3, 0.5, 0.8, 0.10),
)
ALL_FAMILIES = FAMILIES + TRANSFER_FAMILIES
FAMILY_BY_NAME = {f.name: f for f in ALL_FAMILIES}
FAMILY_SETS = {"search": FAMILIES, "transfer": TRANSFER_FAMILIES}
WIDTH = max(f.digits for f in ALL_FAMILIES)
HARD_FAMILY = "add5"

# Overall, in the spirit of the original benchmark mix: the hard family is scored by
# its T=1 accuracy (pass@1, the mean over 16 draws: reasoning benchmarks' avg@k) and by
# pass@16 at T=1 (the AIME-style pass@k), and weighted highest; the easy families by
# greedy acc@1. Testbed v2 scored add5 by greedy acc@1; with testbed v3's 80-token budget
# the warm start's greedy add5 answers no longer overrun the budget, greedy add5 accuracy
# is 79% before RL and GRPO does not raise it, while its T=1 accuracy goes 26% -> 57%
# (RL trains the T=1 policy; docs/testbed.md), so v3 scores what RL changes.
OVERALL_WEIGHTS = {
    "add2/acc@1": 0.15,
    "add3/acc@1": 0.25,
    "add5/pass@1": 0.30,
    "add5/pass@16": 0.30,
}
# The transfer families' Overall: greedy accuracy and T=1 accuracy (pass@1), equal weights.
TRANSFER_WEIGHTS = {"sub2/acc@1": 0.25, "sub2/pass@1": 0.25,
                    "mul3/acc@1": 0.25, "mul3/pass@1": 0.25}
PASS_K = 16

SPLITS = ("train", "val", "test")


def families(which: str) -> tuple[Family, ...]:
    """``"search"`` or ``"transfer"``."""
    try:
        return FAMILY_SETS[which]
    except KeyError:
        raise ValueError(f"unknown family set {which!r}: expected one of "
                         f"{', '.join(FAMILY_SETS)}") from None


def split_of(a: int, b: int, op: str = "+") -> str:
    """Fixed disjoint split by hash: 60% train, 20% val, 20% test."""
    h = int.from_bytes(hashlib.blake2s(f"{a}{op}{b}".encode(), digest_size=4).digest(), "big")
    r = h % 10
    return "val" if r < 2 else "test" if r < 4 else "train"


@dataclass(frozen=True)
class Problem:
    family: str
    a: int
    b: int

    @property
    def op(self) -> str:
        return FAMILY_BY_NAME[self.family].op

    @property
    def prompt(self) -> str:
        # Operands right-aligned to a fixed width with leading zeros, so a column sits
        # at the same position in every family and the scratchpad is learnable.
        return f"{self.a:0{WIDTH}d}{self.op}{self.b:0{WIDTH}d}="

    @property
    def answer(self) -> int:
        return {"+": self.a + self.b, "-": self.a - self.b, "*": self.a * self.b}[self.op]


def sample_problem(family: Family, rng: random.Random, split: str = "train") -> Problem:
    hi = 10 ** family.digits - 1  # operands of up to ``digits`` digits
    while True:
        a = rng.randint(0, hi)
        b = rng.randint(0, 9 if family.op == "*" else hi)
        if family.op == "-" and b > a:
            a, b = b, a               # a non-negative difference
        if split_of(a, b, family.op) == split:
            return Problem(family.name, a, b)


def heldout_set(family: str, split: str, size: int) -> list[Problem]:
    """A fixed list of distinct problems of one family from val or test (same every call)."""
    if split not in ("val", "test"):
        raise ValueError(f"held-out split must be 'val' or 'test', got {split!r}")
    fam = FAMILY_BY_NAME[family]
    rng = random.Random(f"heldout-{family}-{split}")
    n_pairs = 10 ** fam.digits * (10 if fam.op == "*" else 10 ** fam.digits)
    if fam.op == "-":
        n_pairs //= 2
    size = min(size, int(n_pairs * 0.2 * 0.97))  # slack: the hash bucket is ~20%
    seen: set[tuple[int, int]] = set()
    out: list[Problem] = []
    while len(out) < size:
        p = sample_problem(fam, rng, split)
        if (p.a, p.b) not in seen:
            seen.add((p.a, p.b))
            out.append(p)
    return out


class PromptStream:
    """The training prompt stream of one seed: mixed families of one set (the search's by
    default), train split only."""

    def __init__(self, seed: int, which: str = "search"):
        self.rng = random.Random(f"prompts-{seed}" if which == "search"
                                 else f"prompts-{which}-{seed}")
        self.families = families(which)

    def next_batch(self, size: int) -> list[Problem]:
        weights = [f.weight for f in self.families]
        fams = self.rng.choices(self.families, weights=weights, k=size)
        return [sample_problem(f, self.rng, "train") for f in fams]


# ----------------------------------------------------------------------------- format

def column_steps(a: int, b: int, op: str = "+") -> list[str]:
    """The scratchpad steps of ``a op b``, least-significant column first."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    if op == "*":
        for ch in da:
            s = int(ch) * b + carry
            steps.append(f"{ch}*{b}{f'+{carry}' if carry else ''}={s}")
            carry = s // 10
        return steps
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        if op == "-":
            d = x - y - carry
            lend = d < 0
            steps.append(f"{'1' if lend else ''}{x}-{y}{'-1' if carry else ''}="
                         f"{d + 10 if lend else d}")
            carry = int(lend)
        else:
            s = x + y + carry
            steps.append(f"{x}+{y}{'+1' if carry else ''}={s}")
            carry = s // 10
    return steps


def restatement(problem: Problem) -> str:
    """The problem restated as the prompt writes it, ``00432+00097`` (a fixed width, so
    the steps after it sit at fixed positions too)."""
    return problem.prompt[:-1]


def render(steps: list[str], answer: str, filler: int = 0, restate: str | None = None,
           checks: int = 0) -> str:
    head = f"{restate};" if restate else ""
    body = "".join(s + ";" for s in steps)
    return head + body + "~" * filler + f"={answer};" * checks + f"#{answer}."


def oracle_length(problem: Problem) -> int:
    """Tokens of the shortest correct response, EOS included: ``#<answer>.<eos>``."""
    return len(str(problem.answer)) + 3


_STEP = r"(?:\d\+\d(?:\+1)?=\d{1,2}|1?\d-\d(?:-1)?=\d|\d\*\d(?:\+\d)?=\d{1,2})"
_RESTATE = r"\d+[-+*]\d+;"
_RESPONSE = re.compile(rf"^(?:{_RESTATE})?(?:{_STEP};|~)*(?:=\d+;)*#(0|[1-9]\d*)\.$")
_PARTS = re.compile(rf"(?P<restate>^{_RESTATE})|(?P<step>{_STEP};)|(?P<filler>~)|"
                    r"(?P<check>=\d+;)|(?P<answer>#\d+\.$)")


@dataclass(frozen=True)
class Graded:
    valid: bool
    correct: bool
    answer: int | None


def grade(problem: Problem, response: str, terminated: bool = True) -> Graded:
    """Strict parse of a decoded response. ``terminated`` is False when the response hit
    the length budget without EOS: such a response is invalid whatever it says."""
    if not terminated:
        return Graded(False, False, None)
    m = _RESPONSE.match(response)
    if m is None:
        return Graded(False, False, None)
    answer = int(m.group(1))
    return Graded(True, answer == problem.answer, answer)


ANATOMY_PARTS = ("restate", "steps", "redundant", "filler", "checks", "answer")


def anatomy(problem: Problem, response: str) -> dict[str, int] | None:
    """A valid response's tokens by part (EOS counted with the answer). Redundant: a step
    written again right after itself, as long as there are more steps than the problem
    has columns (a column that legitimately repeats its neighbour is not redundant).
    None for an invalid response."""
    if _RESPONSE.match(response) is None:
        return None
    out = dict.fromkeys(ANATOMY_PARTS, 0)
    out["answer"] = 1  # EOS
    found = [(m.lastgroup, m.group()) for m in _PARTS.finditer(response)]
    extra = sum(k == "step" for k, _ in found) - len(column_steps(problem.a, problem.b,
                                                                  problem.op))
    last = None
    for kind, text in found:
        if kind == "step":
            if text == last and extra > 0:
                kind, extra = "redundant", extra - 1
            last = text
        out[{"step": "steps", "check": "checks"}.get(kind, kind)] += len(text)
    return out


# ----------------------------------------------------------------------------- SFT corpus

@dataclass(frozen=True)
class CorpusNoise:
    """How the warm-start corpus is deliberately imperfect (errors and verbosity)."""

    wrong_carry: float = 0.10     # a carry (borrow) dropped in one column: a wrong answer
    redundant_step: float = 0.15  # one step written twice (correct but longer)
    # Testbed v4 (docs/testbed.md, "A second candidate: more filler"): 0-8 filler tokens
    # (v3: 0-4). GRPO keeps the filler it is given, so a length term has tokens to remove
    # that accuracy does not need: on 5 val seeds the solved-group length penalty cut
    # length 36% at +0.4 Overall vs GRPO (docs/more-filler/calibration-F8.json), and the
    # hard family keeps v3's share of all-fail groups (19.1%; 0-12 filler left 12.5%).
    max_filler: int = 8           # 0..max filler tokens, uniform (correct but longer)
    # Testbed v3 (docs/testbed.md): no restatement by default. Testbed v2 restated the
    # problem in 60% of answers; GRPO raised that to all of them and every length
    # penalty that removed it cost accuracy (the 0.35M model reads the operands from the
    # copy), so it was verbosity the model needed. The re-checks are over 0.5 on purpose:
    # greedy decoding (what Overall and length score) then re-checks twice, and GRPO keeps
    # them (measured), so a length term has tokens to remove that accuracy does not need.
    restate: float = 0.0          # the problem restated first (correct but longer)
    check: float = 0.8            # the answer re-checked once before '#' ...
    double_check: float = 0.6     # ... and, of those, twice
    malformed_base: float = 0.01  # format breaks: base rate ...
    malformed_per_char: float = 0.0015  # ... plus this per response character


def sft_example(problem: Problem, family: Family, rng: random.Random,
                noise: CorpusNoise) -> str:
    """One warm-start response for ``problem`` (text, without EOS)."""
    steps = column_steps(problem.a, problem.b, family.op)
    answer = problem.answer
    if rng.random() < noise.wrong_carry:
        answer, steps = _drop_one_carry(problem, rng)
    use_scratch = rng.random() < family.scratch_prob
    steps = steps if use_scratch else []
    if steps and rng.random() < noise.redundant_step:
        i = rng.randrange(len(steps))
        steps = steps[:i + 1] + steps[i:]
    filler = rng.randint(0, noise.max_filler)
    restate = restatement(problem) if rng.random() < noise.restate else None
    checks = 0
    if rng.random() < noise.check:
        checks = 2 if rng.random() < noise.double_check else 1
    text = render(steps, str(answer), filler, restate, checks)
    if rng.random() < noise.malformed_base + noise.malformed_per_char * len(text):
        text = _malform(text, rng)
    return text


def _drop_one_carry(problem: Problem, rng: random.Random) -> tuple[int, list[str]]:
    """A wrong answer with its steps: a carry (or borrow) forgotten in one column that
    has one, or a digit slip if none has."""
    if problem.op == "*":
        return _mul_slip(problem, rng)
    a, b, sub = problem.a, problem.b, problem.op == "-"
    da, db = str(a)[::-1], str(b)[::-1]
    n = max(len(da), len(db))
    cols = [(int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0)
            for i in range(n)]
    carries, c = [], 0
    for x, y in cols:
        carries.append(c)
        c = int(x - y - c < 0) if sub else (x + y + c) // 10
    with_carry = [i for i in range(n) if carries[i]]
    drop = rng.choice(with_carry) if with_carry else None
    steps, digits, carry = [], [], 0
    for i, (x, y) in enumerate(cols):
        cin = 0 if i == drop else carry
        if sub:
            d = x - y - cin
            lend = d < 0
            steps.append(f"{'1' if lend else ''}{x}-{y}{'-1' if cin else ''}="
                         f"{d + 10 if lend else d}")
            digits.append(d + 10 if lend else d)
            carry = int(lend)
        else:
            s = x + y + cin
            steps.append(f"{x}+{y}{'+1' if cin else ''}={s}")
            digits.append(s % 10)
            carry = s // 10
    if carry and not sub:
        digits.append(carry)
    answer = int("".join(map(str, digits[::-1])))
    if drop is None:  # no carry to drop: slip the last digit instead
        answer = answer + 1 if answer % 10 != 9 else answer - 1
    return answer, steps


def _mul_slip(problem: Problem, rng: random.Random) -> tuple[int, list[str]]:
    """Multiplication: a carry dropped in one column that has one, else a last-digit slip."""
    steps, digits, carry = [], [], 0
    da = str(problem.a)[::-1]
    carries, c = [], 0
    for ch in da:
        carries.append(c)
        c = (int(ch) * problem.b + c) // 10
    with_carry = [i for i in range(len(da)) if carries[i]]
    drop = rng.choice(with_carry) if with_carry else None
    for i, ch in enumerate(da):
        cin = 0 if i == drop else carry
        s = int(ch) * problem.b + cin
        steps.append(f"{ch}*{problem.b}{f'+{cin}' if cin else ''}={s}")
        digits.append(s % 10)
        carry = s // 10
    if carry:
        digits.append(carry)
    answer = int("".join(map(str, digits[::-1])))
    if drop is None:
        answer = answer + 1 if answer % 10 != 9 else answer - 1
    return answer, steps


def _malform(text: str, rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return text.replace("#", "", 1)              # answer marker missing
    if kind == 1:
        return text[:-1]                            # terminator missing
    if kind == 2:
        return text + rng.choice(["#", ";", "0", "."])  # trailing junk
    i = text.index("#")
    return text[:i] + "#" + text[i:]                # doubled marker


CORPUS_FIELDS = ("sft_weight", "scratch_prob")


def corpus_families(overrides: dict | None = None) -> tuple[Family, ...]:
    """Every family as the warm-start corpus writes it, with per-family overrides of its
    share of the corpus and of answers written with a scratchpad, e.g.
    ``{"add2": {"sft_weight": 0.8}}`` (a variant testbed; docs/testbed.md). Raises
    ValueError naming an unknown family or field, or a value out of range."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(FAMILY_BY_NAME))
    if unknown:
        raise ValueError(f"corpus: unknown family {unknown[0]!r} (one of "
                         f"{', '.join(FAMILY_BY_NAME)})")
    out = []
    for fam in ALL_FAMILIES:
        over = overrides.get(fam.name) or {}
        if not isinstance(over, dict):
            raise ValueError(f"corpus: {fam.name} must map fields to numbers, got {over!r}")
        bad = sorted(set(over) - set(CORPUS_FIELDS))
        if bad:
            raise ValueError(f"corpus: {fam.name}: unknown field {bad[0]!r} (one of "
                             f"{', '.join(CORPUS_FIELDS)})")
        for k, v in over.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    0 <= v <= (1 if k == "scratch_prob" else float("inf"))):
                raise ValueError(f"corpus: {fam.name}.{k} must be a number "
                                 f"{'in [0, 1]' if k == 'scratch_prob' else '>= 0'}, "
                                 f"got {v!r}")
        out.append(replace(fam, **over))
    if not any(f.sft_weight > 0 for f in out):
        raise ValueError("corpus: every family's sft_weight is 0")
    return tuple(out)


def sft_corpus(size: int, seed: int, noise: CorpusNoise = CorpusNoise(),
               families: tuple[Family, ...] = ALL_FAMILIES) -> list[tuple[Problem, str]]:
    """``size`` (problem, response) pairs from the train split of every family (search
    and transfer, by ``sft_weight``; ``families``: ``corpus_families(overrides)`` for a
    variant), deterministic in seed."""
    rng = random.Random(f"sft-{seed}")
    weights = [f.sft_weight for f in families]
    out = []
    for _ in range(size):
        fam = rng.choices(families, weights=weights)[0]
        p = sample_problem(fam, rng, "train")
        out.append((p, sft_example(p, fam, rng, noise)))
    return out
