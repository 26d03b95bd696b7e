"""Celery side of the benchmark: a no-op task on RabbitMQ with a Redis result backend."""

from __future__ import annotations

import os

from celery import Celery

QUEUE = os.environ.get("BENCH_QUEUE", "bench-celery")

app = Celery(
    "bench",
    broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,  # the closest Celery gets to ack-after-work
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)


@app.task(name="bench.noop")
def noop(i: int) -> int:
    return i
