"""RabbitMQ broker (pika): durable priority queues, confirms, counted redelivery.

Topology (``Q`` is ``rabbitmq.queue_prefix``, so runs can share a vhost):

- ``Q`` a durable direct exchange; queue ``Q.<logical>`` bound with the
  logical name (``intake``, ``results``, ``work.<capability>``) as routing key,
  priority-enabled (``x-max-priority`` 10) or quorum (``broker.queue_type``),
  dead-lettering to ``Q.dlx``;
- ``Q.dlx`` a fanout exchange into ``Q.dead``, the dead-letter queue;
- ``Q.delay.<ms>.<logical>``: a TTL queue per delay that dead-letters back
  into ``Q`` — how ``publish(delay=…)`` and ``nack(delay=…)`` wait;
- ``Q.control`` a fanout exchange for cancel / stop / ping broadcasts.

Delivery counting: classic queues only say ``redelivered``, so a consumer
turns every broker redelivery (its previous consumer died) into a re-publish
with an ``x-orchestra-deliveries`` header one higher, and acks the original;
``nack`` does the same. The count therefore survives any number of crashes,
and a message that keeps killing agents ends in ``Q.dead`` as poison.
Dead-lettering with a reason publishes to ``Q.dead`` (reason and origin in
headers) then acks; anything rejected by other tools reaches ``Q.dead``
through the DLX with RabbitMQ's own ``x-death`` reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from orchestra_cli.broker.base import decode_envelope
from orchestra_cli.broker.rabbitmq_acks import AckLedger
from orchestra_cli.broker.rabbitmq_headers import (
    H_DELIVERIES,
    H_ORIGIN,
    H_QUORUM_COUNT,
    H_REASON,
    dead_record,
    delivery_count,
    republishable,
)
from orchestra_cli.broker.rabbitmq_topology import (
    Topology,
    _Declared,
    _properties,
    publish_on,
)
from orchestra_cli.errors import BrokerError, MalformedMessage
from orchestra_cli.models import Q_DEAD, Envelope
from orchestra_cli.settings import RabbitMQSettings, mask_url
from orchestra_cli.util import new_id

if TYPE_CHECKING:  # pika is imported on first use: `task list` / `task get` never pay for it
    import pika

    from orchestra_cli.broker.rabbitmq_io import Writer
    from orchestra_cli.broker.rabbitmq_publisher import DirectLink

log = logging.getLogger(__name__)

Channel = Any  # pika.adapters.blocking_connection.BlockingChannel

PUBLISH_TIMEOUT_SECONDS = 90.0  # a publish during an outage waits this long for a reconnect
SETTLE_TIMEOUT_SECONDS = 30.0
CLOSE_ACKS_TIMEOUT_SECONDS = 5.0
# Browsing the dead-letter queue reads every letter in it (it once stopped at 10,000, so
# `dlq list` showed the oldest 10,000 and the newest were out of reach) and puts them back
# when its channel closes; a long queue takes a while (one round trip a letter).
BROWSE_TIMEOUT_SECONDS = 600.0
REQUEUE_WAIT_SECONDS = 5.0


class RabbitDelivery:
    """One received message; settled on the consumer's connection thread."""

    def __init__(
        self,
        consumer: RabbitConsumer,
        channel: Channel,
        writer: Writer,
        generation: int,
        tag: int,
        queue: str,
        envelope: Envelope,
        count: int,
        props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        self._consumer = consumer
        self.channel = channel  # the one it came on: its tag means nothing on another
        self.writer = writer  # …and its connection's output
        self.generation = generation
        self.tag = tag
        self.queue = queue
        self.envelope = envelope
        self.delivery_count = count
        self.props = props
        self.body = body
        self.settled = False

    def ack(self) -> None:
        """Done: remove the message."""
        self._consumer.ack(self)

    def nack(self, *, delay: float = 0.0) -> None:
        """Back to the queue (after ``delay``) with its delivery count carried along."""
        self._consumer.settle(
            self,
            lambda ch: self._consumer.requeue(
                ch, self.tag, self.queue, self.props, self.body, self.delivery_count, delay
            ),
        )

    def defer(self, *, delay: float) -> None:
        """Back to the queue (after ``delay``) without counting this delivery."""
        self._consumer.settle(
            self,
            lambda ch: self._consumer.requeue(
                ch, self.tag, self.queue, self.props, self.body, self.delivery_count - 1, delay
            ),
        )

    def dead_letter(self, reason: str) -> None:
        """To the dead-letter queue with ``reason``."""
        self._consumer.settle(
            self,
            lambda ch: self._consumer.to_dead(
                ch, self.tag, self.queue, self.props, self.body, reason, self.delivery_count
            ),
        )


class RabbitConsumer:
    """Consumes some queues on its own connection with ``prefetch`` unacked at most."""

    def __init__(
        self, broker: RabbitBroker, queues: list[str], *, prefetch: int, name: str
    ) -> None:
        self.broker = broker
        self.topo = broker.topo
        self.queues = list(queues)
        self.prefetch = max(1, prefetch)
        self.name = name
        self._tags: dict[str, str] = {}  # consumer tag → logical queue
        self._raw: list[tuple[int, Any, Any, bytes]] = []
        self._ready: queue.SimpleQueue[RabbitDelivery] = queue.SimpleQueue()
        self._acks = AckLedger()  # coalesced acks (rabbitmq_acks)
        self._declared = _Declared()
        from orchestra_cli.broker.rabbitmq_link import Link

        self._link = Link(
            broker._url,
            broker.settings,
            f"{name}:{new_id()[-6:]}",
            self._on_connect,
            self._on_tick,
        )
        self._link.start()

    # -- the connection's thread ---------------------------------------------
    def _on_connect(self, ch: Channel, generation: int) -> None:
        self._raw.clear()  # tags of the old connection are void; RabbitMQ requeued them
        self._acks.reset()
        ch.confirm_delivery()
        self.topo.declare_base(ch)
        # global_qos: one limit for the channel across all its queues (classic queues)
        ch.basic_qos(prefetch_count=self.prefetch, global_qos=self.topo.queue_type != "quorum")
        self._tags.clear()
        for logical in self.queues:
            self.topo.declare_queue(ch, logical)
            tag = ch.basic_consume(
                self.topo.physical(logical),
                self._on_message,
                consumer_tag=f"{self._link.name}.{logical}.{generation}",
            )
            self._tags[tag] = logical

    def _on_message(self, ch: Channel, method: Any, props: Any, body: bytes) -> None:
        # inside pika's dispatch: only record; _on_tick does the work outside it
        self._raw.append((self._link.generation, method, props, body))

    def _on_tick(self, ch: Channel) -> None:
        if self._acks.deferred:
            with self._acks.lock:
                for tag in self._acks.stale():
                    self._write_ack(ch, (tag, False))
        while self._raw:
            generation, method, props, body = self._raw.pop(0)
            if generation == self._link.generation:
                self._admit(ch, method, props, body)

    def _admit(self, ch: Channel, method: Any, props: Any, body: bytes) -> None:
        logical = self._tags.get(method.consumer_tag) or self.topo.logical(method.routing_key)
        try:
            count = delivery_count(props.headers, redelivered=bool(method.redelivered))
        except MalformedMessage as exc:  # a hostile header must not stop the queue
            log.warning("dead-lettering a message on %s: %s", logical, exc.message)
            self.to_dead(ch, method.delivery_tag, logical, props, body, exc.message, 0)
            return
        if count > self.broker.max_deliveries:
            reason = f"delivered {count - 1} times without an ack (poison)"
            self.to_dead(ch, method.delivery_tag, logical, props, body, reason, count - 1)
            return
        if method.redelivered and H_QUORUM_COUNT not in (props.headers or {}):
            # make the lost delivery count: a copy carries it, the original goes
            self.requeue(ch, method.delivery_tag, logical, props, body, count - 1, 0.0)
            return
        try:
            envelope = decode_envelope(body)
        except MalformedMessage as exc:
            log.warning("dead-lettering malformed message on %s: %s", logical, exc.message)
            self.to_dead(ch, method.delivery_tag, logical, props, body, exc.message, count)
            return
        writer = self._link.writer
        assert writer is not None  # set with the connection this message came on
        self._acks.handed_out(method.delivery_tag)
        self._ready.put(
            RabbitDelivery(
                self,
                ch,
                writer,
                self._link.generation,
                method.delivery_tag,
                logical,
                envelope,
                count,
                props,
                body,
            )
        )

    def requeue(
        self,
        ch: Channel,
        tag: int,
        logical: str,
        props: Any,
        body: bytes,
        deliveries: int,
        delay: float,
    ) -> None:
        """Publish a copy counting ``deliveries`` so far (after ``delay``); ack the original."""
        headers = {**republishable(props.headers), H_DELIVERIES: deliveries}
        headers.pop(H_QUORUM_COUNT, None)
        copy = _properties(props.message_id or "", props.type or "", props.priority or 0, headers)
        publish_on(ch, self._link, self.topo, self._declared, logical, body, copy, delay)
        ch.basic_ack(tag)

    def to_dead(
        self,
        ch: Channel,
        tag: int,
        logical: str,
        props: Any,
        body: bytes,
        reason: str,
        deliveries: int,
    ) -> None:
        """Publish to the dead-letter queue with reason and origin, then ack the original."""
        headers = {
            **republishable(props.headers),
            H_REASON: reason,
            H_ORIGIN: logical,
            H_DELIVERIES: deliveries,
        }
        dead = _properties(props.message_id or "", props.type or "", 0, headers)
        publish_on(ch, self._link, self.topo, self._declared, Q_DEAD, body, dead)
        ch.basic_ack(tag)

    # -- the caller's thread ---------------------------------------------------
    def get(self, timeout: float) -> RabbitDelivery | None:
        """The next message, or None after ``timeout``; BrokerUnavailable if the link gave up."""
        deadline = time.monotonic() + timeout
        while True:
            if self._link.failure is not None:
                raise self._link.failure
            left = deadline - time.monotonic()
            try:
                delivery = self._ready.get(timeout=max(0.0, min(left, 0.5)))
            except queue.Empty:
                if left <= 0:
                    return None
                continue
            if delivery.generation == self._link.generation:
                return delivery
            # from before a reconnect: RabbitMQ has requeued it already

    def ack(self, delivery: RabbitDelivery) -> None:
        """Ack from the calling thread, on the channel the message came on, maybe with
        the ones after it or deferred a moment (``rabbitmq_acks``).

        The connection's writer sends it (the fast path: at once, from this
        thread; the plain path: through the connection's own thread). A channel
        that closed since refuses it: RabbitMQ has requeued the message already.
        """
        if delivery.settled:
            return
        delivery.settled = True
        with self._acks.lock:
            if delivery.generation != self._link.generation:
                return  # its connection is gone: RabbitMQ has requeued it
            ack = self._acks.take(delivery.tag)
            if ack is not None:
                self._write_ack(delivery.channel, ack, delivery.writer)

    def _write_ack(self, ch: Channel, ack: tuple[int, bool], writer: Writer | None = None) -> None:
        """Write one ack frame (``_acks.lock`` held: frames go out in the order computed)."""
        writer = writer or self._link.writer
        try:
            assert writer is not None
            writer.ack(ch, *ack)
        except connection_errors() as exc:
            log.debug("ack of delivery %d on a closed channel: %r", ack[0], exc)

    def settle(self, delivery: RabbitDelivery, op: Any) -> None:
        """Run ``op(channel)`` on the connection thread, unless the delivery is stale."""
        if delivery.settled:
            return
        delivery.settled = True

        def command(ch: Channel) -> None:
            if delivery.generation != self._link.generation:
                return  # the connection it came on is gone; RabbitMQ redelivers it
            op(ch)
            with self._acks.lock:
                ack = self._acks.settled(delivery.tag)
                if ack is not None:
                    self._write_ack(ch, ack)

        self._link.call(command, SETTLE_TIMEOUT_SECONDS)

    def close(self) -> None:
        """Write the deferred acks, then close the connection; RabbitMQ requeues whatever
        is unsettled."""
        if self._acks.deferred and self._link.connected:

            def rest(ch: Channel) -> None:
                with self._acks.lock:
                    for tag in self._acks.rest():
                        self._write_ack(ch, (tag, False))

            try:
                self._link.call(rest, CLOSE_ACKS_TIMEOUT_SECONDS)
            except Exception as exc:  # gone meanwhile: those come back, and find their task done
                log.debug("deferred acks of %s not sent: %r", self.name, exc)
        self._link.close()


class RabbitBroker:
    """Broker on RabbitMQ; publishes on one lazily opened connection per process."""

    def __init__(
        self,
        url: str,
        settings: RabbitMQSettings | None = None,
        *,
        queue_type: str = "classic",
        max_deliveries: int = 5,
    ) -> None:
        self.url = mask_url(url)  # for display; the password stays in _url
        self._url = url
        self.settings = settings or RabbitMQSettings()
        self.max_deliveries = max_deliveries
        self.topo = Topology(self.settings.queue_prefix, queue_type)
        self._declared = _Declared()
        self._link: DirectLink | None = None
        self._lock = threading.Lock()

    def _publisher(self) -> DirectLink:
        with self._lock:
            if self._link is None or not self._link.alive:
                from orchestra_cli.broker.rabbitmq_publisher import DirectLink

                name = f"publisher:{new_id()[-6:]}"
                link = DirectLink(self._url, self.settings, name, self._on_connect)
                link.start()
                self._link = link
                self._declared = _Declared()  # a new link counts its generations from 1
            return self._link

    def _on_connect(self, ch: Channel, generation: int) -> None:
        self.topo.declare_base(ch)  # the channel confirms already (rabbitmq_publisher)

    def _call(self, command: Any, timeout: float = PUBLISH_TIMEOUT_SECONDS) -> Any:
        return self._publisher().call(command, timeout)

    def _publish(
        self,
        queue: str,
        body: bytes,
        props: pika.BasicProperties,
        delay: float = 0.0,
        confirm: bool = True,
        awaited: bool = False,
    ) -> None:
        link = self._publisher()

        def command(ch: Channel) -> None:
            publish_on(ch, link, self.topo, self._declared, queue, body, props, delay)

        link.call(command, PUBLISH_TIMEOUT_SECONDS, confirm=confirm, plain=awaited)

    def publish(
        self,
        queue: str,
        envelope: Envelope,
        *,
        priority: int = 0,
        delay: float = 0.0,
        confirm: bool = True,
        awaited: bool = False,
    ) -> None:
        """Persistent; visible after ``delay`` seconds. Returns once RabbitMQ has
        confirmed it, or with ``confirm=False`` at once (``flush`` waits for it);
        ``awaited``: on the link's channel without publisher confirms."""
        props = _properties(envelope.id, envelope.type, priority, {H_DELIVERIES: 0})
        self._publish(queue, envelope.encode(), props, delay, confirm, awaited)

    def connect(self) -> None:
        """Open the publishing connection (if it is not open) and return."""
        self._publisher().ensure_connected()

    def flush(self, timeout: float | None = None, *, reconnect: bool = True) -> None:
        """Wait until every message published so far is confirmed."""
        with self._lock:
            link = self._link
        if link is not None and (reconnect or link.connected):
            link.flush(PUBLISH_TIMEOUT_SECONDS if timeout is None else timeout)

    def publish_raw(self, queue: str, body: bytes) -> None:
        """Arbitrary bytes (tests and tools; bypasses validation)."""
        self._publish(queue, body, _properties(new_id(), "raw", 0, {}))

    def dead_letter(self, origin: str, envelope: Envelope, reason: str) -> None:
        """Straight to the dead-letter queue (exhausted retries)."""
        headers = {H_REASON: reason, H_ORIGIN: origin, H_DELIVERIES: 0}
        self._publish(
            Q_DEAD, envelope.encode(), _properties(envelope.id, envelope.type, 0, headers)
        )

    def publish_control(self, message: dict[str, Any]) -> None:
        from orchestra_cli.broker import rabbitmq_control

        rabbitmq_control.publish(self, message)

    def control_consumer(self, name: str) -> Any:
        from orchestra_cli.broker.rabbitmq_control import RabbitControlConsumer

        return RabbitControlConsumer(self, name)

    def consumer(self, queues: list[str], *, prefetch: int, name: str) -> RabbitConsumer:
        """A consumer on its own connection (and I/O thread)."""
        return RabbitConsumer(self, queues, prefetch=prefetch, name=name)

    def _inspect(self, logical: str) -> tuple[int, int] | None:
        """(messages ready, consumers) of one queue, or None when it does not exist."""

        def command(ch: Channel) -> tuple[int, int] | None:
            probe = ch.connection.channel()  # a 404 closes the channel: not ours
            try:
                ok = probe.queue_declare(self.topo.physical(logical), passive=True)
            except _closed_by_broker():
                return None
            try:
                probe.close()
            except Exception:  # closing a probe is best effort
                pass
            return int(ok.method.message_count), int(ok.method.consumer_count)

        result: tuple[int, int] | None = self._call(command, SETTLE_TIMEOUT_SECONDS)
        return result

    def depths(self) -> dict[str, int]:
        """Ready messages per known queue (RabbitMQ's declare-ok does not count unacked)."""
        out = {}
        for logical in self.topo.known():
            info = self._inspect(logical)
            if info is not None:
                out[logical] = info[0]
        return out

    def dead_letters(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first, read through the whole queue (the newest are at its end) and put
        back (the channel's close requeues them); only the newest ``limit`` are kept."""
        return list(reversed(self._browse_dead(lambda letter: False, newest=limit)))

    def remove_dead_letters(self, ids: Collection[str]) -> int:
        """Ack the letters with these ids while browsing; the rest go back in their order."""
        wanted = set(ids)
        return len(self._browse_dead(lambda letter: letter["id"] in wanted, newest=0))

    def _browse_dead(
        self, drop: Callable[[dict[str, Any]], bool], *, newest: int
    ) -> list[dict[str, Any]]:
        """Every dead letter, oldest first, each one ``drop`` picks acked (deleted);
        closing the channel requeues the others. Returns the dropped ones, then the
        ``newest`` last of the others, each oldest first (memory: ``newest`` letters, not
        the whole queue)."""

        def command(ch: Channel) -> list[dict[str, Any]]:
            name = self.topo.physical(Q_DEAD)
            browse = ch.connection.channel()
            kept: deque[dict[str, Any]] = deque(maxlen=max(newest, 0) or None)
            dropped: list[dict[str, Any]] = []
            try:
                # as many as it holds now: letters that arrive meanwhile wait for next time.
                # basic_get, one a round trip: a consumer would stop at its prefetch (the
                # letters stay unacked until the close) or, without one, be sent the whole
                # queue at once
                seen = 0
                for _ in range(browse.queue_declare(name, passive=True).method.message_count):
                    method, props, body = browse.basic_get(name)
                    if method is None:
                        break
                    seen += 1
                    letter = dead_record(self.topo, method, props, body)
                    if drop(letter):
                        browse.basic_ack(method.delivery_tag)
                        dropped.append(letter)
                    elif newest:
                        kept.append(letter)
            except _closed_by_broker():
                return [*dropped, *kept]
            browse.close()
            # the close puts the others back, but the queue counts them ready a moment
            # later: wait for that, so the next browse (or `dlq list`) sees them all
            deadline = time.monotonic() + REQUEUE_WAIT_SECONDS
            while time.monotonic() < deadline:
                ready = ch.queue_declare(name, passive=True).method.message_count
                if ready >= seen - len(dropped):
                    break
                time.sleep(0.01)
            return [*dropped, *kept]

        found: list[dict[str, Any]] = self._call(command, BROWSE_TIMEOUT_SECONDS)
        return found

    def purge(self, queue: str) -> int:
        """Drop every ready message of a queue; how many went."""

        def command(ch: Channel) -> int:
            return int(ch.queue_purge(self.topo.physical(queue)).method.message_count)

        result: int = self._call(command, SETTLE_TIMEOUT_SECONDS)
        return result

    def health(self, queues: list[str] | None = None) -> dict[str, Any]:
        """Connection, round trip, and per queue (known + ``queues``) depth and consumers."""
        started = time.perf_counter()
        names = sorted(set(self.topo.known()) | set(queues or []))
        try:
            found = {}
            for logical in names:
                info = self._inspect(logical)
                if info is not None:
                    found[logical] = {"messages": info[0], "consumers": info[1]}
        except BrokerError as exc:
            return {"ok": False, "url": self.url, "error": str(exc)}
        return {
            "ok": True,
            "url": self.url,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "queues": found,
        }

    def delete_topology(self) -> None:
        """Delete every queue and exchange this broker declared (tests and tools)."""

        def command(ch: Channel) -> None:
            names = [self.topo.physical(q) for q in self.topo.known()]
            for name in [*names, *sorted(self.topo.delay_queues)]:
                ch.queue_delete(name)
            for exchange in (self.topo.exchange, self.topo.dlx, self.topo.control):
                ch.exchange_delete(exchange)

        self._call(command, SETTLE_TIMEOUT_SECONDS)

    def close(self) -> None:
        """Close the publishing connection."""
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()


def connection_errors() -> tuple[type[BaseException], ...]:
    from orchestra_cli.broker.rabbitmq_link import CONNECTION_ERRORS

    return CONNECTION_ERRORS


def _closed_by_broker() -> type[Exception]:
    import pika.exceptions

    closed: type[Exception] = pika.exceptions.ChannelClosedByBroker
    return closed
