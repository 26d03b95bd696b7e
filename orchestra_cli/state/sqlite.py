"""Embedded state store: tasks, events and agents in the SQLite file."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from orchestra_cli import ids
from orchestra_cli.errors import NotFoundError, TransitionRejected
from orchestra_cli.models import AgentRecord, Event, Task, Usage
from orchestra_cli.sqlitedb import SQLiteDB
from orchestra_cli.state.base import check_changes, rejection_reason
from orchestra_cli.state.ledger import Ask, Ledger, Limits, grant
from orchestra_cli.status import TERMINAL, Status
from orchestra_cli.util import dumps, loads, now

_TASK_COLUMNS = (
    "id, root_id, parent_id, status, agent, created_at, updated_at, idempotency_key, version, data"
)


def _row_to_task(row: sqlite3.Row) -> Task:
    return Task.model_validate_json(row["data"])


def _task_params(task: Task) -> tuple[Any, ...]:
    return (
        task.id,
        task.root_id,
        task.parent_id,
        task.status.value,
        task.agent,
        task.created_at,
        task.updated_at,
        task.idempotency_key,
        task.version,
        task.model_dump_json(),
    )


# how often a waiting event read looks at data_version: from 0.5 ms, doubling to 20 ms
EVENT_WAIT_FIRST_STEP_SECONDS = 0.0005
EVENT_WAIT_MAX_STEP_SECONDS = 0.02
_NOT_FOUND_HINT = ids.NOT_FOUND_HINT
_TAIL = f"substr(id, {ids.TAIL_START + 1})"  # the short id, as tasks_tail indexes it


class SQLiteStateStore:
    """StateStore on the embedded SQLite file."""

    def __init__(self, db: SQLiteDB) -> None:
        self.db = db

    # -- tasks -----------------------------------------------------------
    def _insert(self, conn: sqlite3.Connection, task: Task) -> None:
        conn.execute(
            f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            _task_params(task),
        )
        self._event(
            conn,
            task.id,
            task.root_id,
            "created",
            {
                "title": task.title,
                "capability": task.capability,
                "parent_id": task.parent_id,
            },
        )

    def _event(
        self,
        conn: sqlite3.Connection,
        task_id: str,
        root_id: str,
        type: str,
        data: dict[str, Any] | None,
    ) -> None:
        conn.execute(
            "INSERT INTO events (task_id, root_id, type, time, data) VALUES (?,?,?,?,?)",
            (task_id, root_id, type, now(), dumps(data or {})),
        )

    def create_task(
        self,
        task: Task,
        *,
        dispatch: dict[str, Any] | None = None,
        meanwhile: Callable[[], None] | None = None,
        watch: bool = False,
    ) -> tuple[Task, bool]:
        result = self._create(task, dispatch)  # watch: wait_ended needs no count here
        if meanwhile is not None:  # nothing to overlap with here: after the commit
            meanwhile()
        return result

    def _create(self, task: Task, dispatch: dict[str, Any] | None) -> tuple[Task, bool]:
        with self.db.write() as conn:
            if task.idempotency_key:
                row = conn.execute(
                    "SELECT data FROM tasks WHERE idempotency_key = ?", (task.idempotency_key,)
                ).fetchone()
                if row is not None:
                    return _row_to_task(row), False
            self._insert(conn, task)
            if dispatch is not None:
                return self._apply(conn, task, Status.QUEUED, dispatch, {}), True
        return task, True

    def create_subtasks(self, parent_id: str, children: list[Task], reason: str) -> Task:
        with self.db.write() as conn:
            parent = self._load(conn, parent_id)
            if parent.status != Status.PENDING:
                raise TransitionRejected(
                    f"task {parent_id} is {parent.status}, not pending", parent
                )
            for child in children:
                self._insert(conn, child)
            return self._apply(
                conn,
                parent,
                Status.WAITING,
                {
                    "reason": reason,
                    "subtasks": [c.id for c in children],
                },
                {},
            )

    def _load(self, conn: sqlite3.Connection, task_id: str) -> Task:
        row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"task {task_id} not found", _NOT_FOUND_HINT)
        return _row_to_task(row)

    def get_task(self, task_id: str) -> Task:
        conn = self.db.conn()
        row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is not None:
            return _row_to_task(row)
        found = ids.resolve(task_id, self._ids_by_prefix, self._ids_by_tail, self._titles)
        return self._load(conn, found)

    def _ids_by_prefix(self, prefix: str, limit: int) -> list[str]:
        rows = self.db.conn().execute(
            "SELECT id FROM tasks WHERE id >= ? AND id < ? LIMIT ?",
            (prefix, prefix + "\uffff", limit),
        )
        return [r[0] for r in rows]

    def _ids_by_tail(self, tail: str, limit: int) -> list[str]:
        rows = self.db.conn().execute(  # the tasks_tail index
            f"SELECT id FROM tasks WHERE {_TAIL} >= ? AND {_TAIL} < ? LIMIT ?",
            (tail, tail + "\uffff", limit),
        )
        return [r[0] for r in rows]

    def _titles(self, task_ids: list[str]) -> dict[str, str]:
        return {i: t.title for i, t in self.get_tasks(task_ids).items()}

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
        where, params = [], []  # type: list[str], list[Any]
        statuses = list(status or [])
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            params.extend(statuses)
        if agent:
            where.append("agent = ?")
            params.append(agent)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        if roots_only:
            where.append("parent_id IS NULL")
        if capability:
            where.append("json_extract(data, '$.capability') = ?")
            params.append(capability)
        for key, value in (labels or {}).items():
            where.append("json_extract(data, '$.labels.' || ?) = ?")  # the key quoted for a path
            params.extend([dumps(key), value])
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = (
            self.db.conn()
            .execute(
                f"SELECT data FROM tasks {clause} ORDER BY created_at DESC, id DESC LIMIT ?",
                (*params, limit),
            )
            .fetchall()
        )
        return [_row_to_task(r) for r in rows]

    def get_tasks(self, task_ids: Iterable[str]) -> dict[str, Task]:
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, Task] = {}
        for start in range(0, len(ids), 500):  # within SQLite's bound-variable limit
            chunk = ids[start : start + 500]
            rows = (
                self.db.conn()
                .execute(
                    f"SELECT data FROM tasks WHERE id IN ({','.join('?' * len(chunk))})", chunk
                )
                .fetchall()
            )
            found.update((t.id, t) for t in map(_row_to_task, rows))
        return found

    def status_counts(self) -> dict[str, int]:
        rows = self.db.conn().execute("SELECT status, count(*) FROM tasks GROUP BY status")
        return {str(status): int(n) for status, n in rows.fetchall()}

    def tree(self, root_id: str) -> list[Task]:
        rows = (
            self.db.conn()
            .execute("SELECT data FROM tasks WHERE root_id = ? ORDER BY created_at, id", (root_id,))
            .fetchall()
        )
        return [_row_to_task(r) for r in rows]

    def children(self, parent_id: str) -> list[Task]:
        rows = (
            self.db.conn()
            .execute(
                "SELECT data FROM tasks WHERE parent_id = ? ORDER BY created_at, id", (parent_id,)
            )
            .fetchall()
        )
        return [_row_to_task(r) for r in rows]

    def transition(
        self,
        task_id: str,
        to: Status,
        *,
        expect_version: int | None = None,
        expect_status: Iterable[Status] | None = None,
        event_data: dict[str, Any] | None = None,
        add_usage: Usage | None = None,
        known: Task | None = None,  # the row is read in the transaction anyway
        **changes: Any,
    ) -> Task:
        check_changes(changes)
        with self.db.write() as conn:
            task = self._load(conn, task_id)
            reason = rejection_reason(task, to, expect_version, expect_status)
            if reason:
                raise TransitionRejected(f"task {task_id}: {reason}", task)
            if add_usage is not None:
                changes = {**changes, "usage": task.usage + add_usage}
            return self._apply(conn, task, to, event_data, changes)

    def claim(self, task_id: str, agent: str) -> tuple[Task, bool]:
        """queued → running for ``agent`` in one transaction; (task, whether it was claimed)."""
        with self.db.write() as conn:
            task = self._load(conn, task_id)
            if task.status != Status.QUEUED:
                return task, False
            changes = {"agent": agent, "attempts": task.attempts + 1, "error": None}
            return self._apply(conn, task, Status.RUNNING, None, changes), True

    def _apply(
        self,
        conn: sqlite3.Connection,
        task: Task,
        to: Status,
        event_data: dict[str, Any] | None,
        changes: dict[str, Any],
    ) -> Task:
        ts = now()
        src = task.status
        updated = task.model_copy(
            update={**changes, "status": to, "updated_at": ts, "version": task.version + 1}
        )
        if to == Status.QUEUED:
            updated.queued_at = ts
        elif to in (Status.RUNNING, Status.WAITING):
            updated.started_at = ts
            updated.finished_at = None
        if to in TERMINAL:
            updated.finished_at = ts
        conn.execute(
            "UPDATE tasks SET status = ?, agent = ?, updated_at = ?, version = ?, data = ? "
            "WHERE id = ?",
            (to.value, updated.agent, ts, updated.version, updated.model_dump_json(), task.id),
        )
        data = {
            "from": src.value,
            "to": to.value,
            "attempt": updated.attempts,
            "agent": updated.agent,
            **(event_data or {}),
        }
        if to in TERMINAL and updated.error:
            data.setdefault("error", updated.error)
        self._event(conn, task.id, task.root_id, to.value, data)
        return updated

    def add_usage(self, task_id: str, usage: Usage) -> None:
        with self.db.write() as conn:
            task = self._load(conn, task_id)
            task.usage = task.usage + usage
            conn.execute(
                "UPDATE tasks SET data = ? WHERE id = ?", (task.model_dump_json(), task_id)
            )

    # -- step log ----------------------------------------------------------
    def record_step(
        self, task_id: str, root_id: str, n: int, data: dict[str, Any], event: dict[str, Any]
    ) -> bool:
        """Store step ``n`` of a task and its ``step`` event; False if ``n`` exists already."""
        with self.db.write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO steps (task_id, n, time, data) VALUES (?,?,?,?)",
                (task_id, n, now(), dumps(data)),
            )
            if cur.rowcount == 0:
                return False
            self._event(conn, task_id, root_id, "step", {"n": n, **event})
        return True

    def steps(self, task_id: str) -> list[dict[str, Any]]:
        """The task's steps in order, each with its ``n`` and ``time``."""
        rows = self.db.conn().execute(
            "SELECT n, time, data FROM steps WHERE task_id = ? ORDER BY n", (task_id,)
        )
        return [{**loads(r["data"]), "n": r["n"], "time": r["time"]} for r in rows]

    # -- artifacts -------------------------------------------------------
    def save_artifacts(self, task_id: str, changes: dict[str, bytes | None]) -> None:
        """Record a task's changed files (content-addressed); None: the file was deleted."""
        with self.db.write() as conn:
            for path, data in changes.items():
                if data is None:
                    conn.execute(
                        "INSERT OR REPLACE INTO artifacts VALUES (?,?,NULL,0)", (task_id, path)
                    )
                    continue
                sha = hashlib.sha256(data).hexdigest()
                conn.execute("INSERT OR IGNORE INTO blobs VALUES (?,?)", (sha, data))
                conn.execute(
                    "INSERT OR REPLACE INTO artifacts VALUES (?,?,?,?)",
                    (task_id, path, sha, len(data)),
                )

    def artifacts(self, task_id: str) -> dict[str, tuple[str | None, int]]:
        """A task's files: path → (content hash, size); a hash of None is a deletion."""
        rows = self.db.conn().execute(
            "SELECT path, sha, size FROM artifacts WHERE task_id = ? ORDER BY path", (task_id,)
        )
        return {r["path"]: (r["sha"], r["size"]) for r in rows}

    def blob(self, sha: str) -> bytes:
        row = self.db.conn().execute("SELECT data FROM blobs WHERE sha = ?", (sha,)).fetchone()
        if row is None:
            raise NotFoundError(f"artifact content {sha[:12]} not found", _NOT_FOUND_HINT)
        return bytes(row["data"])

    # -- budget ledger ---------------------------------------------------
    def reserve_budget(
        self, root_id: str, hold_id: str, ask: Ask, limits: Limits, *, ttl: float
    ) -> Ledger:
        """Hold ``ask``'s worst case (its output lowered to what is left), or refuse."""
        with self.db.write() as conn:
            mine = conn.execute(
                "SELECT tokens FROM budget_holds WHERE root_id = ? AND hold_id = ?",
                (root_id, hold_id),
            ).fetchone()
            if mine is not None:  # asked again for the same hold: the same grant
                return Ledger(granted=int(mine["tokens"]) - ask.input)
            current = now()
            # a hold outlived by its call was billed, most likely, by a process that died:
            # it counts as spent, not as budget set free
            expired = conn.execute(
                "SELECT COALESCE(SUM(tokens), 0) AS t, COALESCE(SUM(usd), 0.0) AS u, COUNT(*) AS n "
                "FROM budget_holds WHERE root_id = ? AND expires_at < ?",
                (root_id, current),
            ).fetchone()
            if expired["n"]:
                conn.execute(
                    "INSERT INTO budget_spent VALUES (?,?,?) ON CONFLICT(root_id) DO UPDATE SET "
                    "tokens = tokens + excluded.tokens, usd = usd + excluded.usd",
                    (root_id, int(expired["t"]), float(expired["u"])),
                )
                conn.execute(
                    "DELETE FROM budget_holds WHERE root_id = ? AND expires_at < ?",
                    (root_id, current),
                )
            row = conn.execute(
                "SELECT tokens, usd FROM budget_spent WHERE root_id = ?", (root_id,)
            ).fetchone()
            spent = (row["tokens"], row["usd"]) if row else (0, 0.0)
            held_row = conn.execute(
                "SELECT COALESCE(SUM(tokens), 0) AS t, COALESCE(SUM(usd), 0.0) AS u "
                "FROM budget_holds WHERE root_id = ?",
                (root_id,),
            ).fetchone()
            held = (int(held_row["t"]), float(held_row["u"]))
            out = grant(ask, limits, spent, held)
            if out > 0:
                tokens = ask.input + out
                usd = ask.input * ask.in_price + out * ask.out_price
                conn.execute(
                    "INSERT OR REPLACE INTO budget_holds VALUES (?,?,?,?,?)",
                    (root_id, hold_id, tokens, usd, current + ttl),
                )
        return Ledger(spent[0], spent[1], held[0], held[1], out)

    def settle_budget(self, root_id: str, hold_id: str, tokens: int, usd: float) -> None:
        """Release a hold and add what the call really used to the tree's spend."""
        with self.db.write() as conn:
            conn.execute(
                "DELETE FROM budget_holds WHERE root_id = ? AND hold_id = ?", (root_id, hold_id)
            )
            conn.execute(
                "INSERT INTO budget_spent VALUES (?,?,?) ON CONFLICT(root_id) DO UPDATE SET "
                "tokens = tokens + excluded.tokens, usd = usd + excluded.usd",
                (root_id, tokens, usd),
            )

    # -- events ----------------------------------------------------------
    def append_event(
        self, task_id: str, root_id: str, type: str, data: dict[str, Any] | None = None
    ) -> None:
        with self.db.write() as conn:
            self._event(conn, task_id, root_id, type, data)

    def events(
        self, *, root_id: str | None = None, after: int = 0, limit: int = 1000, wait: float = 0.0
    ) -> list[Event]:
        if root_id is None:
            sql, params = "SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        else:
            sql = "SELECT * FROM events WHERE root_id = ? AND seq > ? ORDER BY seq LIMIT ?"
            params = (root_id, after, limit)  # type: ignore[assignment]
        conn = self.db.conn()
        deadline = time.monotonic() + wait
        while True:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            rows = conn.execute(sql, params).fetchall()
            if rows or not _changed(conn, version, deadline):
                break
        return [
            Event(
                seq=r["seq"],
                task_id=r["task_id"],
                root_id=r["root_id"],
                type=r["type"],
                time=r["time"],
                data=loads(r["data"]),
            )
            for r in rows
        ]

    def wait_ended(self, task_id: str, wait: float, *, counted: bool = False) -> Task | None:
        conn = self.db.conn()
        deadline = time.monotonic() + wait
        while True:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            task = self._load(conn, task_id)
            if task.status in TERMINAL:
                return task
            if not _changed(conn, version, deadline):
                return None

    def count_events(self, task_id: str, type: str) -> int:
        row = (
            self.db.conn()
            .execute("SELECT COUNT(*) FROM events WHERE task_id = ? AND type = ?", (task_id, type))
            .fetchone()
        )
        return int(row[0])

    # -- agents ----------------------------------------------------------
    def save_agent(self, agent: AgentRecord, *, fresh: bool = False) -> bool:
        with self.db.write() as conn:
            row = conn.execute(
                "SELECT stop_requested FROM agents WHERE name = ?", (agent.name,)
            ).fetchone()
            stop = bool(row and row["stop_requested"]) and not fresh
            agent.stop_requested = stop
            conn.execute(
                "INSERT INTO agents (name, heartbeat_at, stop_requested, data) VALUES (?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
                "stop_requested = excluded.stop_requested, data = excluded.data",
                (agent.name, agent.heartbeat_at, int(stop), agent.model_dump_json()),
            )
        return stop

    def _agent_from_row(self, row: sqlite3.Row) -> AgentRecord:
        rec = AgentRecord.model_validate_json(row["data"])
        rec.stop_requested = bool(row["stop_requested"])
        return rec

    def list_agents(self) -> list[AgentRecord]:
        rows = self.db.conn().execute("SELECT * FROM agents ORDER BY name").fetchall()
        return [self._agent_from_row(r) for r in rows]

    def get_agent(self, name: str) -> AgentRecord:
        row = self.db.conn().execute("SELECT * FROM agents WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"agent {name!r} not found", "`orchestra agent list` shows agents")
        return self._agent_from_row(row)

    def request_agent_stop(self, name: str) -> AgentRecord:
        with self.db.write() as conn:
            cur = conn.execute("UPDATE agents SET stop_requested = 1 WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise NotFoundError(
                    f"agent {name!r} not found", "`orchestra agent list` shows agents"
                )
        return self.get_agent(name)

    def delete_agent(self, name: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM agents WHERE name = ?", (name,))

    def export_snapshot(self, path: Path) -> int:
        """An online, consistent copy of the whole file (SQLite backup API); its size."""
        target = sqlite3.connect(path)
        try:
            self.db.conn().backup(target)
        finally:
            target.close()
        return path.stat().st_size

    def import_snapshot(self, path: Path) -> int:
        """Copy the snapshot over the live database, in one backup step under the write lock."""
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            source.backup(self.db.conn())
        finally:
            source.close()
        return path.stat().st_size

    def health(self) -> dict[str, Any]:
        """A read round trip, the file's size and its journal mode."""
        started = time.perf_counter()
        try:
            conn = self.db.conn()
            conn.execute("SELECT COUNT(*) FROM agents").fetchone()
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        except sqlite3.Error as exc:
            return {"ok": False, "url": f"sqlite:///{self.db.path}", "error": str(exc)}
        return {
            "ok": True,
            "url": f"sqlite:///{self.db.path}",
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "journal_mode": mode,
            "size_bytes": self.db.path.stat().st_size,
        }

    def close(self) -> None:
        self.db.close()


def _changed(conn: sqlite3.Connection, version: int, deadline: float) -> bool:
    """Wait until another connection commits (``data_version`` moves); False at ``deadline``.

    Checked often at first (a change is usually near), less while quiet.
    """
    step = EVENT_WAIT_FIRST_STEP_SECONDS
    while conn.execute("PRAGMA data_version").fetchone()[0] == version:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(step, left))
        step = min(step * 2, EVENT_WAIT_MAX_STEP_SECONDS)
    return True
