"""Dramatiq side of the benchmark: a no-op actor on RabbitMQ, completions counted in Redis."""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

QUEUE = os.environ.get("BENCH_QUEUE", "bench-dramatiq")
COUNTER = f"{QUEUE}:done"

broker = RabbitmqBroker(url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
dramatiq.set_broker(broker)
_redis = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(i: int) -> None:
    _redis.incr(COUNTER)
    _redis.set(f"{QUEUE}:item:{i}", 1, ex=600)
