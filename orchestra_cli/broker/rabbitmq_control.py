"""RabbitMQ control channel: a fanout exchange, an exclusive queue per agent.

Cancel / stop / ping reach every agent at once instead of at its next
heartbeat. The messages are hints — the state store stays authoritative —
so they are transient and auto-acked, and a consumer that reconnects simply
gets a fresh exclusive queue.
"""

from __future__ import annotations

import json
import logging
import queue
from typing import TYPE_CHECKING, Any

import pika

from orchestra_cli.broker.base import parse_control
from orchestra_cli.broker.rabbitmq_link import Channel, Link
from orchestra_cli.util import new_id

if TYPE_CHECKING:
    from orchestra_cli.broker.rabbitmq import RabbitBroker

log = logging.getLogger(__name__)


def publish(broker: RabbitBroker, message: dict[str, Any]) -> None:
    body = json.dumps(message).encode()
    exchange = broker.topo.control

    def command(ch: Channel) -> None:
        ch.basic_publish(
            exchange,
            "",
            body,
            pika.BasicProperties(content_type="application/json", delivery_mode=1),
        )

    broker._call(command)


class RabbitControlConsumer:
    """Receives every control message published while it is connected."""

    def __init__(self, broker: RabbitBroker, name: str) -> None:
        self.exchange = broker.topo.control
        self._ready: queue.Queue[dict[str, Any]] = queue.Queue()
        self._link = Link(
            broker._url, broker.settings, f"{name}:control:{new_id()[-6:]}", self._on_connect
        )
        self._link.start()

    def _on_connect(self, ch: Channel, generation: int) -> None:
        ch.exchange_declare(self.exchange, exchange_type="fanout", durable=True)
        declared = ch.queue_declare("", exclusive=True, auto_delete=True)
        name = declared.method.queue
        ch.queue_bind(name, self.exchange)
        ch.basic_consume(name, self._on_message, auto_ack=True)

    def _on_message(self, ch: Channel, method: Any, props: Any, body: bytes) -> None:
        message = parse_control(body)
        if message is None:
            log.warning("ignoring a malformed control message (%d bytes)", len(body))
        else:
            self._ready.put(message)

    def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._ready.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._link.close()
