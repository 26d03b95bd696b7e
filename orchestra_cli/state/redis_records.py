"""The Redis store's records of the agent loop: step log, artifacts, budget ledger."""

from __future__ import annotations

import base64
import math
import sys
from typing import Any

from orchestra_cli import ids
from orchestra_cli.errors import NotFoundError, StateError
from orchestra_cli.models import Usage
from orchestra_cli.state.base import taken_over
from orchestra_cli.state.ledger import Ask, Ledger, Limits
from orchestra_cli.state.redis_conn import LEDGER_KEEP_SECONDS, RedisConnection, _text
from orchestra_cli.util import dumps, loads, now

FENCE_TRIES = 10  # a fenced save whose task keeps changing under it gives up (WATCH)

_NOT_FOUND_HINT = ids.NOT_FOUND_HINT


class RedisRecords(RedisConnection):
    """``StepLog``, ``ArtifactStore`` and ``BudgetLedger`` on Redis (state/base.py)."""

    # -- step log ------------------------------------------------------------
    def record_step(
        self,
        task_id: str,
        root_id: str,
        n: int,
        data: dict[str, Any],
        event: dict[str, Any],
        *,
        add_usage: Usage | None = None,
        root_seen: int | None = None,
    ) -> int:
        """Store step ``n`` of a task and its ``step`` event, and add ``add_usage`` to the
        task's usage, in one script; 0 if ``n`` exists already (nothing added), else 1, or
        2 if the root's step count is not ``root_seen`` (``StepLog.record_step``)."""
        payload = {"id": task_id, "root": root_id, "n": n, "time": now()}
        body: dict[str, Any] = {**payload, "data": dumps({**data, "time": payload["time"]})}
        if add_usage is not None:
            body["delta"] = add_usage.model_dump_json()
        if root_seen is not None:
            body["seen"] = root_seen
        written = self._run("record_step", {**body, "event": dumps({"n": n, **event})})
        if written == -1:
            raise NotFoundError(f"task {task_id} not found", _NOT_FOUND_HINT)
        return int(written)

    def steps(self, task_id: str) -> list[dict[str, Any]]:
        """The task's steps in order, each with its ``n`` and ``time``."""
        raw = self._call("steps", lambda: self.r.hgetall(self.key("steps", task_id)))
        items = sorted((int(_text(n)), _text(v)) for n, v in raw.items())
        return [{**loads(v), "n": n} for n, v in items]

    def steps_after(self, task_id: str, after: int) -> tuple[int, list[dict[str, Any]]]:
        """How many steps the task has, and those numbered above ``after``, in order (the
        older ones stay in Redis: a long loop's transcript is not read again each step)."""
        reply = self._run("steps_after", {"id": task_id, "after": after})
        pairs = sorted((int(_text(reply[i])), _text(reply[i + 1])) for i in range(1, len(reply), 2))
        return int(reply[0]), [{**loads(v), "n": n} for n, v in pairs]

    # -- artifacts -----------------------------------------------------------
    def save_artifacts(
        self,
        task_id: str,
        changes: dict[str, bytes | None],
        owner: tuple[str, int] | None = None,
    ) -> None:
        """Record a task's changed files (content-addressed); None: the file was deleted.
        With ``owner``, WATCH the task's hash: saved only while it is that agent's
        attempt (a change meanwhile, e.g. the turn's usage, makes it look again)."""
        if not changes:
            return
        import hashlib  # here: its OpenSSL load was ~3 ms of every command's start

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
            task_key = self.key("t", task_id)
            for _ in range(FENCE_TRIES):
                with self.r.pipeline(transaction=True) as pipe:
                    if owner is not None:
                        pipe.watch(task_key)
                        agent, attempts = pipe.hmget(task_key, "agent", "attempts")
                        held = (loads(agent), loads(attempts)) if agent and attempts else None
                        if held != (owner[0], owner[1]):
                            raise taken_over(task_id, owner, held)
                        pipe.multi()
                    for sha, data in blobs.items():  # base64: the client decodes as text
                        pipe.set(self.key("blob", sha), base64.b64encode(data).decode(), nx=True)
                    pipe.hset(self.key("art", task_id), mapping=manifest)
                    try:
                        pipe.execute()
                        return
                    except sys.modules["redis"].exceptions.WatchError:
                        continue  # the task changed meanwhile: look again
            raise StateError(f"task {task_id} kept changing while its files were saved")

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
