"""The one backoff policy: ceilings double up to the cap, each jitter stays in its range."""

from __future__ import annotations

import logging
import random
from itertools import islice
from typing import Any

import pytest

from orchestra_cli.backoff import Backoff, Jitter, log_retry, server_delay

SAMPLES = 2000


def _draws(policy: Backoff, attempt: int, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [policy.next_delay(attempt, rng=rng) for _ in range(SAMPLES)]


def test_the_ceiling_doubles_from_first_and_stops_at_the_cap() -> None:
    policy = Backoff(first=0.2, cap=5.0, jitter=Jitter.NONE)
    assert [policy.ceiling(n) for n in range(1, 8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert policy.ceiling(0) == policy.ceiling(-3) == 0.2  # below 1 counts as the first
    assert [policy.next_delay(n) for n in (1, 2, 9)] == [0.2, 0.4, 5.0]  # no jitter: exact


def test_a_day_long_outage_stays_at_the_cap_without_overflowing() -> None:
    policy = Backoff(first=0.2, cap=5.0)
    assert policy.ceiling(100_000) == 5.0
    assert 2.5 <= policy.next_delay(100_000) <= 5.0


@pytest.mark.parametrize("attempt", [1, 3, 12])
def test_equal_jitter_stays_between_half_the_ceiling_and_the_ceiling(attempt: int) -> None:
    policy = Backoff(first=0.5, cap=30.0, jitter=Jitter.EQUAL)
    ceiling = policy.ceiling(attempt)
    draws = _draws(policy, attempt)
    assert all(ceiling / 2 <= d <= ceiling for d in draws)
    assert max(draws) - min(draws) > ceiling / 2 * 0.9  # spread over the whole range


@pytest.mark.parametrize("attempt", [1, 4, 20])
def test_full_jitter_stays_between_zero_and_the_ceiling(attempt: int) -> None:
    policy = Backoff(first=1.0, cap=8.0, jitter=Jitter.FULL)
    ceiling = policy.ceiling(attempt)
    draws = _draws(policy, attempt)
    assert all(0 <= d <= ceiling for d in draws)
    assert min(draws) < ceiling * 0.05 and max(draws) > ceiling * 0.95


def test_decorrelated_jitter_grows_from_the_last_delay_and_never_passes_the_cap() -> None:
    policy = Backoff(first=0.1, cap=2.0, jitter=Jitter.DECORRELATED)
    rng = random.Random(3)
    previous = None
    for attempt in range(1, SAMPLES):
        delay = policy.next_delay(attempt, previous, rng)
        low, high = 0.1, 3 * (0.1 if previous is None else previous)
        assert 0.1 <= delay <= 2.0
        assert low <= delay <= max(low, high)
        previous = delay
    waits = list(islice(policy.delays(rng=random.Random(5)), 200))
    assert max(waits) > 1.5  # it does climb towards the cap


def test_delays_yields_one_wait_per_attempt_in_order() -> None:
    policy = Backoff(first=1.0, cap=60.0, jitter=Jitter.NONE)
    assert list(policy.delays(5)) == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert len(list(Backoff(first=0.1, cap=1.0).delays(8))) == 8
    assert list(islice(policy.delays(), 8))[-1] == 60.0  # without end: capped


def test_a_zero_first_delay_never_waits() -> None:
    for jitter in Jitter:
        assert list(Backoff(first=0.0, cap=30.0, jitter=jitter).delays(6)) == [0.0] * 6


def test_a_policy_that_cannot_work_is_refused_when_made() -> None:
    with pytest.raises(ValueError, match="first, cap"):
        Backoff(first=-1.0, cap=5.0)
    with pytest.raises(ValueError, match="factor"):
        Backoff(first=1.0, cap=5.0, factor=0.5)


def test_a_servers_wait_is_honoured_up_to_the_cap_plus_a_tenth_at_most() -> None:
    rng = random.Random(11)
    waits = [server_delay(2.0, cap=60.0, rng=rng) for _ in range(SAMPLES)]
    assert all(2.0 <= w <= 2.2 for w in waits) and max(waits) > 2.15
    assert 60.0 <= server_delay(3600.0, cap=60.0) <= 66.0  # not obeyed blindly
    assert server_delay(-1.0, cap=60.0) == 0.0


def _line(caplog: pytest.LogCaptureFixture, *args: Any, **kwargs: Any) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tests.backoff"):
        log_retry(logging.getLogger("tests.backoff"), *args, **kwargs)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    return record.getMessage()


def test_the_retry_line_names_host_error_class_wait_and_attempts_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = ConnectionResetError("x")
    line = _line(caplog, "RabbitMQ", "127.0.0.1 (pub)", error, 0.4, 2, action="reconnecting")
    assert line == (
        "RabbitMQ at 127.0.0.1 (pub): ConnectionResetError; reconnecting in 0.40s (2 attempts left)"
    )
    assert _line(caplog, "Redis", "h", "TimeoutError", 1.0, 1, during="claim").endswith(
        "TimeoutError during claim; retrying in 1.00s (1 attempt left)"
    )
    assert _line(caplog, "RabbitMQ", "h", OSError(), 5.0, None, note="down 12s").endswith(
        "OSError; retrying in 5.00s (down 12s)"
    )
    assert _line(caplog, "webhook", "https://hooks.example/x", "HTTP 500", 0.5, 4) == (
        "webhook at https://hooks.example/x: HTTP 500; retrying in 0.50s (4 attempts left)"
    )
