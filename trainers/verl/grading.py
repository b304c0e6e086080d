"""Grading a math answer: the last ``\\boxed{}`` of a response against a ground truth,
and verl's reward function ``compute_score`` (``reward.custom_reward_function``).

Self-contained (standard library, math-verify when installed): trainers/verl/runtime.py
imports it and every verl plugin inlines its text, so grading in verl's workers needs no
POISE import. A response is *valid* when its last ``\\boxed{...}`` (or ``\\fbox{...}``)
holds a non-empty, balanced, parsable answer; *correct* when that answer equals the
ground truth under math-verify (``\\boxed{1/2}`` = ``0.5`` = ``\\frac{1}{2}``), or,
without math-verify (the ``verl`` extra installs it), under a fixed string normalization
(``normalize_answer``), which misses such equivalences; ``GRADER`` says which one is in
use. Off the main thread (verl's reward loop) math-verify runs in a small spawned process
pool with a hard timeout, because its timeouts use SIGALRM. ``compute_score`` returns the
outcome code as the score (1 correct, 0 valid but wrong, -1 invalid); ``acc``, ``valid``,
``length`` (characters: verl gives the reward function text), ``pred`` and ``source`` are
extra info.
"""
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

try:
    import math_verify  # noqa: F401
    GRADER = "math-verify"
except ImportError:  # documented fallback: a normalized string compare
    GRADER = "string"

OUTCOME_CORRECT, OUTCOME_WRONG, OUTCOME_INVALID = 1.0, 0.0, -1.0

VERIFY_TIMEOUT_S = 10.0
MAX_ANSWER_CHARS = 1000
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


@dataclass(frozen=True)
class Grade:
    correct: bool
    valid: bool
    pred: str  # the boxed answer ("" when there is none)


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces,
    stripped; None when there is none, it is unbalanced or empty."""
    starts = [m.end() for m in _BOX.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            content = text[start:i - 1].strip()
            return content or None
    return None


def normalize_answer(answer: str) -> str:
    """The fallback's normalization: no spaces, ``$``, ``\\left``/``\\right``, thin
    spaces, ``\\text{}`` wrappers or trailing period; ``\\dfrac``/``\\tfrac`` -> ``\\frac``."""
    s = answer.strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                     ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("$", "")):
        s = s.replace(old, new)
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def _gold_text(ground_truth: str) -> str:
    gt = str(ground_truth).strip()
    return gt if _BOX.search(gt) else f"\\boxed{{{gt}}}"


def _verify(gold_text: str, answer: str, timeouts: bool) -> tuple[bool, bool]:
    """(parsable, equal) with math-verify; ``timeouts`` uses its SIGALRM guards."""
    from math_verify import parse, verify

    parse_timeout = 5 if timeouts else None
    pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=parse_timeout)
    if not pred:
        return False, False
    gold = parse(gold_text, parsing_timeout=parse_timeout)
    if not gold:  # an unparsable ground truth: compare the strings
        return True, normalize_answer(answer) == normalize_answer(extract_boxed(gold_text) or "")
    return True, bool(verify(gold, pred, timeout_seconds=5 if timeouts else None))


def _verify_in_child(gold_text: str, answer: str) -> tuple[bool, bool]:
    return _verify(gold_text, answer, timeouts=True)  # a pool process runs in its main thread


_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _grading_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            import multiprocessing

            _pool = ProcessPoolExecutor(max_workers=2,
                                        mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _verify_off_main_thread(gold_text: str, answer: str) -> tuple[bool, bool]:
    """math-verify's timeouts use SIGALRM, which works only in a main thread, and verl's
    reward loop grades from worker threads: there each grading runs in a small spawned
    process pool with a hard timeout (a timeout grades as wrong)."""
    global _pool
    try:
        future = _grading_pool().submit(_verify_in_child, gold_text, answer)
        return future.result(timeout=VERIFY_TIMEOUT_S)
    except FuturesTimeout:
        future.cancel()
        return True, False  # parsed (it got to verify) but too slow: graded wrong
    except BrokenProcessPool:
        # The pool could not start or died (e.g. a host that forbids spawning): grade
        # here without math-verify's SIGALRM guards rather than stop training.
        with _pool_lock:
            _pool = None
        return _verify(gold_text, answer, timeouts=False)


def grade(solution_str: str, ground_truth: str) -> Grade:
    """Valid: the last ``\\boxed{}`` holds a non-empty, balanced, parsable answer; correct:
    it equals the ground truth under math-verify (``1/2`` = ``0.5`` = ``\\frac{1}{2}``), or
    without math-verify under ``normalize_answer``. An invalid answer is never correct."""
    answer = extract_boxed(solution_str or "")
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return Grade(correct=False, valid=False, pred="")
    if GRADER == "string":
        gold = extract_boxed(_gold_text(ground_truth)) or ""
        return Grade(correct=normalize_answer(answer) == normalize_answer(gold),
                     valid=bool(normalize_answer(answer)), pred=answer)
    gold_text = _gold_text(ground_truth)
    if threading.current_thread() is threading.main_thread():
        parsable, equal = _verify(gold_text, answer, timeouts=True)
    else:
        parsable, equal = _verify_off_main_thread(gold_text, answer)
    return Grade(correct=parsable and equal, valid=parsable, pred=answer)


def outcome_code(correct: bool, valid: bool) -> float:
    """The score ``compute_score`` returns: 1 correct, 0 valid but wrong, -1 invalid."""
    if correct and not valid:
        raise ValueError("an answer cannot be correct and invalid")
    return OUTCOME_CORRECT if correct else OUTCOME_WRONG if valid else OUTCOME_INVALID


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl's reward-function signature -> {score (outcome code), acc, valid, length
    (characters: verl gives the reward function text), pred (the boxed answer, for verl's
    maj@k), source}; verl reports the numeric extras as ``val-core/<source>/acc/...`` and
    ``val-aux/<source>/...``."""
    g = grade(solution_str, ground_truth)
    return {"score": outcome_code(g.correct, g.valid), "acc": float(g.correct),
            "valid": float(g.valid), "length": float(len(solution_str or "")),
            "pred": g.pred, "source": str(data_source)}


__all__ = ["GRADER", "OUTCOME_CORRECT", "OUTCOME_WRONG", "OUTCOME_INVALID",
           "VERIFY_TIMEOUT_S", "MAX_ANSWER_CHARS", "Grade", "extract_boxed",
           "normalize_answer", "grade", "outcome_code", "compute_score"]
