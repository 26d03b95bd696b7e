"""The embedded store's agent registry and its locks."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from orchestra_cli.errors import NotFoundError
from orchestra_cli.models import AgentRecord
from orchestra_cli.sqlitedb import SQLiteDB
from orchestra_cli.state.sqlite_base import SQLiteBase
from orchestra_cli.util import now

if TYPE_CHECKING:  # a one-shot command never takes a lock
    from orchestra_cli.state.locks import TokenLock


class SQLiteAgents(SQLiteBase):
    """``AgentRegistry`` and ``Locks`` on SQLite (state/base.py)."""

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

    # -- locks -----------------------------------------------------------
    def lock(self, name: str, ttl: float) -> TokenLock:
        """A token lock (a row of the ``locks`` table) with expiry; see ``locks.TokenLock``."""
        from orchestra_cli.state.locks import TokenLock

        return TokenLock(SQLiteLockOps(self.db), name, ttl)


class SQLiteLockOps:
    """Locks as rows ``(name, token, expires_at)``, each change one write transaction."""

    def __init__(self, db: SQLiteDB) -> None:
        self.db = db

    def take(self, name: str, token: str, ttl_ms: int) -> bool:
        at = now()
        with self.db.write() as conn:
            conn.execute("DELETE FROM locks WHERE name = ? AND expires_at <= ?", (name, at))
            cur = conn.execute(
                "INSERT OR IGNORE INTO locks VALUES (?,?,?)", (name, token, at + ttl_ms / 1000)
            )
            return cur.rowcount == 1

    def extend(self, name: str, token: str, ttl_ms: int) -> bool:
        at = now()
        with self.db.write() as conn:
            cur = conn.execute(
                "UPDATE locks SET expires_at = ? WHERE name = ? AND token = ? AND expires_at > ?",
                (at + ttl_ms / 1000, name, token, at),
            )
            return cur.rowcount == 1

    def drop(self, name: str, token: str) -> bool:
        with self.db.write() as conn:
            cur = conn.execute(
                "DELETE FROM locks WHERE name = ? AND token = ? AND expires_at > ?",
                (name, token, now()),
            )
            return cur.rowcount == 1

    def holder(self, name: str) -> str | None:
        row = (
            self.db.conn()
            .execute("SELECT token FROM locks WHERE name = ? AND expires_at > ?", (name, now()))
            .fetchone()
        )
        return None if row is None else str(row["token"])
