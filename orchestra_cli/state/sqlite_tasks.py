"""The embedded store's tasks: create, read, list, transitions, claims and waits for an end."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from orchestra_cli import ids
from orchestra_cli.errors import NotFoundError, TransitionRejected
from orchestra_cli.models import Task, Usage
from orchestra_cli.state.base import PLAIN, Create, check_changes, rejection_reason
from orchestra_cli.state.sqlite_base import _NOT_FOUND_HINT, _TAIL, SQLiteBase, _changed
from orchestra_cli.status import TERMINAL, Status
from orchestra_cli.util import dumps, now

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


class SQLiteTasks(SQLiteBase):
    """``TaskStore`` on SQLite (state/base.py)."""

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

    def create_task(self, task: Task, how: Create = PLAIN) -> tuple[Task, bool]:
        result = self._create(task, how.dispatch)  # watch: wait_ended needs no count here
        if how.meanwhile is not None:  # nothing to overlap with here: after the commit
            how.meanwhile()
        return result

    def create_tasks(self, items: Sequence[tuple[Task, Create]]) -> list[tuple[Task, bool]]:
        """``create_task`` for each, in one transaction; then each ``meanwhile`` in order
        (the first one's error raised once all ran)."""
        if not items:
            return []
        with self.db.write() as conn:
            results = [self._create_in(conn, task, how.dispatch) for task, how in items]
        failed: list[BaseException] = []
        for _, how in items:
            if how.meanwhile is not None:
                try:
                    how.meanwhile()
                except BaseException as exc:
                    failed.append(exc)
        if failed:
            raise failed[0]
        return results

    def _create(self, task: Task, dispatch: dict[str, Any] | None) -> tuple[Task, bool]:
        with self.db.write() as conn:
            return self._create_in(conn, task, dispatch)

    def _create_in(
        self, conn: sqlite3.Connection, task: Task, dispatch: dict[str, Any] | None
    ) -> tuple[Task, bool]:
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

    def get_statuses(self, task_ids: Iterable[str]) -> dict[str, Status]:
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, Status] = {}
        for start in range(0, len(ids), 500):  # within SQLite's bound-variable limit
            chunk = ids[start : start + 500]
            rows = self.db.conn().execute(
                f"SELECT id, status FROM tasks WHERE id IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update((r["id"], Status(r["status"])) for r in rows)
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
            self._add_usage(conn, task_id, usage)

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
