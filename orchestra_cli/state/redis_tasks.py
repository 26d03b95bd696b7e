"""The Redis store's tasks: create, read, list, transitions, claims and waits for an end."""

from __future__ import annotations

import functools
import heapq
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from orchestra_cli import ids
from orchestra_cli.errors import (
    NotFoundError,
    OrchestraError,
    PartlyStored,
    StateError,
    TransitionRejected,
)
from orchestra_cli.models import Task, Usage
from orchestra_cli.state.base import PLAIN, Create, check_changes, rejection_reason  # one wording
from orchestra_cli.state.redis_batch import NO_REPLY
from orchestra_cli.state.redis_conn import (
    LIST_PAGE,
    WAIT_TTL_SECONDS,
    RedisConnection,
    _encode_fields,
    _kind_of,
    _task_from_hash,
)
from orchestra_cli.status import TERMINAL, Status
from orchestra_cli.util import dumps, loads, now

_NOT_FOUND_HINT = ids.NOT_FOUND_HINT


def _timestamps(to: Status, ts: float) -> dict[str, Any]:
    """The timestamp fields a transition to ``to`` sets (as the SQLite store's ``_apply``)."""
    fields: dict[str, Any] = {"status": to.value, "updated_at": ts}
    if to == Status.QUEUED:
        fields["queued_at"] = ts
    elif to in (Status.RUNNING, Status.WAITING):
        fields["started_at"] = ts
        fields["finished_at"] = None
    if to in TERMINAL:
        fields["finished_at"] = ts
    return fields


def _applied(task: Task, to: Status, ts: float, changes: dict[str, Any] | None = None) -> Task:
    """``task`` after the transition script applied ``changes`` to it at ``ts`` (as stored)."""
    fields = {**(changes or {}), **_timestamps(to, ts), "status": to, "version": task.version + 1}
    return task.model_copy(update=fields)


class RedisTasks(RedisConnection):
    """``TaskStore`` on Redis (state/base.py)."""

    def _task_spec(self, task: Task) -> dict[str, Any]:
        return {
            "id": task.id,
            "created": repr(task.created_at),
            "status": task.status.value,
            "root": task.root_id,
            "parent": task.parent_id or "",
            "agent": task.agent or "",
            "idem": task.idempotency_key or "",
            "fields": _encode_fields(task.model_dump(mode="json")),
            "edata": dumps(
                {"title": task.title, "capability": task.capability, "parent_id": task.parent_id}
            ),
        }

    def _load_many(self, ids: list[str]) -> list[Task]:
        def fetch() -> list[Any]:
            pipe = self._reads.pipeline(transaction=False)
            for task_id in ids:
                pipe.hgetall(self.key("t", task_id))
            return list(pipe.execute())

        return [_task_from_hash(h) for h in self._call("read tasks", fetch) if h]

    # -- tasks -------------------------------------------------------------
    def get_tasks(self, task_ids: Iterable[str]) -> dict[str, Task]:
        """The tasks among these ids, by id: one pipelined read."""
        ids = list(dict.fromkeys(task_ids))
        return {t.id: t for t in self._load_many(ids)} if ids else {}

    def get_statuses(self, task_ids: Iterable[str]) -> dict[str, Status]:
        """Each known task's status, by id: one pipelined read of one field each."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}

        def fetch() -> list[Any]:
            pipe = self._reads.pipeline(transaction=False)
            for task_id in ids:
                pipe.hget(self.key("t", task_id), "status")
            return list(pipe.execute())

        replies = self._call("read statuses", fetch)
        return {i: Status(loads(v)) for i, v in zip(ids, replies, strict=True) if v is not None}

    def create_task(self, task: Task, how: Create = PLAIN) -> tuple[Task, bool]:
        """Store a new task (queued at once with ``how.dispatch``); an idempotency key
        already used returns that task instead. ``how.meanwhile`` runs once the
        script is sent, while Redis runs it; ``how.watch`` counts a waiter for its end."""
        stored, payload = self._create_payload(task, how)
        return self._created(task, stored, self._run("create", payload, how.meanwhile))

    def create_tasks(self, items: Sequence[tuple[Task, Create]]) -> list[tuple[Task, bool]]:
        """``create_task`` for each, in one round trip: every script is sent at once, then
        each ``meanwhile`` runs in order, then the replies are read. A create whose reply
        did not come (a missing script, a lost connection) runs again on its own; a create
        that went through finds its task. If the scripts could not be sent, each create
        goes as ``create_task`` does, its ``meanwhile`` once its own script is sent.
        Raises ``PartlyStored`` (with the tasks known to be stored) when some create
        failed or its outcome is unknown."""
        if not items:
            return []
        prepared = [self._create_payload(task, how) for task, how in items]
        bodies = [self._body(payload) for _, payload in prepared]
        script = self._scripts["create"]
        conn = self._script_conns.get()
        try:
            conn.send_packed_command(
                conn.pack_commands([("EVALSHA", script.sha, 0, body) for body in bodies])
            )
        except Exception as exc:
            conn.disconnect()
            if _kind_of(exc) is None:
                raise
            return self._one_by_one(items, prepared)
        failed: list[BaseException] = []
        for _, how in items:  # sent: the messages go out while Redis runs the scripts
            if how.meanwhile is not None:
                try:
                    how.meanwhile()
                except BaseException as exc:  # raised once every outcome is known
                    failed.append(exc)
        replies = self._read_replies(conn, len(items))
        errors = self._again_alone(script, bodies, replies)
        results = [
            self._created(task, stored, reply)
            if reply is not NO_REPLY and not isinstance(reply, OrchestraError)
            else None
            for (task, _), (stored, _), reply in zip(items, prepared, replies, strict=True)
        ]
        if errors:
            raise PartlyStored([r for r in results if r is not None], len(items), errors[0])
        if failed:
            raise failed[0]
        return [r for r in results if r is not None]

    def _again_alone(self, script: Any, bodies: list[bytes], replies: list[Any]) -> list[Any]:
        """Run each create whose reply did not come on its own (in place in ``replies``),
        none after one failed for good; the errors, the scripts' own first."""
        errors = [r for r in replies if isinstance(r, OrchestraError)]
        for i, body in enumerate(bodies):
            if replies[i] is NO_REPLY:
                try:
                    replies[i] = self._call(
                        "create", functools.partial(self._evalsha, script, body)
                    )
                except OrchestraError as exc:  # Redis went away: the rest stay unknown
                    errors.append(exc)
                    break
        return errors

    def _one_by_one(
        self, items: Sequence[tuple[Task, Create]], prepared: list[tuple[Task, dict[str, Any]]]
    ) -> list[tuple[Task, bool]]:
        results: list[tuple[Task, bool]] = []
        for (task, how), (stored, payload) in zip(items, prepared, strict=True):
            try:
                reply = self._run("create", payload, how.meanwhile)
            except OrchestraError as exc:
                raise PartlyStored(results, len(items), exc) from exc
            results.append(self._created(task, stored, reply))
        return results

    def _read_replies(self, conn: Any, count: int) -> list[Any]:
        """``count`` pipelined replies: a script's error as a ``StateError``, a missing
        script's reply or one that did not come as ``NO_REPLY``."""
        replies: list[Any] = []
        try:
            for _ in range(count):
                try:
                    replies.append(conn.read_response())
                except Exception as exc:
                    if _kind_of(exc) != "failed":
                        raise
                    if isinstance(exc, sys.modules["redis"].exceptions.NoScriptError):
                        replies.append(NO_REPLY)  # a restarted or flushed server: on its own
                    else:
                        replies.append(StateError(f"Redis at {self.url} failed create: {exc}"))
        except Exception as exc:
            conn.disconnect()  # replies may still be on their way: never reuse the socket
            if _kind_of(exc) is None:
                raise
        return replies + [NO_REPLY] * (count - len(replies))

    def _create_payload(self, task: Task, how: Create) -> tuple[Task, dict[str, Any]]:
        dispatch, watch = how.dispatch, how.watch
        if dispatch is not None and task.status != Status.PENDING:
            raise ValueError(f"task {task.id} is {task.status}: only a pending task is queued")
        ts = now()
        # with ``dispatch``, stored as it is once queued (pending → queued), with both events:
        # a task nobody has seen yet cannot have changed in between
        stored = task if dispatch is None else _applied(task, Status.QUEUED, ts)
        spec = self._task_spec(stored)
        if dispatch is not None:  # the script writes its pending → queued event too
            spec["queued"] = {
                "attempt": dumps(task.attempts),
                "agent": dumps(task.agent),
                "data": dumps(dispatch),
            }
        payload: dict[str, Any] = {"task": spec, "time": ts}
        if watch:
            payload.update(watch=True, wttl=WAIT_TTL_SECONDS)
        return stored, payload

    def _created(self, task: Task, stored: Task, reply: Any) -> tuple[Task, bool]:
        if reply[0] == "created":
            return stored, True
        if reply[1] == task.id:  # "existing", and it is ours: an earlier attempt got through
            return self.get_task(task.id), True
        return self.get_task(reply[1]), False

    def create_subtasks(self, parent_id: str, children: list[Task], reason: str) -> Task:
        """Store subtasks and move the parent pending → waiting, in one script."""
        ts = now()
        tr = self._transition_spec(
            parent_id,
            Status.WAITING,
            None,
            [Status.PENDING],
            {"reason": reason, "subtasks": [c.id for c in children]},
            {},
            ts,
        )
        reply = self._run(
            "subtasks",
            {"tr": tr, "children": [self._task_spec(c) for c in children], "time": ts},
        )
        if reply[0] == "rejected":
            parent = _task_from_hash(reply[1])
            raise TransitionRejected(f"task {parent_id} is {parent.status}, not pending", parent)
        return self._transition_result(parent_id, Status.WAITING, None, [Status.PENDING], reply)

    def get_task(self, task_id: str) -> Task:
        """The task with this id, or the one a prefix or short id names (``ids.resolve``)."""
        found = self._call("get task", lambda: self._reads.hgetall(self.key("t", task_id)))
        if found:
            return _task_from_hash(found)
        whole = ids.resolve(task_id, self._ids_by_prefix, self._ids_by_tail, self._titles)
        found = self._call("get task", lambda: self._reads.hgetall(self.key("t", whole)))
        if not found:
            raise NotFoundError(f"task {task_id} not found", _NOT_FOUND_HINT)
        return _task_from_hash(found)

    def _ids_by_prefix(self, prefix: str, limit: int) -> list[str]:
        return list(
            self._call(
                "find task",
                lambda: self._reads.zrangebylex(
                    self.key("ids"), f"[{prefix}", f"({prefix}\xff", start=0, num=limit
                ),
            )
        )

    def _ids_by_tail(self, tail: str, limit: int) -> list[str]:
        members = self._call(  # "<short id>:<id>", written by the create script
            "find task",
            lambda: self._reads.zrangebylex(
                self.key("tails"), f"[{tail}", f"({tail}\xff", start=0, num=limit
            ),
        )
        return [m.partition(":")[2] for m in members]

    def _titles(self, task_ids: list[str]) -> dict[str, str]:
        return {i: t.title for i, t in self.get_tasks(task_ids).items()}

    def _index_pages(self, key: str, low: float | str) -> Iterator[tuple[float, str]]:
        """(score, id) of one index, newest first (ties: higher id first), paged."""
        offset = 0
        while True:
            page = self._call(
                "list tasks",
                functools.partial(
                    self._reads.zrevrangebyscore,
                    key,
                    "+inf",
                    low,
                    start=offset,
                    num=LIST_PAGE,
                    withscores=True,
                ),
            )
            for member, score in page:
                yield float(score), member
            if len(page) < LIST_PAGE:
                return
            offset += LIST_PAGE

    def list_tasks(
        self,
        *,
        status: Iterable[str] | None = None,
        agent: str | None = None,
        since: float | None = None,
        limit: int = 50,
        roots_only: bool = False,
        capability: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[Task]:
        """Newest first; walks the most selective index and filters the rest."""
        statuses = [str(s) for s in status or []]
        if statuses:
            keys = [self.key("by", "status", s) for s in statuses]
        elif agent:
            keys = [self.key("by", "agent", agent)]
        else:
            keys = [self.key("by", "roots" if roots_only else "created")]
        low: float | str = since if since is not None else "-inf"
        merged = heapq.merge(*(self._index_pages(k, low) for k in keys), reverse=True)

        def wanted(t: Task) -> bool:
            return (
                (not statuses or t.status.value in statuses)
                and (not agent or t.agent == agent)
                and (since is None or t.created_at >= since)
                and (not roots_only or t.parent_id is None)
                and (not capability or t.capability == capability)
                and all(t.labels.get(k) == v for k, v in (labels or {}).items())
            )

        out: list[Task] = []
        batch: list[str] = []
        for _, task_id in merged:
            batch.append(task_id)
            if len(batch) >= min(LIST_PAGE, max(limit, 10)):
                out += [t for t in self._load_many(batch) if wanted(t)]
                batch = []
                if len(out) >= limit:
                    return out[:limit]
        out += [t for t in self._load_many(batch) if wanted(t)]
        return out[:limit]

    def status_counts(self) -> dict[str, int]:
        """One ZCARD per status of the by-status indexes, in one round trip."""

        def count() -> list[int]:
            pipe = self._reads.pipeline(transaction=False)
            for status in Status:
                pipe.zcard(self.key("by", "status", status.value))
            return list(pipe.execute())

        counts = self._call("count tasks", count)
        return {s.value: int(n) for s, n in zip(Status, counts, strict=True) if n}

    def tree(self, root_id: str) -> list[Task]:
        """The root task and every descendant, oldest first."""
        ids = self._call("tree", lambda: self._reads.zrange(self.key("tree", root_id), 0, -1))
        return self._load_many(ids)

    def children(self, parent_id: str) -> list[Task]:
        """Direct subtasks, oldest first."""
        key = self.key("children", parent_id)
        ids = self._call("children", lambda: self._reads.zrange(key, 0, -1))
        return self._load_many(ids)

    def _transition_spec(
        self,
        task_id: str,
        to: Status,
        expect_version: int | None,
        expect_status: Iterable[Status] | None,
        event_data: dict[str, Any] | None,
        changes: dict[str, Any],
        ts: float,
    ) -> dict[str, Any]:
        es = None if expect_status is None else [Status(s).value for s in expect_status]
        return {
            "id": task_id,
            "to": to.value,
            "ev": "" if expect_version is None else str(expect_version),
            "check_es": "0" if es is None else "1",
            "es": es or [],
            "fields": _encode_fields({**changes, **_timestamps(to, ts)}),
            "edata": dumps(event_data or {}),
        }

    def transition(
        self,
        task_id: str,
        to: Status,
        *,
        expect_version: int | None = None,
        expect_status: Iterable[Status] | None = None,
        event_data: dict[str, Any] | None = None,
        add_usage: Usage | None = None,
        known: Task | None = None,
        **changes: Any,
    ) -> Task:
        """Apply one status change atomically; TransitionRejected when refused.

        With ``known`` (the task at ``expect_version``) the script does not send
        the task back: the result is ``known`` with the change applied.
        """
        check_changes(changes)
        expect = None if expect_status is None else list(expect_status)
        ts = now()
        spec = self._transition_spec(task_id, to, expect_version, expect, event_data, changes, ts)
        if add_usage is not None:
            spec["usage"] = add_usage.model_dump_json()
        bare = known is not None and expect_version is not None and known.version == expect_version
        if bare:
            spec["bare"] = True
        reply = self._run("transition", {"tr": spec, "time": ts})
        if bare and reply[0] == "ok":
            assert known is not None
            # the usage as stored: summed by the script, or added since ``known`` was read
            changes = {**changes, "usage": Usage.model_validate_json(reply[1])}
            return _applied(known, to, ts, changes)
        return self._transition_result(task_id, to, expect_version, expect, reply)

    def claim(self, task_id: str, agent: str) -> tuple[Task, bool]:
        """queued → running for ``agent`` in one round trip; (task, whether it was claimed)."""
        ts = now()
        changes = {"agent": agent, "error": None}
        spec = self._transition_spec(
            task_id, Status.RUNNING, None, [Status.QUEUED], None, changes, ts
        )
        reply = self._run("claim", {"tr": spec, "time": ts})
        if reply[0] == "missing":
            raise NotFoundError(f"task {task_id} not found", _NOT_FOUND_HINT)
        if reply[0] == "dup":  # our own attempt got through; its reply was lost
            task = self.get_task(task_id)
            return task, task.status == Status.RUNNING and task.agent == agent
        return _task_from_hash(reply[1]), reply[0] == "ok"

    def _transition_result(
        self,
        task_id: str,
        to: Status,
        expect_version: int | None,
        expect_status: list[Status] | None,
        reply: list[Any],
    ) -> Task:
        if reply[0] == "missing":
            raise NotFoundError(f"task {task_id} not found", _NOT_FOUND_HINT)
        if reply[0] == "dup":  # our own attempt got through; its reply was lost
            task = self.get_task(task_id)
            if task.status != to:  # that attempt was refused (or undone since): say so
                raise TransitionRejected(
                    f"task {task_id}: status is {task.status}, not {to} (retried call)", task
                )
            return task
        task = _task_from_hash(reply[1])
        if reply[0] == "rejected":
            reason = rejection_reason(task, to, expect_version, expect_status)
            raise TransitionRejected(f"task {task_id}: {reason or 'rejected'}", task)
        return task

    def add_usage(self, task_id: str, usage: Usage) -> None:
        """Add token usage and cost to the task."""
        if not self._run("usage", {"id": task_id, "delta": usage.model_dump_json()}):
            raise NotFoundError(f"task {task_id} not found", _NOT_FOUND_HINT)

    def wait_ended(self, task_id: str, wait: float, *, counted: bool = False) -> Task | None:
        """The task once it has ended, or None after ``wait`` (bounded well inside
        the socket timeout). BLPOP on the task's ``ended`` list, which the
        transition that ends it fills (redis_scripts: ``watch_end``), pipelined
        with HGETALL: Redis runs it as soon as the BLPOP returns (one round trip)."""
        if not counted and self._watch_end(task_id, renew=False) in TERMINAL:
            return self.get_task(task_id)
        block = min(wait, self.settings.socket_timeout / 2)
        if block >= 0.001:  # BLPOP's timeout has millisecond resolution, and 0 is forever
            ended = self._call("wait for the task's end", lambda: self._blpop(task_id, block))
            if ended is not None:
                return ended
        # still counted (or counted again, if the count expired); or it ended meanwhile
        if self._watch_end(task_id, renew=True) in TERMINAL:
            return self.get_task(task_id)
        return None

    def _watch_end(self, task_id: str, *, renew: bool) -> Status:
        reply = self._run("wait_end", {"id": task_id, "renew": renew, "wttl": WAIT_TTL_SECONDS})
        if reply == "missing":
            raise NotFoundError(f"task {task_id} not found", _NOT_FOUND_HINT)
        return Status(reply)

    def _blpop(self, task_id: str, block: float) -> Task | None:
        """BLPOP + HGETALL on this thread's script connection (no pool checkout)."""
        conn = self._script_conns.get()
        try:
            conn.send_packed_command(
                conn.pack_commands(
                    [
                        ("BLPOP", self.key("ended", task_id), f"{block:.3f}"),
                        ("HGETALL", self.key("t", task_id)),
                    ]
                )
            )
            popped, flat = conn.read_response(), conn.read_response()
        except BaseException:  # a reply may still be on its way: never reuse the socket
            conn.disconnect()
            raise
        return None if popped is None or not flat else _task_from_hash(flat)
