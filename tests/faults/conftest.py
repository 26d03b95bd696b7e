"""Fault injection against real services: hostile messages, outages, bad input.

Each test isolates itself as the services tests do (its own Redis key prefix
and RabbitMQ queue prefix, deleted afterwards); an outage is a server or a
proxy the test starts and stops itself — the shared services never go down.
A missing service skips on a laptop and fails when ``CI`` is set.
"""

from __future__ import annotations

from typing import Any

from tests.contract.conftest import AMQP_URL
from tests.services.conftest import svc as svc  # Redis + RabbitMQ under a prefix of its own


def publish_with_headers(
    physical_queue: str, body: bytes, headers: dict[str, Any], **props: Any
) -> None:
    """Publish straight to a queue with any headers and properties (another client)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        conn.channel().basic_publish(
            "", physical_queue, body, pika.BasicProperties(headers=headers, **props)
        )
    finally:
        conn.close()
