"""The Redis store's event log: one for everything, and one per tree.

A tree's own log is a stream (``events:<root>``) once it has more than a few
events or someone follows it, and until then lines in a string
(``evlog:<root>``): most trees are one task with four events, and a stream
each would cost Redis ~4.8 KB a task (``redis_scripts.add_event``). Readers
take the lines and a page of the stream in one round trip, in that order, and
merge them by sequence number: the lines move into the stream in one atomic
step, so a read that races the move finds every event in one or the other
(and a snapshot taken mid-move, restored, loses none either).
"""

from __future__ import annotations

from typing import Any

from orchestra_cli import ids
from orchestra_cli.errors import NotFoundError
from orchestra_cli.models import Event
from orchestra_cli.state.redis_conn import RedisConnection
from orchestra_cli.util import dumps, loads, now

_NOT_FOUND_HINT = ids.NOT_FOUND_HINT
FOLLOW_TTL_SECONDS = 300  # a follower's mark on a tree without events yet (renewed per read)
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


_LINE_FIELDS = ("seq", "task", "type", "time", "head", "data")


def _from_lines(log: str, root_id: str, after: int = 0, limit: int | None = None) -> list[Event]:
    """Events of a tree's log (``seq TAB task TAB type TAB time TAB head TAB data``)."""
    found: list[Event] = []
    for line in log.split("\n")[:-1]:  # not splitlines(): JSON keeps U+2028 and kin raw
        fields = dict(zip(_LINE_FIELDS, line.split("\t", 5), strict=True))
        if int(fields["seq"]) > after:
            found.append(_from_fields({**fields, "root": root_id}))
            if limit is not None and len(found) >= limit:
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
        """From now on the tree's events go to its stream, where a blocked read sees them.

        Asked on every blocking read (one script a follower's poll), not remembered:
        a rollback or a purge can take a tree's stream away under a long-running reader.
        """
        ttl = max(FOLLOW_TTL_SECONDS, int(self.settings.socket_timeout) + 60)  # > one block
        self._run("follow", {"root": root_id, "fttl": ttl})

    def _tree_events(self, root_id: str, after: int, limit: int) -> list[Event]:
        log, entries = self._tree_read(root_id, f"{after + 1}-0", limit)
        found = [_from_fields(f) for _, f in entries]
        if log is None:
            return found
        merged = {e.seq: e for e in _from_lines(log, root_id, after, limit)}
        merged.update((e.seq, e) for e in found)
        return [merged[seq] for seq in sorted(merged)][:limit]

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
        lines, page = self._tree_read(root, "-", PAGE)  # the lines: with the first page
        seen: set[int] = set()
        count = 0
        while True:
            for _, f in page:
                seen.add(int(f["seq"]))
                count += f["task"] == task_id and f["type"] == type
            if len(page) < PAGE:
                break
            page = self._tree_read(root, "(" + page[-1][0], PAGE)[1]
        # a line the stream holds too (a move raced the read) counts once
        extra = [e for e in _from_lines(lines or "", root) if e.seq not in seen]
        return count + sum(1 for e in extra if e.task_id == task_id and e.type == type)
