"""The trainer's engines by name: what computes a generation and the trained log-probs.

- ``compiled`` (the default, trainers/local/compiled.py): the fast engine with its decode
  step compiled ahead of time, once ``compiled.prepare`` has loaded it (eagerly until
  then, and the training result says why);
- ``fast`` (trainers/local/engine.py): shared prefills, compacted decoding, length buckets;
- ``reference`` (trainers/local/model.py): the round-1 engine, kept for the paired checks
  of ``python -m trainers.local.bench --engines`` and the golden run.
"""
from __future__ import annotations

from trainers.local import compiled, engine
from trainers.local import model as reference
from trainers.local.model import TinyGPT

ENGINES = ("reference", "fast", "compiled")


def select(name: str):
    """(generate, response_logprobs) of engine ``name``, both taking ``group_size`` (the
    reference engine ignores it: it recomputes every row's prompt)."""
    if name == "fast":
        return engine.generate, engine.response_logprobs
    if name == "compiled":
        return compiled.generate, engine.response_logprobs
    if name != "reference":
        raise ValueError(f"unknown engine {name!r} (one of {', '.join(ENGINES)})")

    def ref_generate(*args, group_size: int = 1, **kwargs):
        return reference.generate(*args, **kwargs)

    def ref_logprobs(*args, group_size: int = 1, **kwargs):
        return reference.response_logprobs(*args, **kwargs)
    return ref_generate, ref_logprobs


def compiled_fallback(model: TinyGPT) -> str | None:
    """Why the compiled engine would decode ``model`` eagerly; None when it will not."""
    if next(model.parameters()).device.type != "cpu":
        return "the compiled decode step is built for the CPU"
    if compiled.ready(model):
        return None
    return compiled.fallbacks().get(compiled.package_key(model.cfg),
                                    "compiled.prepare() was not called for this model")
