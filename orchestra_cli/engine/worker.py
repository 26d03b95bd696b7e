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

A handler may instead return ``Later``: the rest of its work is a coroutine
on the process's event loop (``aio.SHARED``), and the thread takes its next
message at once. The agent does this for a single model call, so a few
threads keep hundreds of calls in flight; the coroutine's last, blocking step
(the task's transition) and the settlement run together on the consume
loop's settlement threads, and a drain waits for these messages too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from orchestra_cli import tracing
from orchestra_cli.broker.base import Broker, Consumer, Delivery
from orchestra_cli.errors import BrokerUnavailable, OrchestraError, StateUnavailable

log = logging.getLogger(__name__)

HANDLER_ERROR_RETRY_SECONDS = 1.0
OUTAGE_RETRY_SECONDS = 2.0  # a message whose handler could not reach a service, again after
POLL_SECONDS = 0.1
SETTLE_THREADS = 4  # at least, for Later's outcomes and acks (one per handler thread)
COMPACT_AFTER = 1024  # schedules between looks at how many of the heap are cancelled


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


@dataclass(frozen=True)
class Later:
    """The rest of the handling is a coroutine on the process's loop (``aio.SHARED``):
    the handler's thread takes its next message meanwhile, and the action the
    coroutine returns settles this one — or, if it returns a function, its blocking
    last step: that runs on the consume loop's settlement threads, and the action it
    returns settles the message on the same thread. A slot costs a task on the loop,
    not a thread."""

    work: Callable[[], Coroutine[Any, Any, Action | Callable[[], Action]]]
    context: contextvars.Context | None = None  # the handler's (tracing: the message's)
    # What the handler took on for the work (a time limit, a span, a slot of its own) and
    # the work's conclusion would give back: called with the error instead, when the work
    # could not start or raised past its own conclusion (the message goes back).
    abandon: Callable[[BaseException], None] | None = None


Handler = Callable[[Delivery], Action | Later]


def _abandon(later: Later, exc: BaseException) -> None:
    if later.abandon is not None:
        try:
            later.abandon(exc)
        except Exception:  # the message still goes back
            log.exception("giving back what a handler took on failed")


def _said(future: concurrent.futures.Future[None]) -> None:
    """A settlement that raised (its message is redelivered): in the log, not lost."""
    exc = future.exception()
    if exc is not None:
        log.error("settling a message failed", exc_info=exc)


class ConsumerLoop:
    """Consume ``queues``, ``concurrency`` messages in hand, until ``stop`` is set.

    ``threads`` handler threads (default: one per message in hand) take the
    messages; a handler that returns ``Later`` frees its thread at once, so a
    few threads keep ``concurrency`` messages in flight.
    """

    def __init__(
        self,
        broker: Broker,
        queues: list[str],
        handler: Handler,
        *,
        concurrency: int,
        name: str,
        threads: int | None = None,
    ) -> None:
        self.broker = broker
        self.queues = queues
        self.handler = handler
        self.concurrency = max(1, concurrency)
        self.threads = max(1, min(threads or self.concurrency, self.concurrency))
        self.name = name
        self._count_lock = threading.Condition()
        self._inflight = 0
        # Later's settlements: threads of their own, so a slow step on the loop's
        # shared executor (a budgeted call's token count, a DNS lookup) never holds up
        # an ack, nor an ack a call
        self._settler: concurrent.futures.ThreadPoolExecutor | None = None
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
            for i in range(self.threads)
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
            with self._count_lock:  # and so do the ones handed to the loop (Later)
                while self._inflight:
                    self._count_lock.wait(POLL_SECONDS)
            if self._settler is not None:
                self._settler.shutdown(wait=True)
                self._settler = None
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
                    outcome = self._handle(delivery)
                except BaseException:  # unsettled: the broker redelivers it
                    self._uncount()
                    raise
                if isinstance(outcome, Later):
                    self._park(delivery, outcome)
                else:
                    self._settle_counted(delivery, outcome)
        except BaseException as exc:  # the consumer gave up (or worse): stop every thread
            self._failure = self._failure or exc
            halt.set()

    def _settle_counted(self, delivery: Delivery, action: Action) -> None:
        try:
            self._settle(delivery, action)
        finally:
            self._uncount()

    def _uncount(self) -> None:
        with self._count_lock:
            self._inflight -= 1
            if not self._inflight:
                self._count_lock.notify_all()

    def _park(self, delivery: Delivery, later: Later) -> None:
        """Run ``later`` on the loop; its action settles ``delivery`` on a settlement
        thread (a settlement may block: SQLite's is a write)."""
        from orchestra_cli.aio import SHARED

        def done(task: asyncio.Future[Action | Callable[[], Action]]) -> None:  # on the loop
            try:
                outcome = task.result()
            except BaseException as exc:
                _abandon(later, exc)
                outcome = self._failed(delivery, exc)
            try:
                settler.submit(finish, outcome).add_done_callback(_said)
            except RuntimeError as exc:  # shut down (interpreter exit): the broker redelivers
                log.warning("%s: cannot settle a message now (%s)", self.name, exc)
                self._uncount()

        def finish(outcome: Action | Callable[[], Action]) -> None:  # on a settlement thread
            if callable(outcome):
                try:
                    outcome = outcome()
                except Exception as exc:
                    outcome = self._failed(delivery, exc)
                except BaseException:
                    self._uncount()  # unsettled: the broker redelivers it
                    raise
            self._settle_counted(delivery, outcome)

        settler = self._settlements()
        try:
            SHARED.start(later.work, done, later.context)
        except Exception as exc:  # no loop to run it on: the message goes back
            _abandon(later, exc)
            self._settle_counted(delivery, self._failed(delivery, exc))

    def _settlements(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._count_lock:
            if self._settler is None:
                self._settler = concurrent.futures.ThreadPoolExecutor(
                    max(SETTLE_THREADS, self.threads), thread_name_prefix=f"{self.name}-settle"
                )
            return self._settler

    def _handle(self, delivery: Delivery) -> Action | Later:
        try:
            with tracing.consumed(delivery.envelope):
                outcome = self.handler(delivery)
                if isinstance(outcome, Later):  # it goes on in the message's context
                    return Later(outcome.work, contextvars.copy_context(), outcome.abandon)
                return outcome
        except Exception as exc:
            return self._failed(delivery, exc)

    def _failed(self, delivery: Delivery, exc: BaseException) -> Action:
        """What to do with a message whose handler raised ``exc``."""
        if isinstance(exc, StateUnavailable | BrokerUnavailable):
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
        if isinstance(exc, OrchestraError):
            log.warning(
                "handling %s failed: %s; retrying",
                delivery.envelope.type,
                exc,
                extra={"task_id": delivery.envelope.task_id},
            )
        else:
            log.error(
                "handler crashed on %s",
                delivery.envelope.type,
                exc_info=exc,
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
        self._since_compact = 0  # schedules since the heap was last looked at
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def schedule(self, delay: float, callback: Callable[[], None]) -> Deadline:
        """Call ``callback`` (on the deadline thread) after ``delay`` seconds unless cancelled."""
        deadline = Deadline(time.monotonic() + delay, callback)
        with self._cond:
            # looked at every COMPACT_AFTER schedules, not at each: a scan of the heap
            # per task was 6% of a busy LLM-bound agent's CPU at 1,024 in flight
            self._since_compact += 1
            if self._since_compact >= COMPACT_AFTER:
                self._since_compact = 0
                if self._mostly_cancelled():
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
