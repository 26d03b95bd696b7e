"""The message broker seam: queues, deliveries, acks and the dead-letter queue."""

from orchestra_cli.broker.base import Broker, Consumer, Delivery

__all__ = ["Broker", "Consumer", "Delivery"]
