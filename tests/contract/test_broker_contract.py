"""The Broker contract: every backend passes the same tests (RabbitMQ on both I/O paths)."""

from __future__ import annotations

import threading
import time

from orchestra_cli.backends import Backends
from orchestra_cli.models import MSG_RUN, Q_DEAD, Envelope
from tests.support import wait_until

Q = "work.contract"


def _env(task_id: str = "t1", **kw: object) -> Envelope:
    return Envelope(type=MSG_RUN, task_id=task_id, **kw)  # type: ignore[arg-type]


def test_published_message_is_delivered_once_and_gone_after_ack(
    broker_backends: Backends,
) -> None:
    broker = broker_backends.broker
    sent = _env(payload={"x": 1})
    broker.publish(Q, sent)
    consumer = broker.consumer([Q], prefetch=1, name="c1")
    try:
        d = consumer.get(timeout=5)
        assert d is not None
        assert d.envelope.id == sent.id and d.envelope.payload == {"x": 1}
        assert d.delivery_count == 1 and d.queue == Q
        d.ack()
        assert consumer.get(timeout=0.3) is None
    finally:
        consumer.close()
    assert broker.depths().get(Q, 0) == 0


def test_higher_priority_is_delivered_first(broker_backends: Backends) -> None:
    broker = broker_backends.broker
    broker.publish(Q, _env("low"), priority=1)
    broker.publish(Q, _env("high"), priority=9)
    time.sleep(0.1)
    consumer = broker.consumer([Q], prefetch=1, name="c1")
    try:
        first = consumer.get(timeout=5)
        assert first is not None and first.envelope.task_id == "high"
        first.ack()
        second = consumer.get(timeout=5)
        assert second is not None and second.envelope.task_id == "low"
        second.ack()
    finally:
        consumer.close()


def test_nacked_message_is_redelivered_with_a_higher_count(broker_backends: Backends) -> None:
    broker = broker_backends.broker
    broker.publish(Q, _env())
    consumer = broker.consumer([Q], prefetch=1, name="c1")
    try:
        d = consumer.get(timeout=5)
        assert d is not None
        d.nack()
        again = consumer.get(timeout=5)
        assert again is not None and again.delivery_count == 2
        again.ack()
    finally:
        consumer.close()


def test_nack_with_delay_hides_the_message_until_the_delay_passes(
    broker_backends: Backends,
) -> None:
    broker = broker_backends.broker
    broker.publish(Q, _env())
    consumer = broker.consumer([Q], prefetch=1, name="c1")
    try:
        d = consumer.get(timeout=5)
        assert d is not None
        start = time.monotonic()
        d.nack(delay=1.0)
        assert consumer.get(timeout=0.5) is None
        again = consumer.get(timeout=5)
        assert again is not None and time.monotonic() - start >= 0.9
        again.ack()
    finally:
        consumer.close()


def test_prefetch_limits_unsettled_messages(broker_backends: Backends) -> None:
    broker = broker_backends.broker
    for i in range(3):
        broker.publish(Q, _env(f"t{i}"))
    consumer = broker.consumer([Q], prefetch=2, name="c1")
    try:
        a, b = consumer.get(timeout=5), consumer.get(timeout=5)
        assert a is not None and b is not None
        assert consumer.get(timeout=0.3) is None
        a.ack()
        c = consumer.get(timeout=5)
        assert c is not None
        b.ack()
        c.ack()
    finally:
        consumer.close()


def test_unsettled_message_of_a_closed_consumer_goes_to_another(
    broker_backends: Backends,
) -> None:
    broker = broker_backends.broker
    broker.publish(Q, _env())
    first = broker.consumer([Q], prefetch=1, name="c1")
    d = first.get(timeout=5)
    assert d is not None
    first.close()
    second = broker.consumer([Q], prefetch=1, name="c2")
    try:
        again = second.get(timeout=10)
        assert again is not None and again.envelope.id == d.envelope.id
        assert again.delivery_count >= 2
        again.ack()
    finally:
        second.close()


def test_dead_lettered_message_keeps_its_reason(broker_backends: Backends) -> None:
    broker = broker_backends.broker
    sent = _env()
    broker.publish(Q, sent)
    consumer = broker.consumer([Q], prefetch=1, name="c1")
    try:
        d = consumer.get(timeout=5)
        assert d is not None
        d.dead_letter("task does not exist")
        assert consumer.get(timeout=0.3) is None
    finally:
        consumer.close()
    dead = wait_until(lambda: broker.dead_letters(), timeout=5, what="dead letter")
    assert dead[0]["reason"] == "task does not exist" and dead[0]["queue"] == Q
    assert sent.id in dead[0]["body"]


def test_malformed_messages_are_dead_lettered_and_consumption_goes_on(
    broker_backends: Backends,
) -> None:
    broker = broker_backends.broker
    broker.publish_raw(Q, b"{not json")
    broker.publish_raw(Q, b"\xff\xfe binary")
    broker.publish_raw(Q, _env().model_dump_json().replace(MSG_RUN, "task.bogus").encode())
    good = _env("good")
    broker.publish(Q, good)
    consumer = broker.consumer([Q], prefetch=1, name="c1")
    try:
        d = consumer.get(timeout=5)
        assert d is not None and d.envelope.id == good.id
        d.ack()
    finally:
        consumer.close()
    reasons = [m["reason"] for m in broker.dead_letters()]
    assert len(reasons) == 3
    assert any("not UTF-8" in r for r in reasons)
    assert any("unknown message type" in r for r in reasons)
    assert any("invalid envelope" in r for r in reasons)


def test_message_redelivered_past_the_limit_is_dead_lettered_as_poison(
    broker_backends: Backends,
) -> None:
    broker = broker_backends.broker
    broker.publish(Q, _env())
    consumer = broker.consumer([Q], prefetch=1, name="c1")
    try:
        for _ in range(10):
            d = consumer.get(timeout=2)
            if d is None:
                break
            d.nack()
        assert consumer.get(timeout=0.3) is None
    finally:
        consumer.close()
    dead = broker.dead_letters()
    assert len(dead) == 1 and "poison" in dead[0]["reason"]


def test_direct_dead_letter_records_origin_and_reason(broker_backends: Backends) -> None:
    broker = broker_backends.broker
    broker.dead_letter(Q, _env("t9"), "exhausted retries: boom")
    dead = wait_until(lambda: broker.dead_letters(), timeout=5, what="dead letter")
    assert dead[0]["queue"] == Q and dead[0]["reason"] == "exhausted retries: boom"
    assert broker.depths().get(Q_DEAD, 0) == 1
    broker.dead_letter(Q, _env("t10"), "exhausted retries: again")
    wait_until(lambda: len(broker.dead_letters()) == 2, timeout=5, what="second dead letter")
    assert [_task(d) for d in broker.dead_letters()] == ["t10", "t9"]  # newest first, kept
    assert broker.purge(Q_DEAD) == 2  # `orchestra dlq purge`
    assert broker.dead_letters() == [] and broker.depths().get(Q_DEAD, 0) == 0


def test_removing_dead_letters_by_id_leaves_the_others_in_their_order(
    contract_backends: Backends,
) -> None:
    broker = contract_backends.broker
    for name in ("t1", "t2", "t3"):
        broker.dead_letter(Q, _env(name), f"exhausted retries: {name}")
    broker.publish_raw(Q_DEAD, b"\xff no id of its own but its body")
    letters = wait_until(lambda: len(broker.dead_letters()) == 4 and broker.dead_letters())
    by_task = {_task(x) if x["task_id"] else None: x["id"] for x in letters}
    assert broker.remove_dead_letters([by_task["t2"]]) == 1  # `orchestra dlq rm`
    assert [_task(x) for x in broker.dead_letters() if x["task_id"]] == ["t3", "t1"]
    assert broker.remove_dead_letters([by_task["t2"], "no-such-letter"]) == 0  # gone: a no-op
    assert broker.remove_dead_letters([by_task[None]]) == 1  # found by the same id again
    assert [x["id"] for x in broker.dead_letters()] == [by_task["t3"], by_task["t1"]]
    assert broker.depths().get(Q_DEAD, 0) == 2


def test_a_long_dead_letter_queue_lists_its_newest_and_removes_any(
    contract_backends: Backends,
) -> None:
    """Browsing stopped at 10,000 letters (the oldest): `dlq list` never showed the
    newest of a longer queue, and `dlq rm` could not reach past them (a first fix read
    with a consumer, which stopped at its prefetch window: this many letters pass it)."""
    broker = contract_backends.broker
    n = 2300
    for i in range(n):
        broker.dead_letter(Q, _env(f"d{i}"), "exhausted retries")
    broker.flush()
    wait_until(lambda: broker.depths().get(Q_DEAD, 0) == n, timeout=60, what="all letters")
    newest = broker.dead_letters(3)
    assert [_task(x) for x in newest] == [f"d{n - 1}", f"d{n - 2}", f"d{n - 3}"]
    oldest = {_task(x): x["id"] for x in broker.dead_letters(n)}
    assert len(oldest) == n
    assert broker.remove_dead_letters([oldest["d0"], oldest[f"d{n - 1}"]]) == 2
    assert [_task(x) for x in broker.dead_letters(2)] == [f"d{n - 2}", f"d{n - 3}"]
    assert _task(broker.dead_letters(n)[-1]) == "d1"  # the rest in their order
    assert broker.depths().get(Q_DEAD, 0) == n - 2


def _task(letter: dict[str, object]) -> str:
    import json

    return str(json.loads(str(letter["body"]))["task_id"])


def test_competing_consumers_share_the_work_and_each_message_is_acked_once(
    broker_backends: Backends,
) -> None:
    broker = broker_backends.broker
    n = 60
    for i in range(n):
        broker.publish(Q, _env(f"t{i}"))
    seen: list[str] = []
    lock = threading.Lock()

    def consume(name: str) -> None:
        consumer = broker.consumer([Q], prefetch=2, name=name)
        try:
            while True:
                d = consumer.get(timeout=1.0)
                if d is None:
                    return
                with lock:
                    seen.append(d.envelope.task_id)
                d.ack()
        finally:
            consumer.close()

    threads = [threading.Thread(target=consume, args=(f"c{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == sorted(f"t{i}" for i in range(n))


def test_deferred_message_comes_back_later_without_counting_a_delivery(
    broker_backends: Backends,
) -> None:
    broker = broker_backends.broker
    broker.publish(Q, _env())
    consumer = broker.consumer([Q], prefetch=1, name="c1")
    try:
        for _ in range(8):  # far past max_deliveries: deferring never makes it poison
            d = consumer.get(timeout=5)
            assert d is not None and d.delivery_count == 1
            d.defer(delay=0.05)
        last = consumer.get(timeout=5)
        assert last is not None
        last.ack()
    finally:
        consumer.close()
    assert broker.dead_letters() == []


def test_control_messages_reach_every_consumer_opened_before_them(
    broker_backends: Backends,
) -> None:
    broker = broker_backends.broker
    broker.publish_control({"type": "ping", "agent": "*", "n": 0})  # before anyone listens
    first = broker.control_consumer("a1")
    second = broker.control_consumer("a2")
    try:
        broker.publish_control({"type": "cancel", "task_ids": ["t1"]})
        broker.publish_control({"type": "stop", "agent": "a2"})
        for consumer in (first, second):
            got = [consumer.get(timeout=5), consumer.get(timeout=5)]
            assert got == [
                {"type": "cancel", "task_ids": ["t1"]},
                {"type": "stop", "agent": "a2"},
            ]
            assert consumer.get(timeout=0.3) is None  # the early ping is not replayed
    finally:
        first.close()
        second.close()
