"""The one backoff policy: exponential delays, capped, jittered, and one log line.

Every retry loop (reconnects to RabbitMQ and Redis, model calls, webhooks,
task retries) takes its delays from a ``Backoff`` and says what it does with
``log_retry``: host, error class, the wait, the attempts left. A loop keeps
its own ``MAX_*_ATTEMPTS`` and its own policy constant beside it
(``RECONNECT = Backoff(first=0.2, cap=5.0)``); only the formula lives here.

The ceiling for attempt ``n`` (1, 2, …) is ``min(cap, first * factor ** (n - 1))``;
the jitter spreads clients that failed together (AWS's "Exponential Backoff
And Jitter" names the kinds):

- ``EQUAL``: between half the ceiling and the ceiling (the default: never
  much sooner than planned, never in step with another client);
- ``FULL``: anywhere from 0 to the ceiling (the most spread, some retries
  at once);
- ``DECORRELATED``: from ``first`` to three times the previous delay, capped
  (grows without a fixed schedule);
- ``NONE``: the ceiling itself, for delays a person reads or a schedule keys
  on (task retries: RabbitMQ's delay queues are bucketed by their delay).
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

FACTOR = 2.0  # each attempt's ceiling doubles
EQUAL_JITTER_FLOOR = 0.5  # EQUAL: at least this share of the ceiling
DECORRELATED_GROWTH = 3.0  # DECORRELATED: up to this many times the previous delay
SERVER_DELAY_SPREAD = 0.1  # server_delay: up to this share added to a server's wait


class Jitter(enum.StrEnum):
    """How a delay is drawn below its ceiling (see the module docstring)."""

    NONE = "none"
    EQUAL = "equal"
    FULL = "full"
    DECORRELATED = "decorrelated"


@dataclass(frozen=True)
class Backoff:
    """Delays (seconds) before retry ``attempt`` 1, 2, …: ``first`` doubling up to ``cap``."""

    first: float
    cap: float
    jitter: Jitter = Jitter.EQUAL
    factor: float = FACTOR

    def __post_init__(self) -> None:
        if self.first < 0 or self.cap < 0 or self.factor < 1:
            raise ValueError(f"a backoff needs first, cap >= 0 and factor >= 1: {self!r}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry ``attempt`` (attempts below 1 count as 1)."""
        exponent = max(0, attempt - 1)
        if self.first == 0:
            return 0.0
        try:
            grown = self.first * self.factor**exponent
        except OverflowError:  # a consumer riding out a day-long outage
            return self.cap
        return min(self.cap, grown)

    def next_delay(
        self, attempt: int, previous: float | None = None, rng: random.Random | None = None
    ) -> float:
        """The wait before retry ``attempt``; ``previous`` (the last wait) for DECORRELATED."""
        draw = (rng or _RANDOM).uniform
        if self.jitter is Jitter.DECORRELATED:
            low = min(self.first, self.cap)
            last = self.ceiling(attempt - 1) if previous is None else previous
            high = max(low, last * DECORRELATED_GROWTH)
            return min(self.cap, draw(low, high))
        ceiling = self.ceiling(attempt)
        if self.jitter is Jitter.FULL:
            return draw(0.0, ceiling)
        if self.jitter is Jitter.EQUAL:
            return ceiling * draw(EQUAL_JITTER_FLOOR, 1.0)
        return ceiling

    def delays(
        self, attempts: int | None = None, rng: random.Random | None = None
    ) -> Iterator[float]:
        """The waits before retries 1 … ``attempts`` (None: without end), in order."""
        previous: float | None = None
        attempt = 1
        while attempts is None or attempt <= attempts:
            previous = self.next_delay(attempt, previous, rng)
            yield previous
            attempt += 1


_RANDOM = random.Random()


def server_delay(
    seconds: float,
    cap: float,
    spread: float = SERVER_DELAY_SPREAD,
    rng: random.Random | None = None,
) -> float:
    """A server's own wait (``retry-after``) honoured: ``seconds``, at most ``cap``, plus up
    to ``spread`` of it, so clients told the same wait do not come back together."""
    wait = min(max(0.0, seconds), cap)
    return wait * (1.0 + (rng or _RANDOM).uniform(0.0, spread))


def log_retry(
    logger: logging.Logger,
    service: str,
    host: str,
    error: BaseException | str,
    delay: float,
    left: int | None,
    *,
    action: str = "retrying",
    during: str = "",
    note: str = "",
) -> None:
    """Log the one retry line, a warning: ``RabbitMQ at 127.0.0.1 (publisher):
    ConnectionResetError; reconnecting in 0.40s (2 attempts left)``. An exception is
    named by its class, a string as it is; ``left`` None (a loop bounded by time,
    not attempts) says ``note`` alone."""
    what = type(error).__name__ if isinstance(error, BaseException) else error
    if during:
        what = f"{what} during {during}"
    if left is not None:
        counted = f"{left} attempt{'' if left == 1 else 's'} left"
        note = f"{counted}, {note}" if note else counted
    tail = f" ({note})" if note else ""
    logger.warning("%s at %s: %s; %s in %.2fs%s", service, host, what, action, delay, tail)
