"""The budget ledger contract (state/ledger.py): every state backend passes it."""

from __future__ import annotations

import threading

from orchestra_cli.backends import Backends
from orchestra_cli.state.ledger import Ask, Limits


def test_a_reservation_is_granted_what_is_left_and_settles_to_the_real_usage(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    limits = Limits(tokens=1000)
    first = state.reserve_budget("root-1", "h1", Ask(input=100, max_out=500), limits, ttl=60)
    assert first.granted == 500 and first.held_tokens == 0
    second = state.reserve_budget("root-1", "h2", Ask(input=100, max_out=500), limits, ttl=60)
    assert second.granted == 300  # 1000 - (100 + 500) held - 100 input
    assert second.held_tokens == 600
    state.settle_budget("root-1", "h1", 150, 0.0)  # the first call used less than it held
    third = state.reserve_budget("root-1", "h3", Ask(input=100, max_out=500), limits, ttl=60)
    assert (third.spent_tokens, third.held_tokens) == (150, 400)
    assert third.granted == 350
    state.settle_budget("root-1", "h2", 400, 0.0)
    state.settle_budget("root-1", "h3", 450, 0.0)
    over = state.reserve_budget("root-1", "h4", Ask(input=1, max_out=10), limits, ttl=60)
    assert over.granted == 0 and over.spent_tokens == 1000
    other = state.reserve_budget("root-2", "h1", Ask(input=1, max_out=10), limits, ttl=60)
    assert other.granted == 10  # trees have ledgers of their own


def test_a_usd_limit_grants_output_by_its_price_and_refuses_an_input_it_cannot_pay(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    usd = Limits(usd=0.01)
    ask = Ask(input=1000, max_out=10_000, in_price=2.5e-6, out_price=10e-6)
    got = state.reserve_budget("root-u", "a", ask, usd, ttl=60)
    assert got.granted == 750  # (0.01 - 1000 × 2.5e-6) / 10e-6
    state.settle_budget("root-u", "a", 1200, 0.0095)
    refused = state.reserve_budget("root-u", "b", ask, usd, ttl=60)
    assert refused.granted == 0 and abs(refused.spent_usd - 0.0095) < 1e-12


def test_an_expired_hold_of_a_dead_call_counts_as_spent(contract_backends: Backends) -> None:
    """Its process died mid-call (or could not settle): the endpoint billed it, most
    likely, so the hold's worst case is spent rather than set free."""
    state = contract_backends.state
    limits = Limits(tokens=1000)
    state.reserve_budget("root-e", "dead", Ask(input=10, max_out=790), limits, ttl=-5)
    later = state.reserve_budget("root-e", "live", Ask(input=10, max_out=900), limits, ttl=60)
    assert later.held_tokens == 0 and later.spent_tokens == 800
    assert later.granted == 190


def test_a_repeated_reservation_gets_the_same_grant_and_holds_once(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    limits = Limits(tokens=1000)
    first = state.reserve_budget("root-r", "h", Ask(input=100, max_out=500), limits, ttl=60)
    again = state.reserve_budget("root-r", "h", Ask(input=100, max_out=500), limits, ttl=60)
    assert first.granted == again.granted == 500
    other = state.reserve_budget("root-r", "h2", Ask(input=100, max_out=900), limits, ttl=60)
    assert other.held_tokens == 600 and other.granted == 300


def test_parallel_reservations_never_hold_more_than_the_budget(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    limits = Limits(tokens=10_000)
    granted: list[int] = []
    lock = threading.Lock()

    def reserve(n: int) -> None:
        for i in range(10):
            got = state.reserve_budget("root-p", f"{n}-{i}", Ask(100, 400), limits, ttl=60)
            with lock:
                granted.append(got.granted)

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = sum(100 + g for g in granted if g > 0)
    assert held <= 10_000
    assert held >= 10_000 - 500  # and nothing was refused while room was left
