"""The embedded store's event log: one table, sequence numbers from AUTOINCREMENT."""

from __future__ import annotations

import time
from typing import Any

from orchestra_cli.errors import NotFoundError
from orchestra_cli.models import Event
from orchestra_cli.state.sqlite_base import _NOT_FOUND_HINT, SQLiteBase, _changed
from orchestra_cli.util import loads


class SQLiteEvents(SQLiteBase):
    """``EventLog`` on SQLite (state/base.py)."""

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

    def count_events(self, task_id: str, type: str) -> int:
        conn = self.db.conn()
        if conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
            raise NotFoundError(f"task {task_id} not found", _NOT_FOUND_HINT)
        sql = "SELECT COUNT(*) FROM events WHERE task_id = ? AND type = ?"
        return int(conn.execute(sql, (task_id, type)).fetchone()[0])
