"""Grading a math answer: the last ``\\boxed{}`` of a response against a ground truth.

The code lives in trainers/verl/runtime.py (every verl plugin embeds it, so grading in
verl's workers needs no POISE import); this module is its name on the POISE side. A
response is *valid* when its last ``\\boxed{...}`` (or ``\\fbox{...}``) holds a non-empty,
balanced, parsable answer; *correct* when that answer equals the ground truth under
math-verify (``\\boxed{1/2}`` = ``0.5`` = ``\\frac{1}{2}``), or, without math-verify (the
``verl`` extra installs it), under a fixed string normalization (``normalize_answer``),
which misses such equivalences; ``GRADER`` says which one is in use. Off the main thread
(verl's reward loop) math-verify runs in a small spawned process pool with a hard
timeout, because its timeouts use SIGALRM.
"""
from trainers.verl.runtime import (GRADER, MAX_ANSWER_CHARS, VERIFY_TIMEOUT_S,  # noqa: F401
                                   Grade, extract_boxed, grade, normalize_answer)
