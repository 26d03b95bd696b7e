"""Embedded state store: every part of the state seam in the one SQLite file,
plus snapshots and health."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from orchestra_cli.state.sqlite_agents import SQLiteAgents
from orchestra_cli.state.sqlite_events import SQLiteEvents
from orchestra_cli.state.sqlite_records import SQLiteRecords
from orchestra_cli.state.sqlite_tasks import SQLiteTasks


class SQLiteStateStore(SQLiteTasks, SQLiteEvents, SQLiteRecords, SQLiteAgents):
    """StateStore on the embedded SQLite file."""

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
