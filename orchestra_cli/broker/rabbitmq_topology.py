"""RabbitMQ topology: exchange and queue names, idempotent declarations, publishing.

See ``broker/rabbitmq.py`` for the layout; this module holds the names and the
declarations a connection makes, and ``publish_on``, the one way a message is
published (declaring what that connection has not declared yet).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from orchestra_cli.models import Q_DEAD, Q_INTAKE, Q_RESULTS
from orchestra_cli.util import now

if TYPE_CHECKING:
    import pika

    from orchestra_cli.broker.rabbitmq_link import Link
    from orchestra_cli.broker.rabbitmq_publisher import DirectLink

Channel = Any  # pika.adapters.blocking_connection.BlockingChannel

MAX_PRIORITY = 10
DELAY_QUEUE_IDLE_MS = 10 * 60 * 1000  # an unused delay queue is deleted after this
STANDARD_QUEUES = (Q_INTAKE, Q_RESULTS, Q_DEAD)


def _delay_ms(delay: float) -> int:
    """Delays are bucketed (100 ms steps) so the number of TTL queues stays small."""
    return max(100, round(delay * 10) * 100)


class Topology:
    """Names and idempotent declarations; remembers what was declared per connection."""

    def __init__(self, prefix: str, queue_type: str) -> None:
        self.prefix = prefix
        self.queue_type = queue_type
        self.exchange = prefix
        self.dlx = f"{prefix}.dlx"
        self.control = f"{prefix}.control"
        self._lock = threading.Lock()
        self.queues: set[str] = set()  # logical names ever declared (for depths, cleanup)
        self.delay_queues: set[str] = set()

    def physical(self, logical: str) -> str:
        return f"{self.prefix}.{logical}"

    def logical(self, physical: str) -> str:
        return physical.removeprefix(f"{self.prefix}.")

    def declare_base(self, ch: Channel) -> None:
        """Exchanges and the dead-letter queue; run on every (re)connect."""
        ch.exchange_declare(self.exchange, exchange_type="direct", durable=True)
        ch.exchange_declare(self.dlx, exchange_type="fanout", durable=True)
        ch.exchange_declare(self.control, exchange_type="fanout", durable=True)
        dead = self.physical(Q_DEAD)
        ch.queue_declare(dead, durable=True, arguments=self._type_args())
        ch.queue_bind(dead, self.dlx)
        ch.queue_bind(dead, self.exchange, routing_key=Q_DEAD)
        with self._lock:
            self.queues.add(Q_DEAD)

    def _type_args(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}

    def declare_queue(self, ch: Channel, logical: str) -> None:
        """A work queue: durable, priority (classic) or replicated (quorum), with the DLX."""
        if logical == Q_DEAD:
            return  # declared by declare_base
        args: dict[str, Any] = {"x-dead-letter-exchange": self.dlx, **self._type_args()}
        if self.queue_type != "quorum":  # quorum queues (3.x) refuse x-max-priority
            args["x-max-priority"] = MAX_PRIORITY
        name = self.physical(logical)
        ch.queue_declare(name, durable=True, arguments=args)
        ch.queue_bind(name, self.exchange, routing_key=logical)
        with self._lock:
            self.queues.add(logical)

    def declare_delay(self, ch: Channel, logical: str, ms: int) -> str:
        """The TTL queue that holds messages for ``ms`` then routes them to ``logical``."""
        name = f"{self.prefix}.delay.{ms}.{logical}"
        args = {
            "x-message-ttl": ms,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-routing-key": logical,
            "x-expires": ms + DELAY_QUEUE_IDLE_MS,
        }
        ch.queue_declare(name, durable=True, arguments=args)
        with self._lock:
            self.delay_queues.add(name)
        return name

    def known(self) -> list[str]:
        with self._lock:
            return sorted(self.queues | set(STANDARD_QUEUES))


class _Declared:
    """What one connection generation has declared, so each publish declares once.

    With ``max_age`` a name is declared again once its declaration is that old:
    delay queues expire (``x-expires``) when unused, and RabbitMQ does not count
    publishing as use, so they must be re-declared while still in service.
    """

    def __init__(self) -> None:
        self.generation = -1
        self.names: dict[str, float] = {}

    def need(self, generation: int, name: str, max_age: float | None = None) -> bool:
        if generation != self.generation:
            self.generation, self.names = generation, {}
        declared = self.names.get(name)
        if declared is not None and (max_age is None or now() - declared < max_age):
            return False
        self.names[name] = now()
        return True


def _properties(
    message_id: str, type_: str, priority: int, headers: dict[str, Any]
) -> pika.BasicProperties:
    import pika

    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        priority=max(0, min(MAX_PRIORITY, priority)),
        message_id=message_id,
        type=type_,
        timestamp=int(now()),
        headers=headers,
    )


def publish_on(
    ch: Channel,
    link: Link | DirectLink,
    topo: Topology,
    declared: _Declared,
    logical: str,
    body: bytes,
    props: pika.BasicProperties,
    delay: float = 0.0,
) -> None:
    """Declare what is missing and publish one persistent message (confirmed by the broker)."""
    if declared.need(link.generation, logical):
        topo.declare_base(ch) if logical == Q_DEAD else topo.declare_queue(ch, logical)
    if delay > 0:
        ms = _delay_ms(delay)
        name = f"{topo.prefix}.delay.{ms}.{logical}"
        # re-declared well within x-expires, which publishing alone does not reset
        if declared.need(link.generation, name, max_age=DELAY_QUEUE_IDLE_MS / 1000 / 4):
            topo.declare_delay(ch, logical, ms)
        ch.basic_publish("", name, body, properties=props, mandatory=True)
    else:
        ch.basic_publish(topo.exchange, logical, body, properties=props, mandatory=True)
