"""A consumer's acks, coalesced: one ``multiple`` ack for a run of finished deliveries.

RabbitMQ numbers a channel's deliveries 1, 2, 3, … and ``basic_ack(tag,
multiple=True)`` settles every unsettled one up to ``tag``. So when the
oldest delivery in hand finishes, one frame settles it and every delivery
right after it that finished meanwhile. A delivery that finishes while an
older one still runs waits for it (``deferred``) only while that one was
handed out less than ``YOUNG_SECONDS`` ago — a short task likely to end soon;
behind an older one it is acked at once on its own, and a deferred ack that
waited ``STALE_SECONDS`` goes on its own at the connection thread's next turn
(which comes with the next delivery, or after its I/O tick, 50 ms, with the
prefetch window full). So a finished delivery holds its prefetch slot ~70 ms
at most, and only when it finished within 20 ms of an older one's hand-out
that then ran on: nothing is woken for a deferral (a wake-up per batch cost
the agents what the batching saved, measured).

A settle op that fails (its copy unroutable) leaves its tag in the ledger, in
hand: RabbitMQ still holds the message, so no multiple-ack may cover it; acks
behind it go one by one (it is old soon) until the connection is renewed.

Profiled (the bench's services no-op row, 2 agents x 8 threads): acks one by
one were ~0.6 ms of the ~2.4 ms of CPU a task cost (RabbitMQ's and the
agents', measured against consuming with ``auto_ack``); coalesced, ~1.6 acks
go in a frame.

Every frame is computed and written under ``lock``, in order: a multiple-ack
must never reach RabbitMQ before an ack it covers (that ack's tag would then
be unknown, and RabbitMQ closes the channel for it). The ledger is one
connection's; ``reset`` starts the next connection's.
"""

from __future__ import annotations

import collections
import threading
import time

YOUNG_SECONDS = 0.02
STALE_SECONDS = 0.02

Ack = tuple[int, bool]  # (delivery tag, multiple)


class AckLedger:
    """The deliveries handed out and not settled, oldest first, and the acks deferred.

    ``take``, ``settled``, ``stale`` and ``rest`` are called with ``lock`` held, and
    the frame they return is written before it is released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._unacked: collections.deque[int] = collections.deque()
        self._since: dict[int, float] = {}  # tag → when it was handed out
        self._done: dict[int, float] = {}  # deferred: tag → when its handler finished

    @property
    def deferred(self) -> bool:
        return bool(self._done)

    def reset(self) -> None:
        """A new connection: the old one's tags mean nothing (RabbitMQ requeued them)."""
        with self.lock:
            self._unacked.clear()
            self._since.clear()
            self._done.clear()

    def handed_out(self, tag: int) -> None:
        with self.lock:
            self._unacked.append(tag)
            self._since[tag] = time.monotonic()

    def take(self, tag: int) -> Ack | None:
        """``tag`` finished: the ack to write now, or None (deferred behind a young one)."""
        unacked = self._unacked
        if tag not in self._since:  # not in hand on this connection: nothing to ack
            return None
        if unacked[0] == tag:
            return self._run()
        now = time.monotonic()
        if now - self._since[unacked[0]] < YOUNG_SECONDS:
            self._done[tag] = now
            return None
        self._drop(tag)
        return tag, False

    def settled(self, tag: int) -> Ack | None:
        """``tag`` was settled otherwise (nacked, dead-lettered): out of the way, and
        the run of finished ones it held up, if any, to ack now."""
        self._drop(tag)
        if self._unacked and self._unacked[0] in self._done:
            return self._run()
        return None

    def stale(self) -> list[int]:
        """Deferred acks that waited too long: each to write on its own."""
        now = time.monotonic()
        old = [tag for tag, at in self._done.items() if now - at >= STALE_SECONDS]
        for tag in old:
            self._drop(tag)
        return old

    def rest(self) -> list[int]:
        """Every deferred ack (closing): each to write on its own."""
        tags = list(self._done)
        for tag in tags:
            self._drop(tag)
        return tags

    def _run(self) -> Ack:
        unacked, done, since = self._unacked, self._done, self._since
        first = last = unacked.popleft()
        since.pop(last, None)
        done.pop(last, None)
        while unacked and unacked[0] in done:
            last = unacked.popleft()
            since.pop(last, None)
            del done[last]
        return last, last != first

    def _drop(self, tag: int) -> None:
        self._since.pop(tag, None)
        self._done.pop(tag, None)
        try:
            self._unacked.remove(tag)
        except ValueError:  # not handed out on this connection
            pass
