"""Token prices and the cost of one call.

Built-in list prices (USD per million tokens) by model family; the
``llm.prices`` setting adds or overrides entries, keyed by a model name or a
prefix of one. An unknown model is priced at the most expensive family and
logged once, so a USD budget never under-counts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from orchestra_cli.models import Usage
from orchestra_cli.settings import ModelPrice

log = logging.getLogger(__name__)

CACHE_WRITE_FACTOR = 1.25  # 5-minute cache writes cost 1.25 × input
CACHE_READ_FACTOR = 0.1
PER_TOKENS = 1_000_000

BUILTIN_PRICES: dict[str, ModelPrice] = {
    "claude-opus": ModelPrice(input=5.0, output=25.0),
    "claude-mythos": ModelPrice(input=15.0, output=75.0),
    "claude-fable": ModelPrice(input=3.0, output=15.0),
    "claude-sonnet": ModelPrice(input=3.0, output=15.0),
    "claude-haiku": ModelPrice(input=1.0, output=5.0),
}
FREE_PREFIXES = ("offline/",)  # the offline provider costs nothing


class PriceTable:
    """Looks a model's price up by exact name, then by the longest matching prefix."""

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self.prices = {**BUILTIN_PRICES, **(overrides or {})}
        self.fallback = max(self.prices.values(), key=lambda p: p.output)
        self._warned: set[str] = set()

    def price(self, model: str) -> ModelPrice | None:
        """The price of ``model``; None for free (offline) models."""
        if model.startswith(FREE_PREFIXES):
            return None
        if model in self.prices:
            return self.prices[model]
        matches = [key for key in self.prices if model.startswith(key)]
        if matches:
            return self.prices[max(matches, key=len)]
        if model not in self._warned:
            self._warned.add(model)
            log.warning(
                "no price for model %s; charging the highest known price — add it to llm.prices",
                model,
            )
        return self.fallback

    def cost(self, model: str, usage: Usage) -> float:
        """USD for ``usage`` on ``model``."""
        price = self.price(model)
        if price is None:
            return 0.0
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
        """``usage`` with its ``cost_usd`` filled in."""
        return usage.model_copy(update={"cost_usd": self.cost(model, usage)})
