"""One asyncio event loop on a daemon thread, for blocking callers on many threads.

An agent calls the model from one handler thread per slot. The calls run as
coroutines on this loop instead of each thread driving its own socket: with
hundreds in flight that is a coroutine and a connection per call, and one
thread reading every socket, where a thread per socket paid a GIL hand-off on
each read and needed connection pools sharded by thread (profiled with
``make bench``'s LLM-bound rows: see the README's Performance section). A
calling thread blocks on its call's future without polling; a cancel (a set
``threading.Event``) cancels the call's task on the loop within
``CANCEL_POLL_SECONDS``, and the coroutine sees ``asyncio.CancelledError`` at
the ``await`` it was in — it may turn that into an error of its own (one that
says what the call had used), which the caller then gets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
CANCEL_POLL_SECONDS = 0.1  # a cancel reaches its call's task within this
SYNC_THREADS = 32  # the loop's executor: blocking steps of its coroutines (asyncio.to_thread)


class Interrupted(Exception):
    """The call was cancelled before its coroutine said anything of its own."""


class EventLoopThread:
    """A loop started on first use; ``call`` runs a coroutine on it from any thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
                self._loop.set_default_executor(
                    concurrent.futures.ThreadPoolExecutor(
                        SYNC_THREADS, thread_name_prefix=f"{self.name}-sync"
                    )
                )
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name=self.name, daemon=True
                )
                self._thread.start()
            return self._loop

    @property
    def started(self) -> bool:
        return self._loop is not None and not self._loop.is_closed()

    def call(self, make: Callable[[], Awaitable[T]], cancel: threading.Event | None = None) -> T:
        """Run ``make()`` on the loop and return its result (or raise its error).

        A set ``cancel`` cancels the coroutine's task; if the coroutine lets the
        ``CancelledError`` through (or had not started), ``Interrupted`` is raised.
        """
        loop = self.loop()
        task: list[asyncio.Future[T]] = []
        interrupted = False

        async def run() -> T:
            task.append(asyncio.current_task())  # type: ignore[arg-type]
            if interrupted:
                raise asyncio.CancelledError
            return await make()

        def interrupt() -> None:  # on the loop's thread, so no race with run()
            nonlocal interrupted
            interrupted = True
            if task:
                task[0].cancel()

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            with _WATCH.watching(cancel, lambda: _soon(loop, interrupt)):
                return future.result()
        except concurrent.futures.CancelledError:
            raise Interrupted from None

    def start(
        self,
        make: Callable[[], Coroutine[Any, Any, T]],
        done: Callable[[asyncio.Future[T]], None],
        context: contextvars.Context | None = None,
    ) -> None:
        """Run ``make()`` as a task on the loop (in ``context``); ``done(task)`` is called
        on the loop's thread when it ends. Nothing waits for it here."""
        loop = self.loop()

        def begin() -> None:
            try:
                task = loop.create_task(make(), context=context)
            except BaseException as exc:  # ``done`` hears of it, as of a task that raised
                failed: asyncio.Future[T] = loop.create_future()
                failed.set_exception(exc)
                done(failed)
                return
            task.add_done_callback(done)

        loop.call_soon_threadsafe(begin)


SHARED = EventLoopThread("orchestra-aio")  # the process's one loop for model calls and slots


def watch_task(cancel: threading.Event | None) -> Callable[[], None]:
    """Cancel the running task once ``cancel`` is set; returns the function that stops
    watching (call it before the task awaits anything a cancel must not cut short)."""
    if cancel is None:
        return _nothing
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None, "watch_task is called from a task"
    watching = True

    def interrupt() -> None:  # on the loop's thread, as stop() is: no race between them
        if watching:
            task.cancel()

    key = _WATCH.add(cancel, lambda: _soon(loop, interrupt))

    def stop() -> None:
        # a cancel the watch thread had already taken up lands after this as a no-op,
        # not on whatever the task awaits next (a ledger write, the outcome)
        nonlocal watching
        watching = False
        _WATCH.remove(key)

    return stop


def _nothing() -> None:
    pass


def _soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    loop.call_soon_threadsafe(callback)


class _CancelWatch:
    """One thread that interrupts the calls whose cancel event is set.

    A thread per call would cost a thread per slot; this one wakes every
    ``CANCEL_POLL_SECONDS`` only while some call with a cancel event is waiting.
    """

    def __init__(self) -> None:
        self._calls: dict[int, tuple[threading.Event, Callable[[], None]]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._keys = itertools.count()

    def watching(self, cancel: threading.Event | None, interrupt: Callable[[], None]) -> _Watched:
        return _Watched(self, cancel, interrupt)

    def add(self, cancel: threading.Event, interrupt: Callable[[], None]) -> int:
        with self._cond:
            key = next(self._keys)
            self._calls[key] = (cancel, interrupt)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="call-cancel", daemon=True)
                self._thread.start()
            self._cond.notify()
        return key

    def remove(self, key: int) -> None:
        with self._cond:
            self._calls.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._calls:
                    self._cond.wait()
                due = [(k, i) for k, (c, i) in self._calls.items() if c.is_set()]
                for key, _ in due:
                    self._calls.pop(key, None)
            for _, interrupt in due:
                try:
                    interrupt()
                except Exception as exc:  # e.g. the loop closed meanwhile
                    log.debug("interrupting a cancelled call: %s", exc)
            time.sleep(CANCEL_POLL_SECONDS)


class _Watched:
    """``with _WATCH.watching(cancel, interrupt):`` — interrupt once ``cancel`` is set."""

    __slots__ = ("_cancel", "_interrupt", "_key", "_watch")

    def __init__(
        self, watch: _CancelWatch, cancel: threading.Event | None, interrupt: Callable[[], None]
    ) -> None:
        self._watch, self._cancel, self._interrupt = watch, cancel, interrupt
        self._key: int | None = None

    def __enter__(self) -> None:
        if self._cancel is not None:
            self._key = self._watch.add(self._cancel, self._interrupt)

    def __exit__(self, *exc: object) -> None:
        if self._key is not None:
            self._watch.remove(self._key)


_WATCH = _CancelWatch()
