"""The Redis store's connection: clients, Lua scripts, retries (every part of the store
sits on this: ``redis_tasks``, ``redis_events``, ``redis_records``, ``redis_agents``).

Layout (``P`` is ``redis.key_prefix``, so deployments and test runs can share
one server):

- ``P:t:<id>`` a hash per task, every field JSON-encoded;
- ``P:ids`` (lexical, for id prefixes), ``P:tails`` (lexical, ``<short id>:<id>``),
  ``P:by:created``, ``P:by:status:<s>``,
  ``P:by:agent:<a>``, ``P:by:roots``, ``P:tree:<root>``, ``P:children:<parent>``:
  sorted sets scored by creation time, so listing stays fast at 100k tasks;
- ``P:events`` and ``P:events:<root>``: streams whose entry id is ``<seq>-0``,
  ``seq`` coming from the ``P:seq`` counter, so ``events(after=seq)`` is a range;
  a small tree nobody follows keeps its events as lines in ``P:evlog:<root>``
  instead (``redis_scripts.add_event``);
- ``P:agent:<name>``, ``P:agents``, ``P:cap:<capability>``: the registry;
- ``P:steps:<id>``, ``P:art:<id>``, ``P:blob:<sha>``, ``P:budget:…``: the agent loop's records.

Every change is one Lua script (``redis_scripts``), so a transition checks
the status table and the expected version and appends its event atomically.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from orchestra_cli import ids
from orchestra_cli.backoff import Backoff, log_retry
from orchestra_cli.errors import (
    StateError,
    StateUnavailable,
)
from orchestra_cli.models import Task
from orchestra_cli.settings import RedisSettings, mask_url
from orchestra_cli.state import redis_scripts as lua
from orchestra_cli.state import resp
from orchestra_cli.state.redis_batch import ScriptBatcher
from orchestra_cli.util import PerThread, dumps, json_default, new_id

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_REDIS_ATTEMPTS = 8
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 2.0
RETRY = Backoff(first=FIRST_BACKOFF_SECONDS, cap=MAX_BACKOFF_SECONDS)  # equal jitter
LIST_PAGE = 200
# A waiter's count outlives its BLPOPs (each renews it), not a waiter that went away.
WAIT_TTL_SECONDS = 300
LEDGER_KEEP_SECONDS = 30 * 86400  # a tree's spend outlives any retry of it

_NOT_FOUND_HINT = ids.NOT_FOUND_HINT


_encode_body = msgspec.json.Encoder(enc_hook=json_default).encode


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


class RedisConnection:
    """The clients and the script runner one process shares between threads."""

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
            self._new_connection,
            lambda conn: conn.disconnect(),
        )
        # scripts without a ``meanwhile``: concurrent ones share a round trip
        self._batcher = ScriptBatcher(self._new_connection)

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

    def _new_connection(self) -> Any:
        pool = self.r.connection_pool
        return pool.connection_class(**pool.connection_kwargs)

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
                "follow": lua.FOLLOW,
                "wait_end": lua.WAIT_END,
                "usage": lua.ADD_USAGE,
                "reserve": lua.RESERVE,
                "record_step": lua.RECORD_STEP,
                "steps_after": lua.STEPS_AFTER,
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
                delay = RETRY.next_delay(attempt)
                if left == 0 or (deadline is not None and time.monotonic() + delay > deadline):
                    raise StateUnavailable(
                        f"cannot reach Redis at {self._masked} ({type(exc).__name__})",
                        "start it with `orchestra up` or set ORCHESTRA_STATE_URL",
                    ) from exc
                log_retry(log, "Redis", self._host, exc, delay, left, during=what)
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
        body = self._body(payload)
        once = [meanwhile] if meanwhile is not None else []
        failed: list[BaseException] = []  # meanwhile's error, kept across retries
        reply = self._call(script, lambda: self._evalsha(self._scripts[script], body, once, failed))
        if failed:
            raise failed[0]
        return reply

    def _body(self, payload: dict[str, Any]) -> bytes:
        """A script's JSON argument: ``payload`` with the prefix, a fresh operation token
        and the trim length (msgspec's encoder: ~1 us where ``dumps`` took ~11, twice
        a task in an agent; Lua's cjson reads any JSON)."""
        return _encode_body(
            {"p": self.prefix, "max": self.maxlen, "tok": new_id(), "ttl": self._op_ttl, **payload}
        )

    def _evalsha(
        self,
        script: Any,
        body: bytes,
        meanwhile: list[Callable[[], None]] | None = None,
        failed: list[BaseException] | None = None,
    ) -> Any:
        """EVALSHA, loading the script if the server lacks it: with ``meanwhile``, on
        this thread's own connection; otherwise through the batcher (``redis_batch``),
        whose round trips concurrent calls share.

        Both go straight on a connection, not through redis-py's command path
        (metrics hooks, its own retries, which are off here, reply callbacks)
        and the pool's checkout (a readiness poll: a system call, so a GIL
        hand-over in a busy agent): those cost an agent ~140 us of CPU per task.
        """
        if not meanwhile:
            return self._batcher.run(script, body)
        conn = self._script_conns.get()
        try:
            conn.send_command("EVALSHA", script.sha, 0, body)
            if meanwhile:  # sent: now it runs, and never again on a retry (the list empties)
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

    @property
    def create_window(self) -> float:
        """The longest a create can go on being retried (its operation token's lifetime):
        a message for a task not stored yet may be that old before the task exists."""
        return float(self._op_ttl)

    def close(self) -> None:
        """Disconnect the pool and the threads' script connections."""
        self._script_conns.close_all()
        self._batcher.close()
        if self._lite is not None:
            self._lite.close()
        if self._client is not None:
            self._client.close()
            self._client.connection_pool.disconnect()


def _text(value: Any) -> str:
    """A script's reply item (bytes from redis-py, or already text) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
