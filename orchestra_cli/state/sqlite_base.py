"""The embedded store's base: the SQLite file every part of it shares, and its event writes."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from orchestra_cli import ids
from orchestra_cli.errors import NotFoundError
from orchestra_cli.models import Task, Usage
from orchestra_cli.sqlitedb import SQLiteDB
from orchestra_cli.util import dumps, now

# how often a waiting event read looks at data_version: from 0.5 ms, doubling to 20 ms
EVENT_WAIT_FIRST_STEP_SECONDS = 0.0005
EVENT_WAIT_MAX_STEP_SECONDS = 0.02
_NOT_FOUND_HINT = ids.NOT_FOUND_HINT
_TAIL = f"substr(id, {ids.TAIL_START + 1})"  # the short id, as tasks_tail indexes it


class SQLiteBase:
    """The database file (``sqlitedb.SQLiteDB``) and what every part writes with it."""

    def __init__(self, db: SQLiteDB) -> None:
        self.db = db

    @property
    def create_window(self) -> float:
        """A create is committed before its message is published (``meanwhile`` runs
        after the commit): no message is ever older than the task it names."""
        return 0.0

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

    def _add_usage(self, conn: sqlite3.Connection, task_id: str, usage: Usage) -> None:
        """Add ``usage`` to the task's, in the caller's transaction (NotFoundError: none)."""
        row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"task {task_id} not found", _NOT_FOUND_HINT)
        task = Task.model_validate_json(row["data"])
        task.usage = task.usage + usage
        conn.execute("UPDATE tasks SET data = ? WHERE id = ?", (task.model_dump_json(), task_id))

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
