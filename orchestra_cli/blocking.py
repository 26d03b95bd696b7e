"""Blocking work of many coroutines on a few threads: more only while they wait.

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
is added. And while items wait and the process uses less than most of a core,
its threads are waiting on I/O (a state store across a network: 20 ms round
trips on 4 threads would queue 400 loops' steps for seconds), so threads are
added — up to twice as many every ``WATCH_SECONDS``; a busy process gets none
(they would only queue for the GIL). Threads above ``core`` end after ``idle``
seconds without work.
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
WATCH_SECONDS = 0.01  # while items wait for a thread, how often the watcher looks
SATURATED = 0.8  # of a core: a process using less is waiting, not computing
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
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        """``cpu``: the process's CPU seconds so far (the watcher's measure of busy)."""
        self.name = name
        self.core = max(1, core)
        self.patience = patience
        self.idle = idle
        self.limit = max(self.core, limit)
        self._cpu = cpu
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
            if not self._idle + self._starting and not self._grow() and not self._busy:
                raise RuntimeError(f"{self.name}: no thread to run a blocking step on")
            self._queue.append(item)  # from here on it runs, sooner or later
            if self._idle:
                self._cond.notify()
            if len(self._queue) > self._idle + self._starting:
                self._watch()

    def _grow(self, *, beyond_core: bool = False) -> bool:
        """Under the lock: add a thread if fewer than ``core`` run unstuck items (or, with
        ``beyond_core``, whatever the core: the watcher saw the process idle)."""
        now = time.monotonic()
        running = sum(1 for began in self._busy.values() if now - began < self.patience)
        total = self._idle + self._starting + len(self._busy)
        if total >= self.limit or (
            not beyond_core and running + self._idle + self._starting >= self.core
        ):
            return False
        self._ids += 1
        thread = threading.Thread(target=self._work, name=f"{self.name}-{self._ids}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (a pid limit, interpreter exit)
            return False
        self._starting += 1
        return True

    def _watch(self) -> None:
        """Under the lock: a thread that adds threads while items wait for one."""
        if self._watching:
            return
        watcher = threading.Thread(target=self._watcher, name=f"{self.name}-watch", daemon=True)
        try:
            watcher.start()
        except RuntimeError:  # the next submit tries again; the threads there go on
            return
        self._watching = True

    def _watcher(self) -> None:
        """Every ``WATCH_SECONDS`` while items wait: if the process used less than
        ``SATURATED`` of a core meanwhile, its threads wait on I/O (a state store not on
        loopback, say) and more of them help — up to twice as many each look; if it was
        busy, they would only queue for the GIL, and only stuck items make room."""
        cpu, wall = self._cpu(), time.monotonic()
        while True:
            time.sleep(WATCH_SECONDS)
            cpu_now, wall_now = self._cpu(), time.monotonic()
            quiet = (cpu_now - cpu) < SATURATED * (wall_now - wall)
            cpu, wall = cpu_now, wall_now
            with self._cond:
                short = len(self._queue) - self._idle - self._starting
                if quiet:
                    short = min(short, len(self._busy))  # at most double the threads
                while short > 0 and self._grow(beyond_core=quiet):
                    short -= 1
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
                self._cond.release()
                try:
                    self._run(item)
                finally:
                    self._cond.acquire()
                    del self._busy[me]

    def _run(self, item: _Item) -> None:
        try:
            value, ok = item.context.run(item.fn, *item.args), True
        except BaseException as exc:  # the coroutine gets it, whatever it is
            value, ok = exc, False
        try:
            item.loop.call_soon_threadsafe(_settle, item.future, ok, value)
        except RuntimeError:  # the loop closed meanwhile: nobody waits for it
            log.debug("%s: an item finished after its loop closed", self.name)


# The process's pool for its coroutines' blocking steps: a tool loop's (engine/acting.py),
# a metered call's ledger (engine/budget.py) — never the loop's default executor, which
# the SDK's own requests need (a step waiting there on the loop could starve them)
STEPS = BlockingPool("steps")
