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
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
CORE_THREADS = 4  # at most this many items run at once, unless some are stuck
# an item running longer than this is stuck and stops counting; not much less: under
# load an item's wait for the GIL would pass for being stuck (and add threads to wait)
PATIENCE_SECONDS = 0.5
IDLE_SECONDS = 30.0  # a thread above the core ends after this long without work
WATCH_SECONDS = 0.01  # while items wait for a thread, how often the watcher looks
SATURATED = 0.8  # of the CPU it may use: a process using less is waiting, not computing
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
CFS_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")  # cgroup v1: -1 for none
CFS_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
# stuck items and all: a bound, not a target (at it, items wait for a thread to free up:
# thousands of steps waiting on steps of the same pool could then wait for each other)
MAX_THREADS = 4096


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


class _Sleeper:
    """An idle thread: woken with an item (``item``) or by its idle time-out."""

    __slots__ = ("item", "wake")

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.item: _Item | None = None


def available_cores() -> float:
    """The CPUs this process may use: its affinity, under its cgroup's quota if any."""
    cores = float(len(os.sched_getaffinity(0)))
    try:
        quota, period = CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    try:
        v1 = int(CFS_QUOTA.read_text())
        if v1 > 0:
            cores = min(cores, v1 / int(CFS_PERIOD.read_text()))
    except (OSError, ValueError, ZeroDivisionError):
        pass
    return cores


class BlockingPool:
    """``await pool.run(fn, *args)``: ``fn(*args)`` on one of the pool's threads, in the
    caller's context (contextvars), its result or its error back in the coroutine.

    Idle threads are woken latest first, so the ones a burst added stay idle and end;
    a thread is woken (or started) for an item only while fewer than ``core`` run
    unstuck items, or when the watcher finds the process waiting on I/O."""

    def __init__(
        self,
        name: str,
        *,
        core: int = CORE_THREADS,
        patience: float = PATIENCE_SECONDS,
        idle: float = IDLE_SECONDS,
        limit: int = MAX_THREADS,
        cpu: Callable[[], float] = time.process_time,
        cores: float | None = None,
    ) -> None:
        """``cpu``: the process's CPU seconds so far; ``cores``: the CPUs it may use (its
        affinity and cgroup quota by default) — the watcher's measures of busy."""
        self.name = name
        self.core = max(1, core)
        self.patience = patience
        self.idle = idle
        self.limit = max(self.core, limit)
        self._cpu = cpu
        # the GIL runs one thread's Python at a time: busy is most of a core at most
        self._busy_cpu = SATURATED * min(1.0, available_cores() if cores is None else cores)
        self._lock = threading.Lock()
        self._queue: collections.deque[_Item] = collections.deque()
        self._sleepers: list[_Sleeper] = []  # idle threads, the latest last
        self._starting = 0  # threads started or woken with an item, not yet running it
        self._busy: dict[int, float] = {}  # thread → when its current item started
        self._threads = 0
        self._watching = False  # a thread adds threads while items wait for one
        self._ids = 0

    @property
    def threads(self) -> int:
        with self._lock:
            return self._threads

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._submit(_Item(fn, args, loop, future))
        return await future

    def _submit(self, item: _Item) -> None:
        with self._lock:
            self._queue.append(item)
            if self._room() and self._add_runner():
                return
            if not self._threads:  # none to take it, none to be had
                self._queue.pop()
                raise RuntimeError(f"{self.name}: no thread to run a blocking step on")
            self._watch()  # from here on it runs, sooner or later

    def _room(self) -> bool:
        """Under the lock: fewer than ``core`` threads run (or are about to run) items
        that are not stuck."""
        now = time.monotonic()
        running = sum(1 for began in self._busy.values() if now - began < self.patience)
        return running + self._starting < self.core

    def _add_runner(self) -> bool:
        """Under the lock: the queue's next item to the latest idle thread, or to a new
        one; False if no thread is to be had (the item stays queued)."""
        item = self._queue.popleft()
        if self._sleepers:
            sleeper = self._sleepers.pop()
            sleeper.item = item
            self._starting += 1
            sleeper.wake.set()
            return True
        if self._threads < self.limit:
            self._ids += 1
            given = _Sleeper()  # the item by hand, not in the thread's args (kept for life)
            given.item = item
            thread = threading.Thread(
                target=self._work, args=(given,), name=f"{self.name}-{self._ids}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:  # no thread to be had (a pid limit, interpreter exit)
                pass
            else:
                self._threads += 1
                self._starting += 1
                return True
        self._queue.appendleft(item)
        return False

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
        ``SATURATED`` of the CPU it may use meanwhile, its threads wait on I/O (a state
        store not on loopback, say) and more of them help — up to twice as many each
        look; if it was busy, they would only queue for the GIL, and only stuck items
        make room."""
        cpu, wall = self._cpu(), time.monotonic()
        while True:
            time.sleep(WATCH_SECONDS)
            cpu_now, wall_now = self._cpu(), time.monotonic()
            quiet = cpu_now - cpu < self._busy_cpu * (wall_now - wall)
            cpu, wall = cpu_now, wall_now
            with self._lock:
                more = min(len(self._queue), max(1, len(self._busy))) if quiet else 0
                while self._queue and (more > 0 or self._room()) and self._add_runner():
                    more -= 1
                if not self._queue:
                    self._watching = False
                    return

    def _waits(self, entering: bool) -> None:
        me = threading.get_ident()
        with self._lock:
            if me not in self._busy:
                return
            # a start long ago counts as stuck; on the way out it counts again, from now
            self._busy[me] = 0.0 if entering else time.monotonic()
            while entering and self._queue and self._room() and self._add_runner():
                pass

    def _work(self, sleeper: _Sleeper) -> None:
        me = threading.get_ident()
        _worker.pool = self
        item, sleeper.item = sleeper.item, None
        while True:
            if item is not None:
                with self._lock:
                    self._starting -= 1
                    self._busy[me] = time.monotonic()
                while item is not None:  # this item, then the queue's while it has any
                    self._run(item)
                    item = None  # nothing of it kept while this thread waits
                    with self._lock:
                        if self._queue:
                            item = self._queue.popleft()
                            self._busy[me] = time.monotonic()
                        else:
                            del self._busy[me]
                            sleeper.wake.clear()
                            self._sleepers.append(sleeper)
            sleeper.wake.wait(self.idle)
            with self._lock:
                if sleeper.item is not None:  # woken with an item
                    item, sleeper.item = sleeper.item, None
                    continue
                self._sleepers.remove(sleeper)  # timed out with nothing to do
                if self._threads > self.core:
                    self._threads -= 1
                    return
                sleeper.wake.clear()
                self._sleepers.append(sleeper)

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
