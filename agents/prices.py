"""What an LLM call costs: a price table per model, USD per million tokens.

The defaults are providers' public list prices for standard (non-batch, uncached) input
and output tokens, as published on ``PRICES_AS_OF``; they change, so check your
provider's pricing page. ``POISE_PRICES`` names a JSON file that overrides or extends
them: ``{"my-model": {"input": 0.5, "output": 1.5}}`` (USD per million tokens). A model
is matched by its name without the provider prefix, exactly or by the longest table key
it starts with (``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini``). A model not in the table
(a local server's, say) is *unpriced*: its tokens are counted, its cost is 0 and marked
so, and ``--max-cost`` cannot cap it (``--max-llm-tokens`` can).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

PRICES_AS_OF = "2025-08-15"

# model -> (input, output) USD per 1M tokens, public list prices on PRICES_AS_OF
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "claude-opus-4": (15.00, 75.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
}


class PriceError(ValueError):
    """``POISE_PRICES`` cannot be read."""


@lru_cache(maxsize=8)
def _table(path: str | None) -> dict[str, tuple[float, float]]:
    table = dict(DEFAULT_PRICES)
    if not path:
        return table
    try:
        data = json.loads(Path(path).read_text())
        for name, p in data.items():
            table[str(name)] = (float(p["input"]), float(p["output"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise PriceError(f"POISE_PRICES={path}: expected a JSON object "
                         f'{{"model": {{"input": USD, "output": USD}}}} per million tokens '
                         f"({type(e).__name__}: {e})") from None
    return table


def price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per million tokens of ``model`` (``provider:name`` or a bare
    name), or None when it is not in the table."""
    table = _table(os.environ.get("POISE_PRICES") or None)
    name = model.split(":", 1)[-1].strip().lower()
    if name in table:
        return table[name]
    keys = [k for k in table if name.startswith(k)]
    return table[max(keys, key=len)] if keys else None


def cost(model: str, input_tokens: int, output_tokens: int) -> tuple[float, bool]:
    """(USD, priced?) of one call."""
    p = price(model)
    if p is None:
        return 0.0, False
    return (input_tokens * p[0] + output_tokens * p[1]) / 1e6, True


__all__ = ["price", "cost", "DEFAULT_PRICES", "PRICES_AS_OF", "PriceError"]
