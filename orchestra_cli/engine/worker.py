"""The consume loop shared by the orchestrator and the agents.

Messages are handled on a thread pool; settling (ack / nack / dead-letter)
happens back on the loop's own thread, because broker clients such as pika
are not thread-safe. A handler returns what to do with its message and
settles nothing itself, so an ack can only follow a committed state change.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from orchestra_cli.broker.base import Broker, Delivery
from orchestra_cli.errors import OrchestraError

log = logging.getLogger(__name__)

HANDLER_ERROR_RETRY_SECONDS = 1.0
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class Nack:
    """Back to the queue, visible again after ``delay`` seconds."""

    delay: float = 0.0


@dataclass(frozen=True)
class Defer:
    """Back to the queue for later, not counted as a delivery (never becomes poison)."""

    delay: float


@dataclass(frozen=True)
class DeadLetter:
    reason: str


Action = Ack | Nack | Defer | DeadLetter
Handler = Callable[[Delivery], Action]


class ConsumerLoop:
    """Consume ``queues`` with ``concurrency`` handler threads until ``stop`` is set."""

    def __init__(
        self,
        broker: Broker,
        queues: list[str],
        handler: Handler,
        *,
        concurrency: int,
        name: str,
    ) -> None:
        self.broker = broker
        self.queues = queues
        self.handler = handler
        self.concurrency = max(1, concurrency)
        self.name = name
        self.inflight = 0
        self._done: queue.Queue[tuple[Delivery, Action]] = queue.Queue()

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop``; then finish the messages in hand (drain) and return."""
        consumer = self.broker.consumer(self.queues, prefetch=self.concurrency, name=self.name)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=self.name)
        try:
            while not stop.is_set():
                self._settle_ready(block=self.inflight >= self.concurrency)
                if self.inflight >= self.concurrency:
                    continue
                delivery = consumer.get(timeout=POLL_SECONDS)
                if delivery is not None:
                    self.inflight += 1
                    pool.submit(self._work, delivery)
            while self.inflight > 0:
                self._settle_ready(block=True)
        finally:
            pool.shutdown(wait=True)
            self._settle_ready(block=False)
            consumer.close()

    def _work(self, delivery: Delivery) -> None:
        try:
            action = self.handler(delivery)
        except OrchestraError as exc:
            log.warning(
                "handling %s failed: %s; retrying",
                delivery.envelope.type,
                exc,
                extra={"task_id": delivery.envelope.task_id},
            )
            action = Nack(HANDLER_ERROR_RETRY_SECONDS)
        except Exception:
            log.exception(
                "handler crashed on %s",
                delivery.envelope.type,
                extra={"task_id": delivery.envelope.task_id},
            )
            action = Nack(HANDLER_ERROR_RETRY_SECONDS)
        self._done.put((delivery, action))

    def _settle_ready(self, *, block: bool) -> None:
        try:
            item = self._done.get(timeout=POLL_SECONDS) if block else self._done.get_nowait()
        except queue.Empty:
            return
        while True:
            self._settle(*item)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                return

    def _settle(self, delivery: Delivery, action: Action) -> None:
        self.inflight -= 1
        try:
            if isinstance(action, Ack):
                delivery.ack()
            elif isinstance(action, Nack):
                delivery.nack(delay=action.delay)
            elif isinstance(action, Defer):
                delivery.defer(delay=action.delay)
            else:
                log.warning(
                    "dead-lettering %s: %s",
                    delivery.envelope.type,
                    action.reason,
                    extra={"task_id": delivery.envelope.task_id},
                )
                delivery.dead_letter(action.reason)
        except Exception:  # the broker will redeliver an unsettled message
            log.exception("could not settle message for task %s", delivery.envelope.task_id)
