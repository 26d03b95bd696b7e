"""The budget ledger: what a task tree has spent and what its calls in flight hold.

A model call for a tree with a budget first *reserves* its worst case — its
input tokens plus the output it may produce — in one atomic step of the state
store (a SQLite transaction, a Redis Lua script), so parallel agents on many
machines can never together spend more than the budget. The output granted is
lowered to what the budget has left; a call that cannot get one output token
is refused. After the call the hold is *settled*: the actual usage is added to
the tree's spend and the rest released. A hold whose process died expires
after its ``ttl`` (the longest the call could have run).

``grant`` is the arithmetic, shared by the SQLite store and mirrored by the
Redis script (``redis_scripts.RESERVE``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FLOAT_SLACK = 1e-9  # of a token: 0.0075 / 1e-5 is 749.999…, and means 750


@dataclass(frozen=True)
class Ask:
    """One call's worst case: ``input`` tokens at ``in_price`` USD each (cache writes
    are the dearest input), and up to ``max_out`` output tokens at ``out_price``."""

    input: int
    max_out: int
    in_price: float = 0.0
    out_price: float = 0.0


@dataclass(frozen=True)
class Limits:
    tokens: int | None = None
    usd: float | None = None


@dataclass(frozen=True)
class Ledger:
    """A tree's spend and holds after a reserve; ``granted`` output tokens (0: refused)."""

    spent_tokens: int = 0
    spent_usd: float = 0.0
    held_tokens: int = 0
    held_usd: float = 0.0
    granted: int = 0


def grant(ask: Ask, limits: Limits, spent: tuple[int, float], held: tuple[int, float]) -> int:
    """The output tokens ``ask`` may reserve under ``limits`` (0: none, refuse the call)."""
    out = ask.max_out
    if limits.tokens is not None:
        out = min(out, limits.tokens - spent[0] - held[0] - ask.input)
    if limits.usd is not None:
        left = limits.usd - spent[1] - held[1] - ask.input * ask.in_price
        if left < 0:
            return 0
        if ask.out_price > 0:
            out = min(out, math.floor(left / ask.out_price + FLOAT_SLACK))
    return max(0, out)
