"""RabbitMQ-only behaviour: server-side closes, the DLX, quorum queues, error wording."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pika
import pytest

from orchestra_cli.backends import Backends, open_backends
from orchestra_cli.broker.rabbitmq import RabbitBroker
from orchestra_cli.errors import BrokerError, BrokerUnavailable
from orchestra_cli.models import MSG_RUN, Envelope
from orchestra_cli.state.base import Create
from tests.contract.conftest import AMQP_URL, cleanup_services, services_settings
from tests.services.conftest import close_connections_named

pytestmark = pytest.mark.integration

Q = "work.svc"


def _broker(b: Backends) -> RabbitBroker:
    assert isinstance(b.broker, RabbitBroker)
    return b.broker


def test_consumer_and_publisher_resume_after_the_server_closes_their_connections(
    svc: Backends,
) -> None:
    broker = _broker(svc)
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="before"))
    consumer = broker.consumer([Q], prefetch=2, name="resilient")
    try:
        first = consumer.get(timeout=5)
        assert first is not None and first.envelope.task_id == "before"
        first.ack()
        assert close_connections_named(broker.topo.prefix) >= 2
        broker.publish(Q, Envelope(type=MSG_RUN, task_id="after"))  # waits for the reconnect
        again = consumer.get(timeout=20)
        assert again is not None and again.envelope.task_id == "after"
        again.ack()
    finally:
        consumer.close()


def test_unacked_message_held_across_a_server_close_is_redelivered_with_a_higher_count(
    svc: Backends,
) -> None:
    broker = _broker(svc)
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="held"))
    consumer = broker.consumer([Q], prefetch=1, name="holder")
    try:
        held = consumer.get(timeout=5)
        assert held is not None and held.delivery_count == 1
        close_connections_named(broker.topo.prefix)
        held.ack()  # a stale tag: ignored, RabbitMQ requeued the message
        again = consumer.get(timeout=20)
        assert again is not None and again.envelope.task_id == "held"
        assert again.delivery_count == 2
        again.ack()
    finally:
        consumer.close()


def test_a_message_rejected_by_another_client_reaches_the_dead_letter_queue_via_the_dlx(
    svc: Backends,
) -> None:
    broker = _broker(svc)
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="rejected"))
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        ch = conn.channel()
        method, _, _ = ch.basic_get(broker.topo.physical(Q))
        assert method is not None
        ch.basic_nack(method.delivery_tag, requeue=False)
    finally:
        conn.close()
    dead = broker.dead_letters()
    assert len(dead) == 1 and dead[0]["reason"] == "rejected" and dead[0]["queue"] == Q


def test_quorum_queue_type_declares_replicated_queues_that_work(home: Path) -> None:
    settings = services_settings(home)
    settings.broker.queue_type = "quorum"
    b = open_backends(settings)
    try:
        broker = _broker(b)
        broker.publish(Q, Envelope(type=MSG_RUN, task_id="q1"))
        consumer = broker.consumer([Q], prefetch=1, name="quorum")
        try:
            d = consumer.get(timeout=5)
            assert d is not None and d.delivery_count == 1
            d.nack()
            again = consumer.get(timeout=5)
            assert again is not None and again.delivery_count == 2
            again.ack()
        finally:
            consumer.close()
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-queue-type"):
                # redeclaring as classic fails: proof the queue really is a quorum queue
                conn.channel().queue_declare(
                    broker.topo.physical(Q),
                    durable=True,
                    arguments={
                        "x-dead-letter-exchange": broker.topo.dlx,
                        "x-queue-type": "classic",
                    },
                )
        finally:
            conn.close()
    finally:
        cleanup_services(b)


def test_unreachable_rabbitmq_is_reported_with_the_password_masked_and_a_hint() -> None:
    broker = RabbitBroker("amqp://guest:s3cret@127.0.0.1:1/%2F")
    with pytest.raises(BrokerUnavailable) as info:
        broker.publish(Q, Envelope(type=MSG_RUN, task_id="t"))
    text = str(info.value)
    assert "s3cret" not in text and "amqp://guest:***@127.0.0.1:1/" in text
    assert "orchestra up" in text and "ORCHESTRA_BROKER_URL" in text


def test_a_malformed_broker_url_is_one_clear_error_and_a_closed_publisher_stays_closed(
    svc: Backends,
) -> None:
    bad = RabbitBroker("amqp://guest:s3cret@127.0.0.1:notaport/%2F")
    with pytest.raises(BrokerUnavailable) as info:
        bad.publish(Q, Envelope(type=MSG_RUN, task_id="t"))
    assert "s3cret" not in str(info.value) and "ValueError" in str(info.value)
    broker = _broker(svc)
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="t"))
    link = broker._publisher()
    link.close()
    with pytest.raises(BrokerUnavailable, match="connection closed"):
        link.call(lambda ch: None, timeout=1)
    assert not link.connected


def test_health_reports_queue_depths_and_consumer_counts(svc: Backends) -> None:
    broker = _broker(svc)
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="t"))
    consumer = broker.consumer(["intake"], prefetch=1, name="h")
    try:
        health = broker.health()
        assert health["ok"] and health["queues"][Q]["messages"] == 1
        assert health["queues"]["intake"]["consumers"] == 1
        assert "guest:***@" in health["url"]
        assert svc.state.health()["ok"]  # type: ignore[attr-defined]
    finally:
        consumer.close()


def test_delayed_publishes_keep_working_past_the_delay_queue_expiry(
    svc: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishing does not reset x-expires; the broker must re-declare delay queues in time."""
    from orchestra_cli.broker import rabbitmq_topology
    from orchestra_cli.models import MSG_RUN, Envelope

    # expires 1.6 s after declare
    monkeypatch.setattr(rabbitmq_topology, "DELAY_QUEUE_IDLE_MS", 1500)
    sent = []
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        env = Envelope(type=MSG_RUN, task_id=f"t{len(sent)}")
        svc.broker.publish("work.delayed", env, delay=0.1)
        sent.append(env.id)
        time.sleep(0.4)
    consumer = svc.broker.consumer(["work.delayed"], prefetch=20, name="c")
    try:
        got = set()
        while len(got) < len(sent):
            d = consumer.get(timeout=5)
            assert d is not None, f"only {len(got)} of {len(sent)} delayed messages arrived"
            got.add(d.envelope.id)
            d.ack()
    finally:
        consumer.close()
    assert got == set(sent)


def test_an_idle_publisher_keeps_its_connection_through_missed_heartbeats(home: Path) -> None:
    """The publisher is driven by its callers; its keep-alive thread answers heartbeats."""
    settings = services_settings(home)
    settings.rabbitmq.heartbeat = 1
    b = open_backends(settings)
    try:
        broker = _broker(b)
        broker.publish(Q, Envelope(type=MSG_RUN, task_id="first"))
        link = broker._publisher()
        assert link.generation == 1
        time.sleep(4.5)  # RabbitMQ closes a connection after two missed 1 s heartbeats
        broker.publish(Q, Envelope(type=MSG_RUN, task_id="second"))
        assert broker._publisher() is link and link.generation == 1  # never reconnected
        consumer = broker.consumer([Q], prefetch=2, name="idle")
        try:
            got = [consumer.get(timeout=5), consumer.get(timeout=5)]
            assert [d.envelope.task_id for d in got if d] == ["first", "second"]
            for d in got:
                assert d is not None
                d.ack()
        finally:
            consumer.close()
    finally:
        cleanup_services(b)


def _drain(broker: RabbitBroker, expected: int) -> list[str]:
    consumer = broker.consumer([Q], prefetch=50, name="drain")
    got: list[str] = []
    try:
        while len(set(got)) < expected:
            d = consumer.get(timeout=10)
            assert d is not None, f"only {len(set(got))} of {expected} arrived"
            got.append(d.envelope.task_id)
            d.ack()
    finally:
        consumer.close()
    return got


def test_windowed_publishes_are_all_confirmed_by_a_flush_or_by_close(home: Path) -> None:
    b = open_backends(services_settings(home))
    try:
        broker = _broker(b)
        for i in range(300):
            broker.publish(Q, Envelope(type=MSG_RUN, task_id=f"w{i}"), confirm=False)
        broker.flush()
        assert broker._publisher().outstanding == 0
        for i in range(300, 400):
            broker.publish(Q, Envelope(type=MSG_RUN, task_id=f"w{i}"), confirm=False)
        broker.close()  # waits for the last window's confirms
        assert sorted(_drain(broker, 400)) == sorted(f"w{i}" for i in range(400))
    finally:
        cleanup_services(b)


def test_unconfirmed_publishes_are_sent_again_after_the_connection_drops(svc: Backends) -> None:
    broker = _broker(svc)
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="first"))
    link = broker._publisher()
    for i in range(200):
        broker.publish(Q, Envelope(type=MSG_RUN, task_id=f"u{i}"), confirm=False)
    unconfirmed = link.outstanding
    assert unconfirmed > 0  # confirms are read on the next call
    # the connection breaks before they are read: they count as lost
    link._conn._impl._transport._sock.shutdown(socket.SHUT_RDWR)
    broker.flush()  # reconnects and sends every unconfirmed message again
    assert link.generation == 2 and link.outstanding == 0
    got = _drain(broker, 201)
    assert {f"u{i}" for i in range(200)} | {"first"} == set(got)  # at least once each


def test_a_message_returned_as_unroutable_is_reported_by_flush_not_by_other_calls(
    svc: Backends,
) -> None:
    broker = _broker(svc)
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="declares-the-queue"))
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        conn.channel().queue_delete(broker.topo.physical(Q))  # behind the publisher's back
    finally:
        conn.close()
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="lost"), confirm=False)
    assert broker.health([Q])["ok"]  # a call that published nothing is not blamed
    with pytest.raises(BrokerError, match="refused 1 message"):
        broker.flush()
    broker.flush()  # reported once
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="after"))  # the queue is declared again
    assert _drain(broker, 1) == ["after"]


def test_bulk_publishes_are_written_in_batches_or_by_the_keep_alive_after_its_linger(
    svc: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.broker import rabbitmq_publisher as publisher

    monkeypatch.setattr(publisher, "LINGER_SECONDS", 1.0)  # long enough to look at
    broker = _broker(svc)
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="confirmed"))  # written and confirmed
    link = broker._publisher()
    assert link._channel is not None and link._channel.unwritten == 0
    start = time.monotonic()
    for i in range(3):
        broker.publish(Q, Envelope(type=MSG_RUN, task_id=f"l{i}"), confirm=False)
    assert link._channel.unwritten == 3  # framed; waiting for a batch or the linger
    assert sorted(_drain(broker, 4)) == ["confirmed", "l0", "l1", "l2"]  # no call needed
    assert time.monotonic() - start >= 0.9  # …they went with the keep-alive
    for i in range(publisher.BATCH):
        broker.publish(Q, Envelope(type=MSG_RUN, task_id=f"b{i}"), confirm=False)
    assert link._channel.unwritten == 0  # a full batch is written by the call that fills it
    broker.flush()
    assert link.outstanding == 0
    assert len(set(_drain(broker, publisher.BATCH))) == publisher.BATCH


def test_awaited_publishes_go_out_at_once_without_a_confirm_and_returns_are_still_reported(
    svc: Backends,
) -> None:
    broker = _broker(svc)
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="declares-the-queue"))
    link = broker._publisher()
    for i in range(3):
        broker.publish(Q, Envelope(type=MSG_RUN, task_id=f"a{i}"), awaited=True)
    assert link.outstanding == 0  # nothing to confirm: the caller waits for the task's end
    assert link._channel is not None and link._channel.unwritten == 0  # written already
    assert sorted(_drain(broker, 4)) == ["a0", "a1", "a2", "declares-the-queue"]
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        conn.channel().queue_delete(broker.topo.physical(Q))  # behind the publisher's back
    finally:
        conn.close()
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="lost"), awaited=True)
    deadline = time.monotonic() + 5
    while True:  # the return travels back on its own time: flush reads it when it is there
        try:
            broker.flush()
        except BrokerError as exc:
            assert "refused 1 message" in str(exc)
            break
        assert time.monotonic() < deadline, "the returned message was never reported"
        time.sleep(0.05)


def test_a_waiter_without_the_broker_reads_the_outcome_from_state_within_its_timeout(
    svc: Backends,
) -> None:
    import threading

    from orchestra_cli.engine.roles import load_roles
    from orchestra_cli.engine.service import SubmitRequest, TaskService
    from orchestra_cli.models import Task
    from orchestra_cli.status import Status

    service = TaskService(svc, lambda: load_roles(svc.settings.agents.definitions_dir))
    first, _ = service.submit(SubmitRequest("x", capability="code"), wait=True)
    link = _broker(svc)._publisher()
    # RabbitMQ goes away: the connection breaks and no reconnect can succeed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = s.getsockname()[1]
    link.url, url = f"amqp://guest:guest@127.0.0.1:{refused}/%2f", link.url
    try:
        link._conn._impl._transport._sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        started = time.monotonic()
        timed_out = service.wait(first, 2.5, counted=True)  # the wait's own time-out holds
        assert timed_out.status == Status.QUEUED
        assert time.monotonic() - started < 4.5
        second, _ = svc.state.create_task(
            Task(title="t2", input="y", capability="code"), Create(watch=True)
        )
        svc.state.transition(second.id, Status.QUEUED)
        claim = threading.Timer(1.5, lambda: svc.state.claim(second.id, "a1"))
        end = threading.Timer(1.7, lambda: svc.state.transition(second.id, Status.SUCCEEDED))
        claim.start()
        end.start()
        started = time.monotonic()
        ended = service.wait(second, 30, counted=True)  # not the broker's error: the task's end
        assert ended.status == Status.SUCCEEDED
        assert time.monotonic() - started < 5
        claim.join()
        end.join()
    finally:
        link.url = url  # RabbitMQ is back, for the fixture's cleanup


def test_a_submit_fails_before_storing_when_the_broker_is_gone_and_names_the_task_after(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.broker import rabbitmq
    from orchestra_cli.engine.roles import load_roles
    from orchestra_cli.engine.service import SubmitRequest, TaskService
    from orchestra_cli.errors import Undelivered
    from orchestra_cli.status import Status
    from tests.support import StallingProxy

    monkeypatch.setattr(rabbitmq, "PUBLISH_TIMEOUT_SECONDS", 2.0)  # how long a publish waits
    proxy = StallingProxy(("127.0.0.1", 5672))
    settings = services_settings(home)
    settings.broker_url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2f"
    svc = open_backends(settings)
    try:
        service = TaskService(svc, lambda: load_roles(svc.settings.agents.definitions_dir))
        service.submit(SubmitRequest("connects", capability="code"))
        service.submit(SubmitRequest("declares the intake queue"))  # (a blocking RPC)
        # RabbitMQ hangs after the submitter connected: the task is stored, its message not
        proxy.flowing.clear()
        with pytest.raises(Undelivered) as routed:
            service.submit(SubmitRequest("routed", capability="code"))
        assert svc.state.get_task(routed.value.task_id).status == Status.QUEUED
        assert "do not submit it again" in str(routed.value)
        with pytest.raises(Undelivered) as planned:
            service.submit(SubmitRequest("planned"))
        assert svc.state.get_task(planned.value.task_id).status == Status.PENDING
        # unreachable before the submit: nothing is stored
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            refused = f"amqp://guest:guest@127.0.0.1:{s.getsockname()[1]}/%2f"
        elsewhere = services_settings(home)
        elsewhere.broker_url = refused
        elsewhere.redis.key_prefix = settings.redis.key_prefix  # the same state store
        other = open_backends(elsewhere)
        try:
            before = len(svc.state.list_tasks(limit=100))
            with pytest.raises(BrokerUnavailable) as gone:
                TaskService(other, service.roles).submit(SubmitRequest("never", capability="code"))
            assert not isinstance(gone.value, Undelivered)
            assert len(svc.state.list_tasks(limit=100)) == before == 4
        finally:
            other.close()
    finally:
        proxy.flowing.set()  # RabbitMQ answers again: the link recovers and closes cleanly
        cleanup_services(svc)
        proxy.close()


def test_an_ack_is_written_by_the_handlers_thread_without_waking_the_io_thread(
    svc: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.broker import rabbitmq_link

    broker = _broker(svc)
    for i in range(2):
        broker.publish(Q, Envelope(type=MSG_RUN, task_id=f"m{i}"))
    # the I/O thread sleeps up to 5 s unless data arrives, and waking it does nothing
    monkeypatch.setattr(rabbitmq_link, "IO_TICK_SECONDS", 5.0)
    monkeypatch.setattr(rabbitmq_link.Link, "_wake", lambda self: None)
    consumer = broker.consumer([Q], prefetch=1, name="acker")
    try:
        first = consumer.get(timeout=10)
        assert first is not None and first.envelope.task_id == "m0"
        time.sleep(0.2)  # the I/O thread is back in its 5 s wait
        started = time.monotonic()
        first.ack()  # frees the only prefetch slot: the broker sends the next at once
        second = consumer.get(timeout=10)
        assert second is not None and second.envelope.task_id == "m1"
        assert time.monotonic() - started < 2.0  # not left for the I/O thread's next turn
        second.ack()
        first.ack()  # settled already: a second ack is not sent (it would close the channel)
    finally:
        consumer.close()  # whatever it left unacked is ready again now
    assert broker.depths()[Q] == 0  # both acked: nothing comes back


def test_acks_that_finish_together_go_as_one_and_none_waits_long_behind_an_older_one(
    svc: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery finished behind a young older one waits for it, and then one frame
    settles both (``multiple``); behind one that runs on, it goes on its own within a
    tick, so a long task holds no prefetch slot but its own."""
    import pika.channel

    from orchestra_cli.broker import rabbitmq_acks

    sent: list[tuple[int, bool]] = []
    real_ack = pika.channel.Channel.basic_ack

    def spy(self: Any, delivery_tag: int = 0, multiple: bool = False) -> Any:
        sent.append((delivery_tag, multiple))
        return real_ack(self, delivery_tag, multiple)

    monkeypatch.setattr(pika.channel.Channel, "basic_ack", spy)
    monkeypatch.setattr(rabbitmq_acks, "YOUNG_SECONDS", 5.0)  # every older one counts young
    broker = _broker(svc)
    for i in range(5):
        broker.publish(Q, Envelope(type=MSG_RUN, task_id=f"m{i}"))
    consumer = broker.consumer([Q], prefetch=3, name="coalescer")
    try:
        held = [consumer.get(timeout=10) for _ in range(3)]
        assert all(d is not None for d in held)
        first, second, third = (d for d in held if d is not None)
        third.ack()
        second.ack()  # both wait behind the first, still running
        assert sent == []
        first.ack()  # one frame for all three
        assert sent == [(third.tag, True)]
        more = [consumer.get(timeout=10) for _ in range(2)]  # their slots came free
        assert [d.envelope.task_id for d in more if d] == ["m3", "m4"]
        fourth, fifth = (d for d in more if d is not None)
        fifth.ack()  # the fourth runs on: the fifth goes alone at the next tick
        deadline = time.monotonic() + 2
        while len(sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sent[1:] == [(fifth.tag, False)]
        fourth.nack()  # settled otherwise: nothing is acked for it
        again = consumer.get(timeout=10)
        assert again is not None and again.envelope.task_id == "m3"
        again.ack()
    finally:
        consumer.close()
    assert broker.depths()[Q] == 0  # every one settled once: the channel never closed


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "plain-path"])
def test_coalesced_acks_from_many_threads_in_any_order_settle_each_message_once(
    home: Path, fast: bool
) -> None:
    """8 handler threads finish 600 deliveries in random order (some nacked): had a
    multiple-ack ever covered a delivery in hand, or named a settled tag, RabbitMQ
    would close the channel (PRECONDITION_FAILED) and redeliver."""
    import random
    import threading

    settings = services_settings(home)
    settings.rabbitmq.fast_path = fast
    b = open_backends(settings)
    n, seen, lock = 600, [], threading.Lock()
    try:
        broker = _broker(b)
        for i in range(n):
            broker.publish(Q, Envelope(type=MSG_RUN, task_id=f"m{i}"), confirm=False)
        broker.flush()
        consumer = broker.consumer([Q], prefetch=8, name=f"stress-{fast}")
        rng = random.Random(7)
        nacked = {f"m{i}" for i in rng.sample(range(n), 20)}
        delays = [rng.random() * 0.004 for _ in range(n)]

        def handle() -> None:
            while True:
                d = consumer.get(timeout=1.0)
                if d is None:
                    return
                with lock:
                    seen.append(d.envelope.task_id)
                    k = len(seen)
                time.sleep(delays[k % n])
                if d.envelope.task_id in nacked and d.delivery_count == 1:
                    d.nack()  # back once, with its count
                else:
                    d.ack()

        try:
            threads = [threading.Thread(target=handle) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert consumer._link.generation == 1  # the channel never closed
        finally:
            consumer.close()
        assert sorted(seen) == sorted([f"m{i}" for i in range(n)] + sorted(nacked))
        assert broker.depths()[Q] == 0
    finally:
        cleanup_services(b)


@pytest.mark.parametrize("closed", ["connection", "channel"])
def test_a_consumer_whose_connection_or_channel_the_broker_closed_gets_its_message_again(
    svc: Backends, closed: str
) -> None:
    broker = _broker(svc)
    broker.publish(Q, Envelope(type=MSG_RUN, task_id="held"))
    consumer = broker.consumer([Q], prefetch=1, name=f"closed-{closed}")
    try:
        held = consumer.get(timeout=10)
        assert held is not None
        if closed == "connection":
            assert close_connections_named(broker.topo.prefix) >= 1  # the consumer's among them
        else:  # a channel error (as RabbitMQ's consumer_timeout raises): the broker closes
            # the channel and leaves the connection open, and pika says nothing
            held.writer.from_other_thread(lambda: held.channel._impl.basic_ack(99_999))
        again = consumer.get(timeout=20)  # requeued, and the link consumes again
        assert again is not None and again.envelope.task_id == "held"
        held.ack()  # its channel is gone: no error, no ack of the new delivery's tag
        again.ack()
    finally:
        consumer.close()
    assert broker.depths()[Q] == 0


def test_with_fast_path_off_every_link_uses_pikas_public_api_only(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.broker import pika_fast
    from orchestra_cli.broker.rabbitmq_io import IOPath, PlainWindow, PlainWriter

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError("the fast path was used with rabbitmq.fast_path: false")

    monkeypatch.setattr(pika_fast, "FAST", IOPath("fast", refuse, refuse, refuse))
    settings = services_settings(home)
    settings.rabbitmq.fast_path = False
    b = open_backends(settings)
    try:
        broker = _broker(b)
        broker.publish(Q, Envelope(type=MSG_RUN, task_id="plain"))
        broker.publish(Q, Envelope(type=MSG_RUN, task_id="unawaited"), confirm=False)
        link = broker._publisher()
        assert isinstance(link._channel, PlainWindow) and isinstance(link._writer, PlainWriter)
        assert link.outstanding == 0  # each publish waited for its own confirm
        consumer = broker.consumer([Q], prefetch=2, name="plain")
        try:
            assert consumer._link.path.name == "plain"
            got = [consumer.get(timeout=10) for _ in range(2)]
            assert [d.envelope.task_id for d in got if d is not None] == ["plain", "unawaited"]
            for d in got:
                assert d is not None
                d.ack()  # handed to the link's thread (add_callback_threadsafe)
            assert consumer.get(timeout=0.5) is None
        finally:
            consumer.close()
        assert broker.depths()[Q] == 0
    finally:
        cleanup_services(b)
