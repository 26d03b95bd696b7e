"""The consume loop shared by the orchestrator and the agents.

``concurrency`` handler threads each take their next message straight from
the consumer (whose ``get`` is thread-safe), so a message reaches a handler
with no hand-off through a dispatcher thread, and a handler only takes one
when it is free. A handler returns what to do with its message and settles
nothing itself, so an ack can only follow a committed state change; the
handler's thread then settles it (the brokers' ``Delivery`` methods are
thread-safe: RabbitMQ's ack is written by the handler's thread itself, its
other settlements run on the connection's I/O thread; SQLite's use the
thread's own connection).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestra_cli import tracing
from orchestra_cli.broker.base import Broker, Consumer, Delivery
from orchestra_cli.errors import BrokerUnavailable, OrchestraError, StateUnavailable

log = logging.getLogger(__name__)

HANDLER_ERROR_RETRY_SECONDS = 1.0
OUTAGE_RETRY_SECONDS = 2.0  # a message whose handler could not reach a service, again after
POLL_SECONDS = 0.1
COMPACT_AFTER = 1024  # cancelled deadlines kept before the heap is rebuilt


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
        self._count_lock = threading.Lock()
        self._inflight = 0
        self._failure: BaseException | None = None

    @property
    def inflight(self) -> int:
        """Messages received and not yet settled."""
        return self._inflight

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop``; then finish the messages in hand (drain) and return.

        A consumer that fails for good (the broker gave up reconnecting) stops
        every handler thread and its error is raised here.
        """
        consumer = self.broker.consumer(self.queues, prefetch=self.concurrency, name=self.name)
        halt = threading.Event()  # ``stop``, or a handler thread's consumer failure
        threads = [
            threading.Thread(
                target=self._pull, args=(consumer, stop, halt), name=f"{self.name}_{i}"
            )
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        try:
            while not stop.is_set() and not halt.is_set():
                stop.wait(POLL_SECONDS)
        finally:
            halt.set()
            for thread in threads:  # drain: the handlers in hand finish and settle
                thread.join()
            consumer.close()
        if self._failure is not None:
            raise self._failure

    def _pull(self, consumer: Consumer, stop: threading.Event, halt: threading.Event) -> None:
        try:
            while not halt.is_set() and not stop.is_set():
                delivery = consumer.get(timeout=POLL_SECONDS)
                if delivery is None:
                    continue
                with self._count_lock:
                    self._inflight += 1
                try:
                    self._settle(delivery, self._handle(delivery))
                finally:
                    with self._count_lock:
                        self._inflight -= 1
        except BaseException as exc:  # the consumer gave up (or worse): stop every thread
            self._failure = self._failure or exc
            halt.set()

    def _handle(self, delivery: Delivery) -> Action:
        try:
            with tracing.consumed(delivery.envelope):
                return self.handler(delivery)
        except (StateUnavailable, BrokerUnavailable) as exc:
            # nothing is wrong with the message: an outage must not make healthy work
            # poison (each failed try counted as a delivery: dead letters in a long one)
            log.warning(
                "handling %s: %s; trying again in %gs (not counted as a delivery)",
                delivery.envelope.type,
                exc.message,
                OUTAGE_RETRY_SECONDS,
                extra={"task_id": delivery.envelope.task_id},
            )
            return Defer(OUTAGE_RETRY_SECONDS)
        except OrchestraError as exc:
            log.warning(
                "handling %s failed: %s; retrying",
                delivery.envelope.type,
                exc,
                extra={"task_id": delivery.envelope.task_id},
            )
        except Exception:
            log.exception(
                "handler crashed on %s",
                delivery.envelope.type,
                extra={"task_id": delivery.envelope.task_id},
            )
        return Nack(HANDLER_ERROR_RETRY_SECONDS)

    def _settle(self, delivery: Delivery, action: Action) -> None:
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


def _never() -> None:
    """The callback of a cancelled deadline."""


class Deadline:
    """A scheduled callback; ``cancel`` before it fires and it never does."""

    __slots__ = ("at", "callback", "cancelled")

    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at = at
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        # a cancelled deadline waits in the heap until it is due or compacted away: it
        # must not keep its task's callback (and the events that closes over) alive
        self.callback = _never


class Deadlines:
    """Task time limits on one thread, instead of a ``threading.Timer`` thread per task.

    Most deadlines are cancelled long before they are due (the task finished),
    so cancelling only marks them; the heap is rebuilt when marked ones pile up.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def schedule(self, delay: float, callback: Callable[[], None]) -> Deadline:
        """Call ``callback`` (on the deadline thread) after ``delay`` seconds unless cancelled."""
        deadline = Deadline(time.monotonic() + delay, callback)
        with self._cond:
            if len(self._heap) > COMPACT_AFTER and self._mostly_cancelled():
                self._heap = [item for item in self._heap if not item[2].cancelled]
                heapq.heapify(self._heap)
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            elif earliest is None or deadline.at < earliest:
                self._cond.notify()  # the thread sleeps until a later deadline: wake it
        return deadline

    def _mostly_cancelled(self) -> bool:
        return sum(1 for item in self._heap if item[2].cancelled) * 2 > len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, due = heapq.heappop(self._heap)
            if not due.cancelled:
                try:
                    due.callback()
                except Exception:  # one failing callback must not stop the others
                    log.exception("deadline callback failed")
