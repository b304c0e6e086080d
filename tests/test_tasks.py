"""The task suite: strict format, disjoint splits, imperfect corpus, length variety,
transfer families, and verbosity a policy can drop (anatomy, oracle)."""
import random
import re
from collections import Counter

import pytest

from evals.tasks import (ALL_FAMILIES, FAMILIES, FAMILY_BY_NAME, OVERALL_WEIGHTS,
                         TRANSFER_FAMILIES, CorpusNoise, Problem, PromptStream, anatomy,
                         column_steps, decode, encode, grade, heldout_set, oracle_length,
                         render, restatement, sft_corpus, sft_example, split_of)


P = Problem("add3", 47, 385)


@pytest.mark.parametrize("text,valid,correct", [
    ("#432.", True, True),
    ("7+5=12;4+8+1=13;0+3+1=4;#432.", True, True),
    ("7+5=12;4+8+1=13;0+3+1=4;~~#432.", True, True),
    ("~7+5=12;~4+8+1=13;#432.", True, True),       # filler between steps is allowed
    ("7+5=13;#432.", True, True),                   # step arithmetic is not graded
    ("#431.", True, False),
    ("#0432.", False, False),                       # leading zero
    ("#432", False, False),                         # no terminator
    ("432.", False, False),                         # no marker
    ("##432.", False, False),
    ("#432.#", False, False),                       # text after the terminator
    ("#432.0", False, False),
    ("7+5=12#432.", False, False),                  # step without ';'
    ("7+=12;#432.", False, False),                  # malformed step
    ("", False, False),
    ("00047+00385;7+5=12;#432.", True, True),       # restated first
    ("7+5=12;00047+00385;#432.", False, False),     # a restatement only comes first
    ("=432;=432;#432.", True, True),                # re-checked twice
    ("=432;7+5=12;#432.", False, False),            # checks come after the steps
    ("~=431;#432.", True, True),                    # a check is not graded either
    ("00047+00385;~7+5=12;=432;#432.", True, True),
])
def test_strict_parser(text, valid, correct):
    g = grade(P, text)
    assert (g.valid, g.correct) == (valid, correct)


def test_unterminated_response_is_invalid_even_if_well_formed():
    assert grade(P, "#432.", terminated=False).valid is False


def test_scratchpad_steps_are_right():
    assert column_steps(47, 385) == ["7+5=12", "4+8+1=13", "0+3+1=4"]
    assert column_steps(99999, 1) == ["9+1=10", "9+0+1=10", "9+0+1=10", "9+0+1=10",
                                      "9+0+1=10"]
    for a, b in [(12, 34), (999, 999), (50505, 49495)]:
        text = render(column_steps(a, b), str(a + b))
        assert grade(Problem("add5", a, b), text).correct


def test_transfer_families_steps_and_answers():
    sub = Problem("sub2", 4025, 1937)   # (a 2-digit family; the steps are per column)
    assert sub.prompt == "04025-01937=" and sub.answer == 2088
    assert column_steps(4025, 1937, "-") == ["15-7=8", "12-3-1=8", "10-9-1=0", "4-1-1=2"]
    mul = Problem("mul3", 478, 6)
    assert mul.prompt == "00478*00006=" and mul.answer == 2868
    assert column_steps(478, 6, "*") == ["8*6=48", "7*6+4=46", "4*6+4=28"]
    rng = random.Random(0)
    for fam in TRANSFER_FAMILIES:
        for _ in range(300):
            p = PromptStream.__new__(PromptStream)  # noqa: F841 - sample directly below
            from evals.tasks import sample_problem
            q = sample_problem(fam, rng)
            assert q.answer >= 0 and (fam.op != "*" or q.b <= 9)
            assert grade(q, render(column_steps(q.a, q.b, fam.op), str(q.answer))).correct
            assert grade(q, render([], str(q.answer))).correct
    # the RL prompt streams: search families only, or transfer families only
    assert {p.family for p in PromptStream(0).next_batch(300)} == {f.name for f in FAMILIES}
    assert {p.family for p in PromptStream(0, "transfer").next_batch(300)} == {
        f.name for f in TRANSFER_FAMILIES}
    with pytest.raises(ValueError, match="unknown family set"):
        PromptStream(0, "everything")


def test_anatomy_splits_a_response_and_the_oracle_is_the_shortest_correct_form():
    p = Problem("add3", 47, 385)
    text = "00047+00385;7+5=12;4+8+1=13;4+8+1=13;0+3+1=4;~~=432;=432;#432."
    parts = anatomy(p, text)
    assert parts == {"restate": 12, "steps": 7 + 9 + 8, "redundant": 9, "filler": 2,
                     "checks": 10, "answer": 6}
    assert sum(parts.values()) == len(text) + 1    # + EOS
    assert anatomy(p, "#432.") == {"restate": 0, "steps": 0, "redundant": 0, "filler": 0,
                                   "checks": 0, "answer": 6}
    assert oracle_length(p) == len("#432.") + 1 == 6
    assert anatomy(p, "#432") is None              # invalid: no anatomy
    # a repeated column that the problem has twice is not redundant
    q = Problem("add3", 44, 44)
    assert anatomy(q, "4+4=8;4+4=8;#88.")["redundant"] == 0
    assert restatement(Problem("mul3", 478, 6)) == "00478*00006"


def test_the_corpus_carries_measured_verbosity_on_every_family():
    noise = CorpusNoise()
    rng = random.Random(1)
    from evals.tasks import sample_problem
    for fam in ALL_FAMILIES:
        parts = []
        for _ in range(1500):
            p = sample_problem(fam, rng)
            t = sft_example(p, fam, rng, noise)
            if grade(p, t).correct:
                parts.append(anatomy(p, t))
        restated = sum(a["restate"] > 0 for a in parts) / len(parts)
        checked = sum(a["checks"] > 0 for a in parts) / len(parts)
        scratch = sum(a["steps"] > 0 for a in parts) / len(parts)
        assert abs(restated - noise.restate) < 0.06, (fam.name, restated)
        assert abs(checked - noise.check) < 0.06, (fam.name, checked)
        assert abs(scratch - fam.scratch_prob) < 0.08, (fam.name, scratch)


def test_encode_decode_roundtrip_and_unknown_char():
    text = "7+5=12;~#12."
    assert decode(encode(text) + [2, 5, 6]) == text  # stops at EOS
    with pytest.raises(ValueError, match="not in the task vocabulary"):
        encode("12a")


def test_prompts_have_fixed_width():
    lens = {len(Problem(f.name, 10 ** f.digits - 1, 7).prompt)
            for f in ALL_FAMILIES}
    assert len(lens) == 1


def test_splits_are_disjoint_and_fixed():
    for fam in ALL_FAMILIES:
        val = {(p.a, p.b) for p in heldout_set(fam.name, "val", 300)}
        test = {(p.a, p.b) for p in heldout_set(fam.name, "test", 300)}
        assert not val & test
        assert all(split_of(a, b, fam.op) == "val" for a, b in val)
        assert heldout_set(fam.name, "val", 50) == heldout_set(fam.name, "val", 50)
    train = [p for p in PromptStream(0).next_batch(500)]
    assert all(split_of(p.a, p.b) == "train" for p in train)
    with pytest.raises(ValueError):
        heldout_set("add2", "train", 10)


def test_heldout_sets_are_large_enough_for_one_point_standard_error():
    # SE of an accuracy near 50% with n problems is 50/sqrt(n) points; about 1 at n=2000.
    for fam in ALL_FAMILIES:
        n = len(heldout_set(fam.name, "test", 2000))
        # sub2 has 5,050 problems in all (a >= b), so its test split holds ~970: SE 1.6
        assert 50 / n ** 0.5 <= (1.2 if fam in FAMILIES else 1.7), (fam.name, n)


def test_prompt_stream_mixes_families_and_is_seeded():
    a = PromptStream(3).next_batch(600)
    assert a == PromptStream(3).next_batch(600)
    assert a != PromptStream(4).next_batch(600)
    counts = Counter(p.family for p in a)
    for fam in FAMILIES:
        assert abs(counts[fam.name] / 600 - fam.weight) < 0.07


def test_sft_corpus_is_imperfect_and_varies_in_length_among_correct_answers():
    corpus = sft_corpus(4000, seed=0)
    graded = [(p, r, grade(p, r)) for p, r in corpus]
    invalid = [g for _, _, g in graded if not g.valid]
    wrong = [g for _, _, g in graded if g.valid and not g.correct]
    assert 0.02 < len(invalid) / len(corpus) < 0.15
    assert 0.05 < len(wrong) / len(corpus) < 0.2
    # the hard family breaks the format more often (longer responses)
    rate = {f.name: sum(not g.valid for p, _, g in graded if p.family == f.name) /
            max(1, sum(p.family == f.name for p, _, _ in graded)) for f in FAMILIES}
    assert rate["add5"] > rate["add2"]
    # among correct answers of one family, lengths vary (concise/scratchpad/filler/redundant)
    for fam in FAMILIES:
        lengths = {len(r) for p, r, g in graded if p.family == fam.name and g.correct}
        assert len(lengths) >= 6, (fam.name, sorted(lengths))
    assert sft_corpus(50, seed=0) == corpus[:50]


def test_no_noise_corpus_is_all_correct():
    clean = CorpusNoise(wrong_carry=0, redundant_step=0, max_filler=0, malformed_base=0,
                        malformed_per_char=0, restate=0, check=0)
    assert all(grade(p, r).correct for p, r in sft_corpus(500, seed=1, noise=clean))


def test_overall_weights_favour_the_hard_family():
    hard = sum(w for k, w in OVERALL_WEIGHTS.items() if k.startswith("add5"))
    assert abs(sum(OVERALL_WEIGHTS.values()) - 1) < 1e-9 and hard > 0.5
    assert set(k.split("/")[0] for k in OVERALL_WEIGHTS) <= set(FAMILY_BY_NAME)


def test_corpus_overrides_change_the_mix_and_the_scratchpad_share():
    from evals.tasks import corpus_families

    fams = corpus_families({"add2": {"sft_weight": 0.8, "scratch_prob": 0.3}})
    assert [f.name for f in fams] == [f.name for f in ALL_FAMILIES]
    add2 = next(f for f in fams if f.name == "add2")
    assert (add2.sft_weight, add2.scratch_prob) == (0.8, 0.3)
    assert corpus_families({}) == ALL_FAMILIES == corpus_families(None)
    clean = CorpusNoise(wrong_carry=0, redundant_step=0, max_filler=0, malformed_base=0,
                        malformed_per_char=0, check=0)
    pairs = sft_corpus(4000, seed=3, noise=clean, families=fams)
    add2_pairs = [(p, r) for p, r in pairs if p.family == "add2"]
    share = 0.8 / (0.8 + sum(f.sft_weight for f in ALL_FAMILIES if f.name != "add2"))
    assert abs(len(add2_pairs) / len(pairs) - share) < 0.03
    scratch = sum(not r.startswith("#") for _, r in add2_pairs) / len(add2_pairs)
    assert abs(scratch - 0.3) < 0.04
    # the default mix is the corpus it always was
    assert sft_corpus(300, seed=3) == sft_corpus(300, seed=3, families=corpus_families())


@pytest.mark.parametrize("overrides,message", [
    ({"add9": {}}, "unknown family 'add9'"),
    ({"add2": {"digits": 3}}, "unknown field 'digits'"),
    ({"add2": {"scratch_prob": 1.5}}, "in [0, 1]"),
    ({"add2": {"sft_weight": -1}}, ">= 0"),
    ({"add2": {"sft_weight": "x"}}, "must be a number"),
    ({"add2": 0.5}, "must map fields to numbers"),
    ({f.name: {"sft_weight": 0} for f in ALL_FAMILIES}, "every family's sft_weight is 0"),
])
def test_corpus_overrides_refuse_what_they_cannot_mean(overrides, message):
    from evals.tasks import corpus_families

    with pytest.raises(ValueError, match=re.escape(message)):
        corpus_families(overrides)
