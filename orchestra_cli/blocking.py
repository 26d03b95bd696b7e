"""Blocking work of many coroutines on a few threads: more only while some are stuck.

A tool-using agent keeps hundreds of loops in flight as coroutines on the
process's loop (``aio.SHARED``); between two model calls each has blocking
work to do — its steps' writes, its tool calls, its workspace's files. A
thread per loop made hundreds of threads runnable at once whenever a round of
answers came back, all queueing for the GIL (strace: ~4,700 futex calls a
task at 100 in flight). ``BlockingPool`` runs that work on ``core`` threads,
so at most that many compete; but a tool call can block for minutes (a build
in the sandbox, a wait for a child task), and ``core`` such calls must not
stall every other loop. So, as Go's scheduler does for a thread stuck in a
system call: an item inside ``with blocking.waiting():`` (a tool waiting for
its command, its server or a child task) stops counting at once, and so does
one that has run longer than ``patience``; while items wait for a thread, one
is added. Threads above ``core`` end after ``idle`` seconds without work.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
CORE_THREADS = 4  # at most this many items run at once, unless some are stuck
# an item running longer than this is stuck and stops counting; not much less: under
# load an item's wait for the GIL would pass for being stuck (and add threads to wait)
PATIENCE_SECONDS = 0.5
IDLE_SECONDS = 30.0  # a thread above the core ends after this long without work
MAX_THREADS = 4096  # stuck items and all: a bound, not a target


_worker = threading.local()  # on a pool's thread: .pool, the pool it works for


@contextmanager
def waiting() -> Iterator[None]:
    """Around a wait for something outside the process (a command, a server, a child
    task): on a pool's thread the item stops counting against its ``core`` meanwhile,
    and a thread is added if items wait. Elsewhere it does nothing."""
    pool: BlockingPool | None = getattr(_worker, "pool", None)
    if pool is None:
        yield
        return
    pool._waits(True)
    try:
        yield
    finally:
        pool._waits(False)


class _Item:
    __slots__ = ("args", "context", "fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        self.fn, self.args, self.loop, self.future = fn, args, loop, future
        self.context = contextvars.copy_context()  # the caller's: its trace span, say


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:  # on the loop
    if future.cancelled():  # the awaiting coroutine was cancelled meanwhile
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class BlockingPool:
    """``await pool.run(fn, *args)``: ``fn(*args)`` on one of the pool's threads, in the
    caller's context (contextvars), its result or its error back in the coroutine."""

    def __init__(
        self,
        name: str,
        *,
        core: int = CORE_THREADS,
        patience: float = PATIENCE_SECONDS,
        idle: float = IDLE_SECONDS,
        limit: int = MAX_THREADS,
    ) -> None:
        self.name = name
        self.core = max(1, core)
        self.patience = patience
        self.idle = idle
        self.limit = max(self.core, limit)
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._idle = 0  # threads waiting for an item
        self._starting = 0  # threads started that have not yet looked at the queue
        self._busy: dict[int, float] = {}  # thread → when its current item started
        self._watching = False  # a thread adds threads while the queue waits on stuck ones
        self._ids = 0

    @property
    def threads(self) -> int:
        with self._cond:
            return self._idle + self._starting + len(self._busy)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._submit(_Item(fn, args, loop, future))
        return await future

    def _submit(self, item: _Item) -> None:
        with self._cond:
            self._queue.append(item)
            if self._idle + self._starting >= len(self._queue):
                self._cond.notify()  # a thread free for it already
                return
            if self._idle:
                self._cond.notify()
            if not self._grow():
                self._watch()

    def _grow(self) -> bool:
        """Under the lock: add a thread if fewer than ``core`` run unstuck items."""
        now = time.monotonic()
        running = sum(1 for began in self._busy.values() if now - began < self.patience)
        total = self._idle + self._starting + len(self._busy)
        if running + self._idle + self._starting >= self.core or total >= self.limit:
            return False
        self._starting += 1
        self._ids += 1
        thread = threading.Thread(target=self._work, name=f"{self.name}-{self._ids}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (interpreter exit): the others go on
            self._starting -= 1
            return False
        return True

    def _watch(self) -> None:
        """Under the lock: while items wait behind stuck ones, look again every
        ``patience`` and add threads as items become stuck."""
        if self._watching:
            return
        self._watching = True
        threading.Thread(target=self._watcher, name=f"{self.name}-watch", daemon=True).start()

    def _watcher(self) -> None:
        while True:
            time.sleep(self.patience)
            with self._cond:
                while len(self._queue) > self._idle + self._starting and self._grow():
                    pass
                if not self._queue:
                    self._watching = False
                    return

    def _waits(self, entering: bool) -> None:
        me = threading.get_ident()
        with self._cond:
            if me not in self._busy:
                return
            # a start long ago counts as stuck; on the way out it counts again, from now
            self._busy[me] = 0.0 if entering else time.monotonic()
            if entering and len(self._queue) > self._idle + self._starting:
                self._grow()

    def _work(self) -> None:
        me = threading.get_ident()
        _worker.pool = self
        with self._cond:
            self._starting -= 1
        while True:
            with self._cond:
                self._idle += 1
                while not self._queue:
                    woken = self._cond.wait(self.idle)
                    total = self._idle + self._starting + len(self._busy)
                    if not woken and not self._queue and total > self.core:
                        self._idle -= 1
                        return
                self._idle -= 1
                item = self._queue.popleft()
                self._busy[me] = time.monotonic()
            try:
                value, ok = item.context.run(item.fn, *item.args), True
            except BaseException as exc:  # the coroutine gets it, whatever it is
                value, ok = exc, False
            try:
                item.loop.call_soon_threadsafe(_settle, item.future, ok, value)
            except RuntimeError:  # the loop closed meanwhile: nobody waits for it
                log.debug("%s: an item finished after its loop closed", self.name)
            del item, value
            with self._cond:
                del self._busy[me]
