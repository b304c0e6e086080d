"""Evaluation of a policy on held-out problems: acc@1, pass@k, length, validity, Overall.

Greedy decoding gives acc@1, validity and greedy length for every family; T=1 sampling
with ``n_samples`` per problem on the hard family gives the unbiased pass@k (Chen et al.
2021) and the sampled length and validity. ``Overall`` weighs these as
``evals.tasks.OVERALL_WEIGHTS`` (see ``OVERALL.describe()``), in points (0-100). On the
transfer families (``families="transfer"``) Overall is ``TRANSFER_WEIGHTS`` over greedy
accuracy, and there is no pass@k.
Decoding runs on the model's device (its sampling generator too); grading on the CPU.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from evals.metrics import OverallSpec, mean_pass_at_k
from evals.tasks import (ANATOMY_PARTS, BOS, HARD_FAMILY, OVERALL_WEIGHTS, PASS_K,
                         TRANSFER_WEIGHTS, Problem, anatomy, decode, encode, families, grade,
                         heldout_set, oracle_length)
from trainers.local import engines
from trainers.local.model import TinyGPT, left_pad

OVERALL = OverallSpec(OVERALL_WEIGHTS)
TRANSFER_OVERALL = OverallSpec(TRANSFER_WEIGHTS)


@dataclass(frozen=True)
class EvalConfig:
    split: str = "val"
    size: int = 400            # problems per family, greedy
    pass_problems: int = 128   # hard-family problems sampled for pass@k
    n_samples: int = PASS_K    # samples per problem at T=1 (>= every k reported)
    max_response: int = 80  # testbed v3: two re-checks of a 6-digit sum fit
    batch: int = 1024
    seed: int = 1234           # sampling seed (fixed: every policy sees the same draws)


def _rollout(model: TinyGPT, problems: list[Problem], cfg: EvalConfig, temperature: float,
             generator: torch.Generator | None, engine: str = "fast", repeats: int = 1
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per problem: correct, valid, length (tokens incl. EOS). ``repeats``: runs of that
    many consecutive problems are the same one (the fast engine prefills it once)."""
    correct, valid, length = [], [], []
    shared = repeats if cfg.batch % repeats == 0 else 1  # a batch must not split a run
    decoded = _decode(model, [p.prompt for p in problems], cfg.max_response, temperature,
                      generator, engine, cfg.batch, shared)
    for p, (text, term, n) in zip(problems, decoded):
        g = grade(p, text, term)
        correct.append(g.correct)
        valid.append(g.valid)
        length.append(float(n))
    return np.array(correct), np.array(valid), np.array(length)


def _decode(model: TinyGPT, prefixes: list[str], max_new: int, temperature: float,
            generator: torch.Generator | None, engine: str = "fast", batch: int = 1024,
            group_size: int = 1) -> list[tuple[str, bool, int]]:
    """Continuations of BOS + each prefix, ``batch`` rows at a time: (text, terminated,
    tokens generated including EOS) per prefix."""
    device = _device(model)
    generate, _ = engines.select(engine)
    out = []
    for lo in range(0, len(prefixes), batch):
        ids, mask = left_pad([[BOS] + encode(x) for x in prefixes[lo:lo + batch]],
                             device=device)
        gen = generate(model, ids, mask, max_new, temperature, generator,
                       group_size=group_size)
        out += [(decode(t), bool(e), int(n)) for t, e, n in zip(
            gen.tokens.cpu().tolist(), gen.terminated.cpu().tolist(),
            gen.mask.sum(-1).cpu().tolist())]
    return out


def _device(model: TinyGPT) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(model: TinyGPT, cfg: EvalConfig = EvalConfig(), engine: str = "fast",
             which: str = "search") -> dict[str, float]:
    """Flat metrics dict: ``<family>/acc@1``, ``<family>/valid``, ``<family>/length``,
    ``<hard>/pass@k``, ``<hard>/t1_length``, ``<hard>/t1_valid``, and the aggregates
    ``overall``, ``acc@1``, ``valid``, ``length`` (means over families). ``engine``: one of
    trainers/local/engines.py (compiled, fast, reference); ``which``: the
    search families or the transfer ones (``<family>/pass@1`` and ``pass@16`` at T=1 for
    each, Overall over greedy and T=1 accuracy: evals.tasks.TRANSFER_WEIGHTS)."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    fams = families(which)
    for fam in fams:
        problems = heldout_set(fam.name, cfg.split, cfg.size)
        c, v, n = _rollout(model, problems, cfg, 0.0, None, engine)
        out[f"{fam.name}/acc@1"] = 100 * c.mean()
        out[f"{fam.name}/valid"] = 100 * v.mean()
        out[f"{fam.name}/length"] = n.mean()
    gen = torch.Generator(device=_device(model)).manual_seed(cfg.seed)
    if which == "search":
        ks = [k for k in (1, 4, 8, 16, 32) if k <= cfg.n_samples]
        out[f"{HARD_FAMILY}/t1_length"] = _sampled(model, HARD_FAMILY, cfg, gen, engine,
                                                   ks, out)
        spec = OVERALL
    else:
        # T=1 accuracy (pass@1 over n_samples draws) beside greedy: RL trains the T=1
        # policy, and on these families GRPO's greedy accuracy can fall while its T=1
        # accuracy rises (docs/testbed.md), so Overall weighs both.
        ks = [k for k in (1, 16) if k <= cfg.n_samples]
        for fam in fams:
            _sampled(model, fam.name, cfg, gen, engine, ks, out)
        spec = TRANSFER_OVERALL
    out["overall"] = spec.overall(out)
    _aggregate(out, fams)
    model.train(was_training)
    return {k: float(v) for k, v in out.items()}


def _sampled(model: TinyGPT, family: str, cfg: EvalConfig, gen: torch.Generator,
             engine: str, ks: list[int], out: dict) -> float:
    """``cfg.n_samples`` draws at T=1 on each of ``cfg.pass_problems`` held-out problems
    of ``family``: writes ``<family>/pass@k`` for ``ks`` and ``<family>/t1_valid`` into
    ``out`` and returns the draws' mean length."""
    probs = heldout_set(family, cfg.split, cfg.pass_problems)
    repeated = [p for p in probs for _ in range(cfg.n_samples)]
    c, v, n = _rollout(model, repeated, cfg, 1.0, gen, engine, cfg.n_samples)
    for k, val in mean_pass_at_k(c.reshape(len(probs), cfg.n_samples), ks).items():
        out[f"{family}/pass@{k}"] = 100 * val
    out[f"{family}/t1_valid"] = 100 * v.mean()
    return n.mean()


def _aggregate(out: dict, fams) -> None:
    for key in ("acc@1", "valid", "length"):
        out[key] = float(np.mean([out[f"{f.name}/{key}"] for f in fams]))


@torch.no_grad()
def testbed_profile(model: TinyGPT, split: str = "val", problems: int = 256,
                    group_size: int = 8, seed: int = 7, which: str = "search"
                    ) -> dict[str, dict[str, float]]:
    """What GRPO sees from ``model`` per family at T=1, in groups of ``group_size``:
    accuracy, format-invalid rate, all-fail / all-correct group shares, the mean and
    spread of response length among *correct* answers (what a length term acts on), the
    oracle (the shortest correct form's mean length) and, per part of a correct answer
    (evals.tasks.anatomy: restatement, steps, redundant steps, filler, re-checks, the
    answer), its mean tokens."""
    cfg = EvalConfig(split=split)
    gen = torch.Generator(device=_device(model)).manual_seed(seed)
    out = {}
    for fam in families(which):
        probs = heldout_set(fam.name, split, problems)
        repeated = [p for p in probs for _ in range(group_size)]
        texts, c, v, n = [], [], [], []
        decoded = _decode(model, [p.prompt for p in repeated], cfg.max_response, 1.0, gen,
                          "fast", cfg.batch, group_size)
        for p, (text, term, k) in zip(repeated, decoded):
            graded = grade(p, text, term)
            texts.append(text if graded.correct else None)
            c.append(graded.correct)
            v.append(graded.valid)
            n.append(float(k))
        c, v, n = np.array(c), np.array(v), np.array(n)
        groups = c.reshape(len(probs), group_size)
        parts = [anatomy(p, t) for p, t in zip(repeated, texts) if t is not None]
        row = {
            "t1_accuracy": 100 * c.mean(),
            "t1_invalid": 100 * (1 - v.mean()),
            "all_fail_groups": 100 * (groups.sum(1) == 0).mean(),
            "all_correct_groups": 100 * groups.all(1).mean(),
            "correct_length_mean": float(n[c].mean()) if c.any() else float("nan"),
            "correct_length_sd": float(n[c].std()) if c.any() else float("nan"),
            "oracle_length_mean": float(np.mean([oracle_length(p) for p in probs])),
        }
        for part in ANATOMY_PARTS:
            row[f"correct_{part}_tokens"] = (float(np.mean([a[part] for a in parts]))
                                             if parts else float("nan"))
        out[fam.name] = row
    return {f: {k: float(x) for k, x in d.items()} for f, d in out.items()}


# The re-checks right before the answer marker: whole ``=N;`` items (at the start, or
# after a step's ';' or filler), not the ``=n;`` that ends a column step.
_RECHECKS = re.compile(r"(?:^|(?<=[;~]))(?:=\d+;)+#")


# A scratchpad: the response's first item (after any restatement or filler) is a column
# step, ``d<op>d...=n;``.
_STEPS = re.compile(r"^(?:\d+[-+*]\d+;)?~*1?\d[-+*]\d")


def recheck_start(response: str) -> int | None:
    """Where the re-checks before ``#`` start in ``response`` (None: it has none)."""
    m = _RECHECKS.search(response)
    return m.start() if m else None


@torch.no_grad()
def checks_ablation(model: TinyGPT, split: str = "val", problems: int = 128,
                    max_response: int = EvalConfig.max_response, which: str = "search",
                    rechecks: bool = True) -> dict[str, dict[str, float]]:
    """Does ``model`` need its re-checks (``=N;`` before ``#``) and its scratchpad? Per
    family, greedy on ``problems`` held-out problems: its accuracy (``greedy_acc``), the
    share of its answers that re-check (``rechecked_pct``), and on those answers the
    accuracy as written (``rechecked_acc``) and when ``#`` is forced where the first
    re-check starts, the same policy answering after the same steps without them
    (``checks_cut_acc``); the share of its answers that write column steps
    (``scratch_pct``) and its accuracy on every problem when ``#`` is forced as the first
    token, the same policy answering directly (``direct_acc``). ``rechecks=False`` skips
    the re-check ablation's decode (its two keys are then absent)."""
    was_training = model.training
    model.eval()
    out = {}
    for fam in families(which):
        probs = heldout_set(fam.name, split, problems)
        natural = _decode(model, [p.prompt for p in probs], max_response, 0.0, None)
        graded = [grade(p, t, term).correct for p, (t, term, _) in zip(probs, natural)]
        cut = [(i, at) for i, (t, term, _) in enumerate(natural)
               if rechecks and term and (at := recheck_start(t)) is not None]
        forced = _decode(model, [probs[i].prompt + natural[i][0][:at] + "#" for i, at in cut],
                         max_response, 0.0, None) if cut else []
        # the forced prefix (at + 1 tokens) counts against the budget too
        cut_ok = [grade(probs[i], natural[i][0][:at] + "#" + t,
                        term and at + 1 + n <= max_response).correct
                  for (i, at), (t, term, n) in zip(cut, forced)]
        direct = _decode(model, [p.prompt + "#" for p in probs], max_response, 0.0, None)
        direct_ok = [grade(p, "#" + t, term and 1 + n <= max_response).correct
                     for p, (t, term, n) in zip(probs, direct)]
        nan = float("nan")
        out[fam.name] = {
            "greedy_acc": 100 * float(np.mean(graded)),
            "scratch_pct": 100 * float(np.mean([_STEPS.match(t) is not None
                                                for t, _, _ in natural])),
            "direct_acc": 100 * float(np.mean(direct_ok)),
        }
        if rechecks:
            out[fam.name].update({
                "rechecked_pct": 100 * len(cut) / len(probs),
                "rechecked_acc": (100 * float(np.mean([graded[i] for i, _ in cut]))
                                  if cut else nan),
                "checks_cut_acc": 100 * float(np.mean(cut_ok)) if cut else nan,
            })
    model.train(was_training)
    return out
