"""The coalesced-ack ledger (broker/rabbitmq_acks.py): which frame each finish writes."""

from __future__ import annotations

import time

import pytest

from orchestra_cli.broker import rabbitmq_acks
from orchestra_cli.broker.rabbitmq_acks import AckLedger


def _ledger(*tags: int) -> AckLedger:
    ledger = AckLedger()
    for tag in tags:
        ledger.handed_out(tag)
    return ledger


def test_the_oldest_finishing_acks_itself_and_the_finished_run_after_it() -> None:
    ledger = _ledger(1, 2, 3, 4)
    assert ledger.take(3) is None and ledger.take(2) is None  # behind a young one: wait
    assert ledger.deferred
    assert ledger.take(1) == (3, True)  # one frame for 1..3
    assert not ledger.deferred
    assert ledger.take(4) == (4, False)  # the oldest now, alone


def test_behind_an_old_delivery_an_ack_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rabbitmq_acks, "YOUNG_SECONDS", 0.0)
    ledger = _ledger(1, 2, 3)
    assert ledger.take(2) == (2, False)
    assert ledger.take(1) == (1, False)  # 2 went already: not covered twice
    assert ledger.take(3) == (3, False)


def test_deferred_acks_go_alone_once_stale_or_at_close(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = _ledger(1, 2, 3)
    assert ledger.take(2) is None and ledger.take(3) is None
    assert ledger.stale() == []  # not yet
    monkeypatch.setattr(rabbitmq_acks, "STALE_SECONDS", 0.0)
    time.sleep(0.001)
    assert sorted(ledger.stale()) == [2, 3]
    assert ledger.take(1) == (1, False)  # 2 and 3 were written: a run of one
    other = _ledger(1, 2)
    assert other.take(2) is None
    assert other.rest() == [2] and not other.deferred


def test_a_delivery_settled_otherwise_releases_the_run_it_held_up() -> None:
    ledger = _ledger(1, 2, 3)
    assert ledger.take(2) is None and ledger.take(3) is None
    assert ledger.settled(1) == (3, True)  # 1 nacked (its frame went first): 2..3 in one
    assert ledger.settled(3) is None  # gone already: nothing to write


def test_a_tag_not_in_hand_is_never_acked() -> None:
    ledger = _ledger(1)
    assert ledger.take(7) is None  # another connection's, or settled already
    assert ledger.take(1) == (1, False)
    assert ledger.take(1) is None
    ledger.reset()
    assert ledger.take(1) is None and not ledger.deferred
