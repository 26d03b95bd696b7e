"""Scripts from many threads to Redis in one round trip (group commit).

An agent's handler threads each claim a task and write its outcome: one Lua
script, one round trip, each. On a busy agent those round trips overlap, and
each costs Redis and the client a read, a write and a wake-up of their own
(profiled with ``make bench``'s no-op rows: ~35 us of Redis CPU and ~100 us of
the client's per round trip on the bench machine, against ~3 us for a command
that rides in a pipeline). Here the first thread to call leads: it sends every
script waiting at that moment in one write on a connection of the batcher's,
reads their replies in order, and hands each caller its own; scripts that
arrive meanwhile go together in the next batch, led by the first of their
callers. A lone call goes straight out, as before.

Each script stays its own atomic step with its own reply. A connection error
fails every script of its batch; each caller's retry (``RedisConnection._call``,
the same operation token) then finds its script applied or runs it again, as
it would after a lost reply on a connection of its own.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

MAX_BATCH = 64  # scripts per round trip
NO_REPLY = object()  # a request's reply before it came


class _Request:
    __slots__ = ("_done", "body", "error", "lead", "reply", "script")

    def __init__(self, script: Any, body: bytes) -> None:
        self.script, self.body = script, body
        self.reply: Any = NO_REPLY
        self.error: BaseException | None = None
        self.lead = False  # woken to lead the next batch, not with a reply
        self._done = threading.Lock()
        self._done.acquire()

    def wake(self) -> None:
        self._done.release()

    def wait(self) -> None:
        self._done.acquire()

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply


_BATCHERS: weakref.WeakSet[ScriptBatcher] = weakref.WeakSet()


def _after_fork() -> None:
    for batcher in list(_BATCHERS):
        batcher._reset()


os.register_at_fork(after_in_child=_after_fork)


class ScriptBatcher:
    """EVALSHA from any thread; concurrent calls share one round trip."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._reset()
        _BATCHERS.add(self)

    def _reset(self) -> None:
        # (again in a forked child: its parent's socket, lock and queue are not its own)
        self._conn: Any = None
        self._lock = threading.Lock()
        self._pending: list[_Request] = []
        self._leading = False  # a thread is sending a batch (or about to)

    def run(self, script: Any, body: bytes) -> Any:
        """The script's reply (a ``redis`` error, e.g. a connection's, raised)."""
        req = _Request(script, body)
        with self._lock:
            self._pending.append(req)
            lead = not self._leading
            self._leading = True
        if not lead:
            try:
                req.wait()  # until its reply, or until it is its turn to lead
            except BaseException:
                self._abandon(req)
                raise
            if not req.lead:
                return req.result()
        self._lead(req)
        return req.result()

    def _lead(self, own: _Request) -> None:
        """Send the waiting scripts (``own`` among them), then hand the lead on: whatever
        happens here, every caller of the batch is woken and the lead goes on."""
        batch: list[_Request] = []
        try:
            with self._lock:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
            self._send(batch)
        finally:
            with self._lock:
                successor = self._pending[0] if self._pending else None
                if successor is None:
                    self._leading = False
                else:
                    successor.lead = True
            if successor is not None:
                successor.wake()
            for req in batch:
                if req is not own:
                    req.wake()

    def _send(self, batch: list[_Request]) -> None:
        redis = sys.modules["redis"]
        try:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._connect()
            conn.send_packed_command(
                conn.pack_commands([("EVALSHA", r.script.sha, 0, r.body) for r in batch])
            )
            missing: list[_Request] = []
            for req in batch:
                try:
                    req.reply = conn.read_response()
                except redis.exceptions.NoScriptError:  # a restarted or flushed server
                    missing.append(req)
                except redis.exceptions.ResponseError as exc:  # this script's own error
                    req.error = exc
            for req in missing:  # rare: the script's text, once per call that needs it
                conn.send_command("EVAL", req.script.script, 0, req.body)
                try:
                    req.reply = conn.read_response()
                except redis.exceptions.ResponseError as exc:
                    req.error = exc
        except BaseException as exc:  # replies may still be on their way: a new socket
            self._drop()
            # The first caller without a reply gets the error; the others a lost
            # connection of their own, so that each retries with its token (their
            # scripts may have run) — and no exception is raised in two threads.
            first = True
            for req in batch:
                if req.reply is NO_REPLY and req.error is None:
                    req.error = (
                        exc
                        if first and isinstance(exc, Exception)
                        else redis.exceptions.ConnectionError(
                            f"a shared round trip failed ({type(exc).__name__}: {exc})"
                        )
                    )
                    first = False
            if not isinstance(exc, Exception):
                raise

    def _abandon(self, req: _Request) -> None:
        """A caller interrupted while it waited: out of the queue, or, had it just been
        made the next leader, it leads first so that nobody waits for it."""
        with self._lock:
            if req in self._pending and not req.lead:
                self._pending.remove(req)
                return
            turn = req.lead
        if turn:
            self._lead(req)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # already gone
                pass

    def close(self) -> None:
        with self._lock:
            self._drop()
