"""The Redis store's event log: one for everything, and one per tree.

A tree's own log is a stream (``events:<root>``) once it has more than a few
events or someone follows it, and until then lines in a string
(``evlog:<root>``): most trees are one task with four events, and a stream
each would cost Redis ~4.8 KB a task (``redis_scripts.add_event``). Readers
take the lines if there are any and the stream otherwise, in that order and
in one round trip: the lines move into the stream in one atomic step, so a
read that finds none finds every event in the stream.
"""

from __future__ import annotations

from typing import Any

from orchestra_cli import ids
from orchestra_cli.errors import NotFoundError
from orchestra_cli.models import Event
from orchestra_cli.state.redis_conn import RedisConnection
from orchestra_cli.util import dumps, loads, now

_NOT_FOUND_HINT = ids.NOT_FOUND_HINT
FOLLOW_TTL_SECONDS = 300  # a follower's mark on a tree without events yet
FOLLOWED_KEPT = 10_000  # trees a process remembers having asked FOLLOW for
PAGE = 1000


def _from_fields(f: dict[str, str]) -> Event:
    return Event(
        seq=int(f["seq"]),
        task_id=f["task"],
        root_id=f["root"],
        type=f["type"],
        time=float(f["time"]),
        data={**loads(f["head"]), **loads(f["data"])},
    )


def _from_lines(log: str, root_id: str, after: int, limit: int) -> list[Event]:
    """Events of a tree's log (``seq TAB task TAB type TAB time TAB head TAB data``)."""
    found: list[Event] = []
    for line in log.splitlines():
        seq, task, type_, time_, head, data = line.split("\t", 5)
        if int(seq) > after:
            found.append(
                Event(
                    seq=int(seq),
                    task_id=task,
                    root_id=root_id,
                    type=type_,
                    time=float(time_),
                    data={**loads(head), **loads(data)},
                )
            )
            if len(found) >= limit:
                break
    return found


class RedisEvents(RedisConnection):
    """``EventLog`` on Redis (state/base.py)."""

    # -- events ------------------------------------------------------------
    def append_event(
        self, task_id: str, root_id: str, type: str, data: dict[str, Any] | None = None
    ) -> None:
        """Append a non-transition event (planned, no_agent, …)."""
        payload = {"id": task_id, "root": root_id, "type": type, "time": now()}
        self._run("event", {**payload, "data": dumps(data or {})})

    def events(
        self, *, root_id: str | None = None, after: int = 0, limit: int = 1000, wait: float = 0.0
    ) -> list[Event]:
        """Events after sequence ``after``, oldest first (trimmed ones are gone).

        ``wait`` blocks on the stream (XREAD BLOCK, which answers at once when
        there are events already: one round trip either way), bounded well
        inside the socket timeout; callers loop for longer waits. A tree's
        events go to its stream from the first wait on (``FOLLOW``).
        """
        block_ms = int(min(wait, self.settings.socket_timeout / 2) * 1000)
        if root_id is not None and block_ms <= 0:
            return self._tree_events(root_id, after, limit)
        key = self.key("events", root_id) if root_id else self.key("events")
        if block_ms > 0:
            if root_id is not None:
                self._follow(root_id)
            reply = self._call(
                "wait for events",
                lambda: self.r.xread({key: f"{after}-0"}, count=limit, block=block_ms),
            )
            entries = reply[0][1] if reply else []  # [[stream, entries]] (RESP2)
        else:
            entries = self._call(
                "read events", lambda: self._reads.xrange(key, min=f"{after + 1}-0", count=limit)
            )
        return [_from_fields(f) for _, f in entries]

    def _follow(self, root_id: str) -> None:
        """From now on the tree's events go to its stream, where a blocked read sees them."""
        if root_id in self._followed:
            return
        if self._run("follow", {"root": root_id, "fttl": FOLLOW_TTL_SECONDS}):
            if len(self._followed) >= FOLLOWED_KEPT:
                self._followed.clear()
            self._followed.add(root_id)  # a stream stays one: no need to ask again

    def _tree_events(self, root_id: str, after: int, limit: int) -> list[Event]:
        log, entries = self._tree_read(root_id, f"{after + 1}-0", limit)
        if log is not None:
            return _from_lines(log, root_id, after, limit)
        return [_from_fields(f) for _, f in entries]

    def _tree_read(self, root_id: str, low: str, count: int) -> tuple[str | None, list[Any]]:
        """The tree's lines (None once it has a stream) and a page of its stream, read
        in that order in one round trip."""

        def read() -> list[Any]:
            pipe = self._reads.pipeline(transaction=False)
            pipe.get(self.key("evlog", root_id))
            pipe.xrange(self.key("events", root_id), min=low, count=count)
            return list(pipe.execute())

        log, entries = self._call("read events", read)
        return log, entries

    def count_events(self, task_id: str, type: str) -> int:
        """How many events of ``type`` the task has had (an audit: reads its tree's
        whole event log, which keeps ``stream_maxlen`` events per tree)."""
        task_key = self.key("t", task_id)
        found = self._call("count events", lambda: self.r.hget(task_key, "root_id"))
        if found is None:
            raise NotFoundError(f"task {task_id} not found", _NOT_FOUND_HINT)
        root = loads(found)
        count, low = 0, "-"
        while True:
            log, page = self._tree_read(root, low, PAGE)
            if log is not None and low == "-":  # (a stream never turns back into lines)
                events = _from_lines(log, root, 0, len(log))
                return sum(1 for e in events if e.task_id == task_id and e.type == type)
            count += sum(1 for _, f in page if f["task"] == task_id and f["type"] == type)
            if len(page) < PAGE:
                return count
            low = "(" + page[-1][0]
