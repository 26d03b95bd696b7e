"""The Redis store's event log: one stream per tree and one for everything."""

from __future__ import annotations

import functools
from typing import Any

from orchestra_cli import ids
from orchestra_cli.errors import NotFoundError
from orchestra_cli.models import Event
from orchestra_cli.state.redis_conn import RedisConnection
from orchestra_cli.util import dumps, loads, now

_NOT_FOUND_HINT = ids.NOT_FOUND_HINT


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
        inside the socket timeout; callers loop for longer waits.
        """
        key = self.key("events", root_id) if root_id else self.key("events")
        block_ms = int(min(wait, self.settings.socket_timeout / 2) * 1000)
        if block_ms > 0:
            reply = self._call(
                "wait for events",
                lambda: self.r.xread({key: f"{after}-0"}, count=limit, block=block_ms),
            )
            entries = reply[0][1] if reply else []  # [[stream, entries]] (RESP2)
        else:
            entries = self._call(
                "read events", lambda: self._reads.xrange(key, min=f"{after + 1}-0", count=limit)
            )
        return [
            Event(
                seq=int(f["seq"]),
                task_id=f["task"],
                root_id=f["root"],
                type=f["type"],
                time=float(f["time"]),
                data={**loads(f["head"]), **loads(f["data"])},
            )
            for _, f in entries
        ]

    def count_events(self, task_id: str, type: str) -> int:
        """How many events of ``type`` the task has had (an audit: reads its tree's
        whole event stream, which keeps ``stream_maxlen`` events per tree)."""
        task_key = self.key("t", task_id)
        found = self._call("count events", lambda: self.r.hget(task_key, "root_id"))
        if found is None:
            raise NotFoundError(f"task {task_id} not found", _NOT_FOUND_HINT)
        root = loads(found)
        key = self.key("events", root)
        count, after = 0, "-"
        while True:
            read = functools.partial(self._reads.xrange, key, after, "+", count=1000)
            page: list[Any] = self._call("count events", read)
            count += sum(1 for _, f in page if f["task"] == task_id and f["type"] == type)
            if len(page) < 1000:
                return count
            after = "(" + page[-1][0]
