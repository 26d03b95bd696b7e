"""Token prices and the cost of one call.

The built-in table is the published Claude API price list of
``PRICES_AS_OF`` (USD per million tokens: base input, 5-minute cache writes,
cache hits, output), keyed by model id or a prefix of one; the ``llm.prices``
setting adds or overrides entries. A model the table does not know is counted
in tokens and its cost reported as unknown (``Usage.unpriced_calls``) rather
than guessed — and a USD budget refuses to call it, since it cannot be kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from orchestra_cli.models import Usage
from orchestra_cli.settings import ModelPrice

log = logging.getLogger(__name__)

PRICES_AS_OF = "2026-10-24"  # the pricing page's table, read on this date
PRICES_SOURCE = "https://platform.claude.com/docs/en/about-claude/pricing"
CACHE_WRITE_FACTOR = 1.25  # an override without cache prices: 5-minute writes cost 1.25 × input
CACHE_READ_FACTOR = 0.1
PER_TOKENS = 1_000_000


def _p(inp: float, write: float, read: float, out: float) -> ModelPrice:
    return ModelPrice(input=inp, output=out, cache_write=write, cache_read=read)


# Longest prefix wins: "claude-sonnet-5" prices claude-sonnet-5 and its dated ids,
# "claude-sonnet-5-5" its successor. Haiku 5.5 is the ≤100k-token prompt tier.
BUILTIN_PRICES: dict[str, ModelPrice] = {
    "claude-fable-5-1": _p(10.0, 12.5, 0.25, 50.0),
    "claude-mythos-5-1": _p(10.0, 12.5, 0.25, 50.0),
    "claude-fable-5": _p(10.0, 12.5, 1.0, 50.0),
    "claude-mythos-5": _p(10.0, 12.5, 1.0, 50.0),
    "claude-opus-5-5": _p(4.0, 5.0, 0.20, 20.0),
    "claude-opus-5": _p(5.0, 6.25, 0.50, 25.0),
    "claude-opus-4-8": _p(5.0, 6.25, 0.50, 25.0),
    "claude-opus-4-7": _p(5.0, 6.25, 0.50, 25.0),
    "claude-opus-4-6": _p(5.0, 6.25, 0.50, 25.0),
    "claude-opus-4-5": _p(5.0, 6.25, 0.50, 25.0),
    "claude-opus-4-1": _p(15.0, 18.75, 1.50, 75.0),
    "claude-opus-4": _p(15.0, 18.75, 1.50, 75.0),
    "claude-sonnet-5-5": _p(2.0, 2.5, 0.10, 10.0),
    "claude-sonnet-5": _p(2.0, 2.5, 0.20, 10.0),
    "claude-sonnet-4": _p(3.0, 3.75, 0.30, 15.0),
    "claude-haiku-5-5": _p(0.10, 0.125, 0.01, 0.50),
    "claude-haiku-4-5": _p(1.0, 1.25, 0.10, 5.0),
}
# Priced by prompt length: a request whose prompt (input, cache reads and writes)
# is over the threshold pays these rates on every token, output included.
LONG_PROMPT: dict[str, tuple[int, ModelPrice]] = {
    "claude-haiku-5-5": (100_000, _p(0.50, 0.625, 0.05, 2.50)),
}
FREE_PREFIXES = ("offline/",)  # the offline provider costs nothing


class PriceTable:
    """Looks a model's price up by exact name, then by the longest matching prefix."""

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self.prices = {**BUILTIN_PRICES, **(overrides or {})}
        self.overridden = set(overrides or {})
        self._warned: set[str] = set()

    def known(self, model: str) -> bool:
        return model.startswith(FREE_PREFIXES) or self._lookup(model) is not None

    def _lookup(self, model: str) -> ModelPrice | None:
        if model in self.prices:
            return self.prices[model]
        matches = [key for key in self.prices if model.startswith(key)]
        return self.prices[max(matches, key=len)] if matches else None

    def _long_tier(self, model: str, prompt: int | None = None) -> ModelPrice | None:
        """The long-prompt rates of ``model`` (for ``prompt`` tokens; None: the worst case)."""
        if model in self.overridden:
            return None
        for key, (threshold, long) in LONG_PROMPT.items():
            if model.startswith(key) and (prompt is None or prompt > threshold):
                return long
        return None

    def price(self, model: str) -> ModelPrice | None:
        """The price of ``model``; None for free (offline) and unknown models."""
        if model.startswith(FREE_PREFIXES):
            return None
        found = self._lookup(model)
        if found is None and model not in self._warned:
            self._warned.add(model)
            log.warning(
                "no price for model %s (built-in table of %s); its cost is reported as "
                "unknown — add it to llm.prices",
                model,
                PRICES_AS_OF,
            )
        return found

    def rates(self, model: str) -> tuple[float, float]:
        """USD per token, worst case: (the dearest input — a cache write — , output).

        (0, 0) for a free model; raises KeyError for an unknown one."""
        if model.startswith(FREE_PREFIXES):
            return 0.0, 0.0
        price = self._lookup(model)
        if price is None:
            raise KeyError(model)
        long = self._long_tier(model)
        if long is not None:
            price = long
        write = price.cache_write if price.cache_write is not None else price.input * 1.25
        return max(price.input, write) / PER_TOKENS, price.output / PER_TOKENS

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD for ``usage`` on ``model``; None when the model has no price."""
        if model.startswith(FREE_PREFIXES):
            return 0.0
        price = self.price(model)
        if price is None:
            return None
        prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
        long = self._long_tier(model, prompt)
        if long is not None:
            price = long
        cache_write = price.cache_write
        if cache_write is None:
            cache_write = price.input * CACHE_WRITE_FACTOR
        cache_read = price.cache_read
        if cache_read is None:
            cache_read = price.input * CACHE_READ_FACTOR
        total = (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + usage.cache_write_tokens * cache_write
            + usage.cache_read_tokens * cache_read
        )
        return round(total / PER_TOKENS, 8)

    def charge(self, model: str, usage: Usage) -> Usage:
        """``usage`` with its ``cost_usd`` filled in (``unpriced_calls`` for an unknown model)."""
        cost = self.cost(model, usage)
        if cost is None:
            return usage.model_copy(update={"cost_usd": 0.0, "unpriced_calls": usage.calls})
        return usage.model_copy(update={"cost_usd": cost})
