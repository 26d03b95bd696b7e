"""Redis state store: tasks as hashes, Lua transitions, events on Redis Streams.

Layout (``P`` is ``redis.key_prefix``, so deployments and test runs can share
one server):

- ``P:t:<id>`` a hash per task, every field JSON-encoded;
- ``P:ids`` (lexical, for id prefixes), ``P:tails`` (lexical, ``<short id>:<id>``),
  ``P:by:created``, ``P:by:status:<s>``,
  ``P:by:agent:<a>``, ``P:by:roots``, ``P:tree:<root>``, ``P:children:<parent>``:
  sorted sets scored by creation time, so listing stays fast at 100k tasks;
- ``P:events`` and ``P:events:<root>``: streams whose entry id is ``<seq>-0``,
  ``seq`` coming from the ``P:seq`` counter, so ``events(after=seq)`` is a range;
- ``P:agent:<name>``, ``P:agents``, ``P:cap:<capability>``: the registry.

Every change is one Lua script (``redis_scripts``), so a transition checks
the status table and the expected version and appends its event atomically.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import heapq
import logging
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from orchestra_cli import ids
from orchestra_cli.errors import (
    NotFoundError,
    StateError,
    StateUnavailable,
    TransitionRejected,
)
from orchestra_cli.models import AgentRecord, Event, Task, Usage
from orchestra_cli.settings import RedisSettings, mask_url
from orchestra_cli.state import redis_scripts as lua
from orchestra_cli.state import resp
from orchestra_cli.state.base import check_changes, rejection_reason  # one wording
from orchestra_cli.state.ledger import Ask, Ledger, Limits
from orchestra_cli.state.redis_lock import RedisLock
from orchestra_cli.status import TERMINAL, Status
from orchestra_cli.util import PerThread, dumps, loads, new_id, now

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_REDIS_ATTEMPTS = 8
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 2.0
LIST_PAGE = 200
# A waiter's count outlives its BLPOPs (each renews it), not a waiter that went away.
WAIT_TTL_SECONDS = 300
LEDGER_KEEP_SECONDS = 30 * 86400  # a tree's spend outlives any retry of it

_NOT_FOUND_HINT = ids.NOT_FOUND_HINT


def _encode_fields(values: dict[str, Any]) -> list[str]:
    """Flat [field, json, field, json, …] for HSET."""
    flat: list[str] = []
    for name, value in values.items():
        flat += [name, dumps(value)]
    return flat


def _task_from_hash(flat: list[str] | dict[str, str]) -> Task:
    """A Task from HGETALL (a dict) or a script's flat [field, value, …] reply.

    Every value is already JSON, so the hash becomes one JSON document that
    ``Task.model_validate_json`` parses in one pass (field names are ours: no escaping needed).
    """
    items = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
    return Task.model_validate_json("{" + ",".join(f'"{n}":{v}' for n, v in items) + "}")


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


def _kind_of(exc: BaseException) -> str | None:
    """ "unreachable" (retry), "failed" (a Redis error reply), or None (not Redis's)."""
    if isinstance(exc, resp.RespConnectionError):
        return "unreachable"
    if isinstance(exc, resp.RespError):
        return "failed"
    redis = sys.modules.get("redis")  # its errors can only come once it is imported
    if redis is not None:
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return "unreachable"
        if isinstance(exc, redis.RedisError):
            return "failed"
    return None


class RedisStateStore:
    """StateStore on Redis; one connection pool per process, shared by threads."""

    def __init__(
        self, url: str, settings: RedisSettings | None = None, *, patient: bool = True
    ) -> None:
        """``patient=False`` (one-shot commands): until Redis has answered once, a
        connection error is retried only within ``connect_timeout``, so `task list`
        with Redis down fails in that time instead of after every backoff."""
        self.url = mask_url(url)  # for display; the client got the real one
        self.settings = settings or RedisSettings()
        self._patient = patient
        self.prefix = self.settings.key_prefix
        self.maxlen = str(self.settings.stream_maxlen)
        # An operation token only has to outlive the retries of its own call (every
        # attempt can take a socket timeout plus a backoff); twice that, not the ten
        # minutes it was: at 1,000 transitions/s that is ~100k keys resident, not 600k.
        self._op_ttl = int(
            2 * MAX_REDIS_ATTEMPTS * (self.settings.socket_timeout + MAX_BACKOFF_SECONDS) + 10
        )
        self._masked = mask_url(url)
        self._host = urlsplit(url).hostname or "?"
        self._url = url
        self._client: Any = None
        self._client_lock = threading.Lock()
        # one-shot readers (task get / list) never import redis-py: see resp.py
        self._lite = (
            resp.LiteRedis(
                url,
                socket_timeout=self.settings.socket_timeout,
                connect_timeout=self.settings.connect_timeout,
                client_name="orchestra",
            )
            if resp.supported(url)
            else None
        )
        # each thread's script connection (_evalsha), made outside redis-py's pool,
        # which would count it against max_connections for good
        self._script_conns: PerThread[Any] = PerThread(
            lambda: self.r.connection_pool.connection_class(
                **self.r.connection_pool.connection_kwargs
            ),
            lambda conn: conn.disconnect(),
        )

    @property
    def r(self) -> Any:
        """The redis-py client (writes, scripts, streams), made on first use."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import redis
                    from redis.backoff import NoBackoff
                    from redis.retry import Retry

                    # retries are ours (logged, bounded, token-deduplicated); redis-py's
                    # are off. Typed Any: redis-py's stubs cannot know decode_responses.
                    self._client = redis.Redis.from_url(
                        self._url,
                        decode_responses=True,
                        socket_timeout=self.settings.socket_timeout,
                        socket_connect_timeout=self.settings.connect_timeout,
                        health_check_interval=self.settings.health_check_interval,
                        max_connections=self.settings.max_connections,
                        retry=Retry(NoBackoff(), 0),
                        client_name="orchestra",
                    )
        return self._client

    @property
    def _reads(self) -> Any:
        """The client for plain reads: the light one when the URL allows it."""
        return self._lite if self._lite is not None else self.r

    @functools.cached_property
    def _scripts(self) -> dict[str, Any]:
        return {
            name: self.r.register_script(text)
            for name, text in {
                "create": lua.CREATE,
                "subtasks": lua.SUBTASKS,
                "transition": lua.TRANSITION,
                "claim": lua.CLAIM,
                "event": lua.EVENT,
                "wait_end": lua.WAIT_END,
                "usage": lua.ADD_USAGE,
                "reserve": lua.RESERVE,
                "record_step": lua.RECORD_STEP,
                "settle": lua.SETTLE,
                "save_agent": lua.SAVE_AGENT,
                "stop_agent": lua.STOP_AGENT,
                "delete_agent": lua.DELETE_AGENT,
            }.items()
        }

    # -- plumbing ----------------------------------------------------------
    def key(self, *parts: str) -> str:
        """``<prefix>:<part>:…``"""
        return ":".join((self.prefix, *parts))

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying connection errors with bounded, jittered backoff."""
        deadline = None if self._patient else time.monotonic() + self.settings.connect_timeout
        for attempt in range(1, MAX_REDIS_ATTEMPTS + 1):
            try:
                result = fn()
            except Exception as exc:
                kind = _kind_of(exc)
                if kind is None:
                    raise
                if kind == "failed":
                    raise StateError(f"Redis at {self._masked} failed {what}: {exc}") from exc
                left = MAX_REDIS_ATTEMPTS - attempt
                delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.0)
                if left == 0 or (deadline is not None and time.monotonic() + delay > deadline):
                    raise StateUnavailable(
                        f"cannot reach Redis at {self._masked} ({type(exc).__name__})",
                        "start it with `orchestra up` or set ORCHESTRA_STATE_URL",
                    ) from exc
                log.warning(
                    "Redis at %s: %s during %s; retrying in %.2fs (%d attempts left)",
                    self._host,
                    type(exc).__name__,
                    what,
                    delay,
                    left,
                )
                time.sleep(delay)
            else:
                self._patient = True  # it answered: from now on, retry as long as ever
                return result
        raise AssertionError("unreachable")

    def _run(
        self, script: str, payload: dict[str, Any], meanwhile: Callable[[], None] | None = None
    ) -> Any:
        """Run one Lua script with the JSON payload (prefix, token, trim length added).

        ``meanwhile`` runs once (not again on a retry), between sending the
        script and reading its reply.
        """
        body = dumps(
            {"p": self.prefix, "max": self.maxlen, "tok": new_id(), "ttl": self._op_ttl, **payload}
        )
        once = [meanwhile] if meanwhile is not None else []
        failed: list[BaseException] = []  # meanwhile's error, kept across retries
        reply = self._call(script, lambda: self._evalsha(self._scripts[script], body, once, failed))
        if failed:
            raise failed[0]
        return reply

    def _evalsha(
        self,
        script: Any,
        body: str,
        meanwhile: list[Callable[[], None]] | None = None,
        failed: list[BaseException] | None = None,
    ) -> Any:
        """EVALSHA on this thread's own connection, loading the script if the server lacks it.

        Straight on a connection the thread keeps: redis-py's command path
        (metrics hooks, its own retries, which are off here, reply callbacks)
        and the pool's checkout (a readiness poll: a system call, so a GIL
        hand-over in a busy agent) cost an agent ~140 us of CPU per task.
        """
        conn = self._script_conns.get()
        try:
            conn.send_command("EVALSHA", script.sha, 0, body)
            if meanwhile:  # sent: now it runs, and never again on a retry
                try:
                    meanwhile.pop()()
                except BaseException as exc:  # raised once the script's outcome is known
                    if failed is None:
                        raise
                    failed.append(exc)
            try:
                reply = conn.read_response()
            except sys.modules["redis"].exceptions.NoScriptError:  # a restarted/flushed server
                conn.send_command("EVAL", script.script, 0, body)
                reply = conn.read_response()
        except BaseException:  # a reply may still be on its way: never reuse the socket
            conn.disconnect()
            raise
        return reply

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

    def create_task(
        self,
        task: Task,
        *,
        dispatch: dict[str, Any] | None = None,
        meanwhile: Callable[[], None] | None = None,
        watch: bool = False,
    ) -> tuple[Task, bool]:
        """Store a new task (queued at once with ``dispatch``); an idempotency key
        already used returns that task instead. ``meanwhile`` runs once the
        script is sent, while Redis runs it; ``watch`` counts a waiter for its end."""
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
        reply = self._run("create", payload, meanwhile)
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

    # -- step log ------------------------------------------------------------
    def record_step(
        self, task_id: str, root_id: str, n: int, data: dict[str, Any], event: dict[str, Any]
    ) -> bool:
        """Store step ``n`` of a task and its ``step`` event; False if ``n`` exists already."""
        payload = {"id": task_id, "root": root_id, "n": n, "time": now()}
        body = {**payload, "data": dumps({**data, "time": payload["time"]})}
        return bool(self._run("record_step", {**body, "event": dumps({"n": n, **event})}))

    def steps(self, task_id: str) -> list[dict[str, Any]]:
        """The task's steps in order, each with its ``n`` and ``time``."""
        raw = self._call("steps", lambda: self.r.hgetall(self.key("steps", task_id)))
        items = sorted((int(_text(n)), _text(v)) for n, v in raw.items())
        return [{**loads(v), "n": n} for n, v in items]

    # -- artifacts -----------------------------------------------------------
    def save_artifacts(self, task_id: str, changes: dict[str, bytes | None]) -> None:
        """Record a task's changed files (content-addressed); None: the file was deleted."""
        if not changes:
            return
        manifest: dict[str, str] = {}
        blobs: dict[str, bytes] = {}
        for path, data in changes.items():
            if data is None:
                manifest[path] = "- 0"
                continue
            sha = hashlib.sha256(data).hexdigest()
            blobs[sha] = data
            manifest[path] = f"{sha} {len(data)}"

        def write() -> None:
            pipe = self.r.pipeline(transaction=True)
            for sha, data in blobs.items():  # base64: the client decodes replies as text
                pipe.set(self.key("blob", sha), base64.b64encode(data).decode(), nx=True)
            pipe.hset(self.key("art", task_id), mapping=manifest)
            pipe.execute()

        self._call("save artifacts", write)

    def artifacts(self, task_id: str) -> dict[str, tuple[str | None, int]]:
        """A task's files: path → (content hash, size); a hash of None is a deletion."""
        raw = self._call("artifacts", lambda: self.r.hgetall(self.key("art", task_id)))
        out: dict[str, tuple[str | None, int]] = {}
        for path, value in sorted((_text(k), _text(v)) for k, v in raw.items()):
            sha, size = value.split(" ")
            out[path] = (None if sha == "-" else sha, int(size))
        return out

    def blob(self, sha: str) -> bytes:
        data = self._call("blob", lambda: self.r.get(self.key("blob", sha)))
        if data is None:
            raise NotFoundError(f"artifact content {sha[:12]} not found", _NOT_FOUND_HINT)
        return base64.b64decode(data)

    # -- budget ledger -----------------------------------------------------
    def reserve_budget(
        self, root_id: str, hold_id: str, ask: Ask, limits: Limits, *, ttl: float
    ) -> Ledger:
        """Hold ``ask``'s worst case (its output lowered to what is left), or refuse."""
        reply = self._run(
            "reserve",
            {
                "root": root_id,
                "hold": hold_id,
                "input": ask.input,
                "max_out": ask.max_out,
                "in_price": ask.in_price,
                "out_price": ask.out_price,
                "limit_tokens": limits.tokens,
                "limit_usd": limits.usd,
                "hold_ttl": math.ceil(ttl),
                "keep": LEDGER_KEEP_SECONDS,
            },
        )
        spent_t, spent_u, held_t, held_u, out = (_text(v) for v in reply)
        return Ledger(int(spent_t), float(spent_u), int(held_t), float(held_u), int(out))

    def settle_budget(self, root_id: str, hold_id: str, tokens: int, usd: float) -> None:
        """Release a hold and add what the call really used to the tree's spend."""
        payload = {"root": root_id, "hold": hold_id, "tokens": tokens, "usd": usd}
        self._run("settle", {**payload, "keep": LEDGER_KEEP_SECONDS})

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
                "read events", lambda: self.r.xrange(key, min=f"{after + 1}-0", count=limit)
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

    def count_events(self, task_id: str, type: str) -> int:
        """How many events of ``type`` the task has had (an audit: reads its tree's
        whole event stream, which keeps ``stream_maxlen`` events per tree)."""
        root = self.get_task(task_id).root_id
        key = self.key("events", root)
        count, after = 0, "-"
        while True:
            read = functools.partial(self.r.xrange, key, after, "+", count=1000)
            page: list[Any] = self._call("count events", read)
            count += sum(1 for _, f in page if f["task"] == task_id and f["type"] == type)
            if len(page) < 1000:
                return count
            after = "(" + page[-1][0]

    # -- agents ------------------------------------------------------------
    def save_agent(self, agent: AgentRecord, *, fresh: bool = False) -> bool:
        """Upsert the registry record; returns whether a stop was requested."""
        payload = {
            "fresh": fresh,
            "name": agent.name,
            "data": agent.model_dump_json(),
            "caps": dumps(agent.capabilities),
            "hb": repr(agent.heartbeat_at),
        }
        stop = bool(self._run("save_agent", payload) == "1")
        agent.stop_requested = stop
        return stop

    def list_agents(self) -> list[AgentRecord]:
        """Every registered agent, by name."""
        names = self._call("list agents", lambda: self.r.zrange(self.key("agents"), 0, -1))

        def fetch() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for name in names:
                pipe.hmget(self.key("agent", name), "data", "stop")
            return list(pipe.execute())

        records = []
        for data, stop in self._call("read agents", fetch) if names else []:
            if data is None:
                continue  # deleted meanwhile
            rec = AgentRecord.model_validate_json(data)
            rec.stop_requested = stop == "1"
            records.append(rec)
        return sorted(records, key=lambda r: r.name)

    def agents_with(self, capability: str) -> list[str]:
        """Names of registered agents offering ``capability`` (the per-capability index)."""
        names = self._call("agents", lambda: self.r.smembers(self.key("cap", capability)))
        return sorted(names)

    def get_agent(self, name: str) -> AgentRecord:
        """One registry record; NotFoundError when unknown."""
        data, stop = self._call(
            "get agent", lambda: self.r.hmget(self.key("agent", name), "data", "stop")
        )
        if data is None:
            raise NotFoundError(f"agent {name!r} not found", "`orchestra agent list` shows agents")
        rec = AgentRecord.model_validate_json(data)
        rec.stop_requested = stop == "1"
        return rec

    def request_agent_stop(self, name: str) -> AgentRecord:
        """Flag the agent; its next heartbeat learns of it and it drains."""
        if not self._run("stop_agent", {"name": name}):
            raise NotFoundError(f"agent {name!r} not found", "`orchestra agent list` shows agents")
        return self.get_agent(name)

    def delete_agent(self, name: str) -> None:
        """Remove the agent from the registry and its capability indexes."""
        self._run("delete_agent", {"name": name})

    # -- locks, health, lifecycle ------------------------------------------
    def lock(self, name: str, ttl: float) -> RedisLock:
        """A token lock (``P:lock:<name>``) with expiry; see ``RedisLock``."""
        return RedisLock(self.r, self.key("lock", name), ttl)

    def export_snapshot(self, path: Path) -> int:
        """Every key of this namespace (DUMP), to a JSON-lines file; returns the key count."""
        from orchestra_cli.state import redis_snapshot

        return redis_snapshot.export(self.r, self.prefix, path)

    def import_snapshot(self, path: Path) -> int:
        """Replace this namespace with the snapshot's keys (RESTORE)."""
        from orchestra_cli.state import redis_snapshot

        return redis_snapshot.restore(self.r, self.prefix, path)

    def health(self) -> dict[str, Any]:
        """Ping round trip: ``{"ok", "url", "latency_ms", "version"|"error"}``."""
        started = time.perf_counter()
        client = self.r  # imports redis-py: its errors are known below
        try:
            client.ping()
            info = client.info("server")
            persistence = self._persistence()
        except sys.modules["redis"].RedisError as exc:
            return {"ok": False, "url": self._masked, "error": f"{type(exc).__name__}: {exc}"}
        return {
            "ok": True,
            "url": self._masked,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "version": info.get("redis_version"),
            "persistence": persistence,
        }

    def _persistence(self) -> dict[str, bool | None]:
        """Whether Redis keeps the data across a restart: AOF on, RDB save points set
        (None when CONFIG is not allowed, as on some managed services: unknown)."""
        aof = bool(self.r.info("persistence").get("aof_enabled"))
        try:
            save = self.r.config_get("save").get("save")
        except sys.modules["redis"].ResponseError:
            return {"aof": aof, "rdb": None}
        return {"aof": aof, "rdb": bool(save and str(save).strip())}

    def purge_namespace(self) -> int:
        """Delete every key under this store's prefix (tests and tools; never FLUSHDB)."""
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix) + ":*"
        deleted = 0
        batch: list[str] = []
        for key in self.r.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(self.r.unlink(*batch))
                batch = []
        if batch:
            deleted += int(self.r.unlink(*batch))
        return deleted

    def close(self) -> None:
        """Disconnect the pool and the threads' script connections."""
        self._script_conns.close_all()
        if self._lite is not None:
            self._lite.close()
        if self._client is not None:
            self._client.close()
            self._client.connection_pool.disconnect()


def _text(value: Any) -> str:
    """A script's reply item (bytes from redis-py, or already text) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
