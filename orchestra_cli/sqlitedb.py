"""The embedded backend's one SQLite file (WAL), shared by state and queues.

Every process and thread opens its own connection; writes take the write
lock up front (``BEGIN IMMEDIATE``) so concurrent writers never fail with
"database is locked" halfway through. Before that, a writer takes an
exclusive ``flock`` on ``<db>.lock``: waiting writers then sleep in the
kernel and wake the moment the lock is free, where SQLite's own busy handler
would sleep 1, 2, 5, 10… ms between tries (most of the embedded mode's time
under load). The kernel drops the lock of a killed process, as SQLite does.

Checkpoints (copying the WAL back into the database file, with an fsync) are
kept off the writers' path: SQLite runs one inside the ``COMMIT`` that grows
the WAL past ``wal_autocheckpoint`` pages, which held every other writer for
~7 ms (embedded latency p99 8.8 ms; 2.8 ms without). Long-running processes
(``orchestra run``, agents) checkpoint from a background thread every second
(``start_checkpointer``); writers only fall back to it past
``WAL_AUTOCHECKPOINT_PAGES``, when nothing else does.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestra_cli.errors import StateError, StateUnavailable

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 60_000
MAX_LOCK_ATTEMPTS = 20
CHECKPOINT_SECONDS = 1.0
WAL_AUTOCHECKPOINT_PAGES = 10_000  # ~40 MB: a writer checkpoints only if nobody else does

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    root_id TEXT NOT NULL,
    parent_id TEXT,
    status TEXT NOT NULL,
    agent TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    idempotency_key TEXT UNIQUE,
    version INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_root ON tasks(root_id);
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks(parent_id);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks(created_at);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status, created_at);
CREATE INDEX IF NOT EXISTS tasks_tail ON tasks(substr(id, 29));  -- short ids (ids.py)
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    root_id TEXT NOT NULL,
    type TEXT NOT NULL,
    time REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_root ON events(root_id, seq);
CREATE INDEX IF NOT EXISTS events_task ON events(task_id, seq);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    heartbeat_at REAL NOT NULL,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS control (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    available_at REAL NOT NULL,
    lease_until REAL,
    consumer TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    origin TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages(queue, priority DESC, id);
CREATE TABLE IF NOT EXISTS steps (
    task_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    time REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (task_id, n)
);
CREATE TABLE IF NOT EXISTS artifacts (
    task_id TEXT NOT NULL,
    path TEXT NOT NULL,
    sha TEXT,
    size INTEGER NOT NULL,
    PRIMARY KEY (task_id, path)
);
CREATE TABLE IF NOT EXISTS blobs (
    sha TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS budget_spent (
    root_id TEXT PRIMARY KEY,
    tokens INTEGER NOT NULL,
    usd REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS budget_holds (
    root_id TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    usd REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (root_id, hold_id)
);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


SQLITE_IOERR, SQLITE_FULL = 10, 13  # primary result codes (extended codes keep them low)


def _disk_trouble(exc: sqlite3.Error) -> str | None:
    """What the disk did when a write failed for want of room (or the disk failed it):
    not a bug to report; None for any other error."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == SQLITE_FULL or "disk is full" in str(exc):
        return "the disk is full"
    return "the disk failed the write" if code == SQLITE_IOERR else None


class SQLiteDB:
    """Per-thread connections to one database file, with write transactions."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._checkpointer: threading.Thread | None = None
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None  # every thread's writes (write)
        self._lock = -1  # the open <db>.lock the writer flocks
        self._behind: list[tuple[str, tuple[Any, ...]]] = []  # write_behind's statements
        self._behind_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateUnavailable(
                f"cannot create data dir {self.path.parent}: {exc.strerror}",
                "set ORCHESTRA_HOME to a writable directory",
            ) from exc
        self.conn().executescript(SCHEMA)

    def conn(self) -> sqlite3.Connection:
        """This thread's connection for reads — inside ``write``, the writer's, so that a
        read there sees the transaction's own changes."""
        conn: sqlite3.Connection | None = getattr(self._local, "writing", None)
        if conn is not None:
            return conn
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        except sqlite3.Error as exc:
            raise StateUnavailable(
                f"cannot open database {self.path}: {exc}",
                "check ORCHESTRA_HOME / state_url and the file's permissions",
            ) from exc
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE … COMMIT, rolled back on error.

        Every thread of the process writes through one connection, in turn (they
        took turns at the file lock anyway): its page cache stays valid from one
        transaction to the next unless another process committed between them. A
        connection per thread discarded its cache at every transaction of another
        thread and read the pages again inside the next, with the lock held (strace:
        48 preads a no-op task)."""
        with self._write_lock:
            if self._writer is None:  # both or neither: a failed open is tried again next time
                fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    conn = self._connect()
                except BaseException:
                    os.close(fd)
                    raise
                self._writer, self._lock = conn, fd
            conn, fd = self._writer, self._lock
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._local.writing = conn
            try:
                with self._transaction(conn):
                    yield conn
            finally:
                self._local.writing = None
                fcntl.flock(fd, fcntl.LOCK_UN)

    def write_behind(self, sql: str, params: tuple[Any, ...]) -> None:
        """Run ``sql`` in the next write transaction of this process, whichever thread
        opens it, or at ``flush_behind``: for a statement that may take effect a little
        late, or — if the process dies first — not at all (a message's ack: the message
        is redelivered). A busy agent's acks ride on its next claim instead of a
        transaction each. The statements run in a savepoint of their own: one that
        fails is logged and dropped, never failing its host; a host that fails gives
        them back for the next transaction."""
        with self._behind_lock:
            self._behind.append((sql, params))

    def behind(self) -> bool:
        """Whether write_behind statements wait for a transaction."""
        return bool(self._behind)

    def flush_behind(self) -> None:
        """Commit the waiting write_behind statements now (a transaction of their own)."""
        if self._behind:
            with self.write():
                pass

    def _take_behind(self) -> list[tuple[str, tuple[Any, ...]]]:
        if not self._behind:  # unlocked peek: a statement added meanwhile waits its turn
            return []
        with self._behind_lock:
            taken, self._behind = self._behind, []
        return taken

    def _give_back(self, taken: list[tuple[str, tuple[Any, ...]]]) -> None:
        if taken:
            with self._behind_lock:
                self._behind[:0] = taken

    def _run_behind(
        self, conn: sqlite3.Connection, taken: list[tuple[str, tuple[Any, ...]]]
    ) -> None:
        conn.execute("SAVEPOINT behind")
        try:
            for sql, params in taken:
                conn.execute(sql, params)
        except sqlite3.Error as exc:
            if _disk_trouble(exc) is not None:
                raise  # the host cannot commit either: both wait for room
            conn.execute("ROLLBACK TO behind")
            log.error(
                "dropped %d write-behind statement(s) (%s): %s; acked messages among them "
                "are redelivered",
                len(taken),
                taken[0][0].split(" ", 1)[0],
                exc,
            )
            taken.clear()  # not given back: they would fail every transaction
        conn.execute("RELEASE behind")

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        for attempt in range(MAX_LOCK_ATTEMPTS):
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise StateError(f"database error: {exc}", "see the log") from exc
                time.sleep(min(0.05 * (attempt + 1), 0.5))
        else:
            raise StateError(
                f"database {self.path} stayed locked", "another process holds it; retry"
            )
        taken: list[tuple[str, tuple[Any, ...]]] = []
        try:
            taken = self._take_behind()
            if taken:
                self._run_behind(conn, taken)
            yield
            conn.execute("COMMIT")
        except BaseException as exc:
            self._give_back(taken)  # rolled back with the rest: for the next transaction
            if conn.in_transaction:  # SQLite rolls back by itself after some errors
                conn.execute("ROLLBACK")
            trouble = _disk_trouble(exc) if isinstance(exc, sqlite3.Error) else None
            if trouble is not None:
                raise StateUnavailable(
                    f"cannot write {self.path}: {trouble} ({exc})",
                    "free space on its disk (or move ORCHESTRA_HOME); nothing was "
                    "half-written, and work resumes once there is room",
                ) from exc
            raise

    def start_checkpointer(self, interval: float = CHECKPOINT_SECONDS) -> None:
        """Checkpoint the WAL every ``interval`` seconds on a thread of its own."""
        if self._checkpointer is not None:
            return
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(interval,), name="sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self, interval: float) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as exc:  # writers fall back to checkpointing themselves
            log.warning("no background WAL checkpoints for %s: %s", self.path, exc)
            return
        try:
            while not self._stop.wait(interval):
                try:  # PASSIVE: never waits for, nor blocks, readers and writers
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:  # busy (another process checkpoints): next time
                    continue
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        try:  # again while a transaction that held some gave them back
            for _ in range(3):
                self.flush_behind()
                if not self._behind:
                    break
        except Exception:  # best effort: an unflushed ack is a redelivery, never a loss
            log.exception("could not commit the last write-behind statements")
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                os.close(self._lock)
                self._writer, self._lock = None, -1
