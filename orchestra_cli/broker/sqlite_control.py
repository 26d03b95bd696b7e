"""Embedded control channel: broadcast rows every agent reads after its start.

Fanout semantics without a server: a publisher appends a row; each consumer
remembers the last sequence it saw and reads what came after. Control
messages are hints (the state store stays authoritative), so old rows are
simply pruned.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from orchestra_cli.broker.base import parse_control
from orchestra_cli.sqlitedb import SQLiteDB
from orchestra_cli.util import now

log = logging.getLogger(__name__)

KEEP_SECONDS = 3600.0
POLL_SECONDS = 0.1


def publish(db: SQLiteDB, message: dict[str, Any]) -> None:
    with db.write() as conn:
        conn.execute("INSERT INTO control (time, body) VALUES (?, ?)", (now(), json.dumps(message)))
        conn.execute("DELETE FROM control WHERE time < ?", (now() - KEEP_SECONDS,))


class SQLiteControlConsumer:
    """Reads control messages published after it was created."""

    def __init__(self, db: SQLiteDB, name: str) -> None:
        self.db = db
        self.name = name
        row = db.conn().execute("SELECT COALESCE(MAX(seq), 0) FROM control").fetchone()
        self._seq = int(row[0])
        self._buffer: list[dict[str, Any]] = []
        self._closed = threading.Event()

    def get(self, timeout: float) -> dict[str, Any] | None:
        deadline = now() + timeout
        while not self._buffer and not self._closed.is_set():
            rows = (
                self.db.conn()
                .execute("SELECT seq, body FROM control WHERE seq > ? ORDER BY seq", (self._seq,))
                .fetchall()
            )
            for row in rows:
                self._seq = row["seq"]
                message = parse_control(row["body"])
                if message is None:
                    log.warning("ignoring a malformed control message %s", row["seq"])
                else:
                    self._buffer.append(message)
            if self._buffer or now() >= deadline:
                break
            self._closed.wait(min(POLL_SECONDS, max(0.0, deadline - now())))
        return self._buffer.pop(0) if self._buffer else None

    def close(self) -> None:
        self._closed.set()
