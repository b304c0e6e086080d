"""The testbed task suite: multi-digit addition with a worked-steps format that can break.

A prompt is ``"<a>+<b>="`` (operands zero-padded to a fixed width). A response is an optional scratchpad of column steps
(least-significant column first, carry written out), optional filler, and a final answer
in a required format, then EOS::

    7+5=12;4+8+1=13;3+1=4;~#432.      (scratchpad, one filler token)
    #432.                             (concise)

The strict parser accepts exactly ``(STEP;|~)* '#' ANSWER '.'`` followed by EOS within
the response budget, where STEP is ``d+d(+1)?=n`` and ANSWER has no leading zero;
anything else (no EOS, a second '#', text after '.', a stray character) is invalid and
earns no reward. Correct = valid and ANSWER == a + b. The steps' arithmetic is not
checked: only the answer counts, as in math benchmarks.

Three families in one prompt stream give mixed difficulty: ``add2`` (easy, many
all-correct groups), ``add3`` (medium), ``add5`` (hard: concise answers are mostly wrong,
long scratchpads break the format more often, many all-fail groups). Length varies among
correct answers (concise vs scratchpad, redundant steps, filler), so a length term has
something to act on. Problems are split into train / val / test by a hash of (a, b), so
the splits are disjoint and fixed forever.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

# ----------------------------------------------------------------------------- vocabulary

PAD, BOS, EOS = 0, 1, 2
CHARS = "0123456789+=#.;~"
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
    digits: int          # operands have up to this many digits
    weight: float        # share of the training prompt stream
    scratch_prob: float  # share of SFT examples written with a scratchpad


FAMILIES = (
    Family("add2", 2, 0.3, 0.3),
    Family("add3", 3, 0.4, 0.5),
    Family("add5", 5, 0.3, 0.7),
)
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}
WIDTH = max(f.digits for f in FAMILIES)
HARD_FAMILY = "add5"

# Overall, in the spirit of the original benchmark mix: the hard family is scored by
# greedy acc@1 and by pass@16 at T=1 (the AIME-style pass@k) and weighted highest.
OVERALL_WEIGHTS = {
    "add2/acc@1": 0.15,
    "add3/acc@1": 0.25,
    "add5/acc@1": 0.30,
    "add5/pass@16": 0.30,
}
PASS_K = 16

SPLITS = ("train", "val", "test")


def split_of(a: int, b: int) -> str:
    """Fixed disjoint split by hash: 60% train, 20% val, 20% test."""
    h = int.from_bytes(hashlib.blake2s(f"{a}+{b}".encode(), digest_size=4).digest(), "big")
    r = h % 10
    return "val" if r < 2 else "test" if r < 4 else "train"


@dataclass(frozen=True)
class Problem:
    family: str
    a: int
    b: int

    @property
    def prompt(self) -> str:
        # Operands right-aligned to a fixed width with leading zeros, so a column sits
        # at the same position in every family and the scratchpad is learnable.
        return f"{self.a:0{WIDTH}d}+{self.b:0{WIDTH}d}="

    @property
    def answer(self) -> int:
        return self.a + self.b


def sample_problem(family: Family, rng: random.Random, split: str = "train") -> Problem:
    hi = 10 ** family.digits - 1  # operands of up to ``digits`` digits
    while True:
        a, b = rng.randint(0, hi), rng.randint(0, hi)
        if split_of(a, b) == split:
            return Problem(family.name, a, b)


def heldout_set(family: str, split: str, size: int) -> list[Problem]:
    """A fixed list of distinct problems of one family from val or test (same every call)."""
    if split not in ("val", "test"):
        raise ValueError(f"held-out split must be 'val' or 'test', got {split!r}")
    fam = FAMILY_BY_NAME[family]
    rng = random.Random(f"heldout-{family}-{split}")
    n_pairs = 10 ** (2 * fam.digits)
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
    """The training prompt stream of one seed: mixed families, train split only."""

    def __init__(self, seed: int):
        self.rng = random.Random(f"prompts-{seed}")

    def next_batch(self, size: int) -> list[Problem]:
        weights = [f.weight for f in FAMILIES]
        fams = self.rng.choices(FAMILIES, weights=weights, k=size)
        return [sample_problem(f, self.rng, "train") for f in fams]


# ----------------------------------------------------------------------------- format

def column_steps(a: int, b: int) -> list[str]:
    """The scratchpad steps of a + b, least-significant column first."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={s}")
        carry = s // 10
    return steps


def render(steps: list[str], answer: str, filler: int = 0) -> str:
    body = "".join(s + ";" for s in steps)
    return body + "~" * filler + f"#{answer}."


_STEP = r"\d\+\d(?:\+1)?=\d{1,2}"
_RESPONSE = re.compile(rf"^(?:{_STEP};|~)*#(0|[1-9]\d*)\.$")


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


# ----------------------------------------------------------------------------- SFT corpus

@dataclass(frozen=True)
class CorpusNoise:
    """How the warm-start corpus is deliberately imperfect."""

    wrong_carry: float = 0.10     # a carry dropped in one column: a wrong answer
    redundant_step: float = 0.15  # one step written twice (correct but longer)
    max_filler: int = 3           # 0..max filler tokens, uniform (correct but longer)
    malformed_base: float = 0.01  # format breaks: base rate ...
    malformed_per_char: float = 0.0015  # ... plus this per response character


def sft_example(problem: Problem, family: Family, rng: random.Random,
                noise: CorpusNoise) -> str:
    """One warm-start response for ``problem`` (text, without EOS)."""
    a, b = problem.a, problem.b
    steps = column_steps(a, b)
    answer = a + b
    if rng.random() < noise.wrong_carry:
        answer, steps = _drop_one_carry(a, b, rng)
    use_scratch = rng.random() < family.scratch_prob
    steps = steps if use_scratch else []
    if steps and rng.random() < noise.redundant_step:
        i = rng.randrange(len(steps))
        steps = steps[:i + 1] + steps[i:]
    text = render(steps, str(answer), rng.randint(0, noise.max_filler))
    if rng.random() < noise.malformed_base + noise.malformed_per_char * len(text):
        text = _malform(text, rng)
    return text


def _drop_one_carry(a: int, b: int, rng: random.Random) -> tuple[int, list[str]]:
    """Carry-less error in one column that has a carry (or a digit slip if none)."""
    da, db = str(a)[::-1], str(b)[::-1]
    n = max(len(da), len(db))
    cols = [(int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0)
            for i in range(n)]
    carries, c = [], 0
    for x, y in cols:
        carries.append(c)
        c = (x + y + c) // 10
    with_carry = [i for i in range(n) if carries[i]]
    drop = rng.choice(with_carry) if with_carry else None
    steps, digits, carry = [], [], 0
    for i, (x, y) in enumerate(cols):
        cin = 0 if i == drop else carry
        s = x + y + cin
        steps.append(f"{x}+{y}{'+1' if cin else ''}={s}")
        digits.append(s % 10)
        carry = s // 10
    if carry:
        digits.append(carry)
    answer = int("".join(map(str, digits[::-1])))
    if drop is None:  # no carry to drop: slip the last digit instead
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


def sft_corpus(size: int, seed: int, noise: CorpusNoise = CorpusNoise()
               ) -> list[tuple[Problem, str]]:
    """``size`` (problem, response) pairs from the train split, deterministic in seed."""
    rng = random.Random(f"sft-{seed}")
    weights = [f.weight for f in FAMILIES]
    out = []
    for _ in range(size):
        fam = rng.choices(FAMILIES, weights=weights)[0]
        p = sample_problem(fam, rng, "train")
        out.append((p, sft_example(p, fam, rng, noise)))
    return out
