"""Embedded broker: queues as rows of the SQLite file, claimed with a lease.

A consumer claims a message by setting ``lease_until``; a background thread
renews the leases of messages it still holds. When a consumer dies (even
``kill -9``) its leases run out and the messages become visible again, which
is the embedded equivalent of RabbitMQ redelivering an unacked message.

Waiting for work does not run the claim query in a loop: the consumer reads
``PRAGMA data_version`` (a counter in shared memory that moves when another
connection commits) every ``MIN_POLL_SECONDS`` while busy, and only looks
for a message when it moved. Quiet (no message for ``HOT_SECONDS``), it reads
it every ``COLD_POLL_SECONDS`` at most: the first message after a quiet spell
waits up to that long, and an idle process costs ~nothing. Without a commit
the claim is retried about every ``MAX_POLL_SECONDS`` anyway, which bounds how
late a delayed or lease-expired message is seen.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Collection
from typing import Any

from orchestra_cli.broker.base import decode_envelope, describe_letter
from orchestra_cli.errors import MalformedMessage
from orchestra_cli.models import Q_DEAD, Envelope
from orchestra_cli.sqlitedb import SQLiteDB
from orchestra_cli.util import new_id, now

log = logging.getLogger(__name__)

MIN_POLL_SECONDS = 0.0005
COLD_POLL_SECONDS = 0.02  # how late a quiet consumer sees a new message, at most
MAX_POLL_SECONDS = 0.05
HOT_SECONDS = 0.25  # keep the short pause this long after the last message
# Claiming ahead: a consumer whose messages settle within FAST_SECONDS (on average) takes
# up to AHEAD more than it has room for in the claim that finds it out of work, and hands
# them out with no statement of their own; slower work (an LLM call) is claimed only as
# room frees, so that no message waits behind a busy consumer while another is idle.
AHEAD = 8
FAST_SECONDS = 0.02
READY_SECONDS = 0.25  # what was claimed ahead and waits this long goes back to the queue


class SQLiteDelivery:
    """A claimed message row."""

    def __init__(
        self, consumer: SQLiteConsumer, msg_id: int, queue: str, envelope: Envelope, count: int
    ) -> None:
        self._consumer = consumer
        self.handed_out = time.monotonic()
        self.msg_id = msg_id
        self.queue = queue
        self.envelope = envelope
        self.delivery_count = count

    def ack(self) -> None:
        self._consumer.ack(self.msg_id, self.handed_out)

    def nack(self, *, delay: float = 0.0) -> None:
        self._consumer.settle(
            self.msg_id,
            "UPDATE messages SET lease_until = NULL, consumer = NULL, available_at = ? "
            "WHERE id = ? AND consumer = ?",
            (now() + delay,),
        )

    def defer(self, *, delay: float) -> None:
        self._consumer.settle(
            self.msg_id,
            "UPDATE messages SET lease_until = NULL, consumer = NULL, available_at = ?, "
            "deliveries = MAX(0, deliveries - 1) WHERE id = ? AND consumer = ?",
            (now() + delay,),
        )

    def dead_letter(self, reason: str) -> None:
        self._consumer.dead_letter(self.msg_id, reason)


class SQLiteConsumer:
    """Claims messages from some queues, holding at most ``prefetch`` at once."""

    def __init__(
        self,
        db: SQLiteDB,
        queues: list[str],
        *,
        prefetch: int,
        name: str,
        lease_seconds: float,
        max_deliveries: int,
    ) -> None:
        self.db = db
        self.queues = list(queues)
        self.prefetch = max(1, prefetch)
        self.tag = f"{name}:{new_id()[-12:]}"
        self.lease_seconds = lease_seconds
        self.max_deliveries = max_deliveries
        self._held: set[int] = set()  # claimed and not settled: handed out, or ready
        self._ready: deque[sqlite3.Row] = deque()  # claimed ahead, not yet handed out
        self._ready_at = 0.0  # when it was last filled
        self._settle_seconds: float | None = None  # moving average, hand-out to ack
        self._last_message = 0.0
        self._cond = threading.Condition()
        self._poll_lock = threading.Lock()
        self._closed = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"lease-{name}", daemon=True)
        self._renewer.start()
        marks = ",".join("?" * len(self.queues))
        self._ready_sql = (
            f"SELECT id FROM messages WHERE queue IN ({marks}) AND available_at <= ? "
            "AND (lease_until IS NULL OR lease_until < ?) ORDER BY priority DESC, id LIMIT ?"
        )
        # find and lease in one statement (one write transaction per claim)
        self._claim_sql = (
            "UPDATE messages SET lease_until = ?, consumer = ?, deliveries = deliveries + 1 "
            f"WHERE id IN ({self._ready_sql}) RETURNING id, queue, body, deliveries, priority"
        )

    def _renew_loop(self) -> None:
        interval = max(0.05, self.lease_seconds / 3)
        renewed = time.monotonic()
        while not self._closed.wait(min(interval, READY_SECONDS)):
            with self._cond:
                stale = bool(self._ready) and time.monotonic() - self._ready_at > READY_SECONDS
            if stale:  # the work is not fast any more: others may have what waits here
                self._release_ready()
            if time.monotonic() - renewed < interval:
                continue
            renewed = time.monotonic()
            with self._cond:
                held = list(self._held)
            if not held:
                continue
            try:
                with self.db.write() as conn:
                    conn.executemany(
                        "UPDATE messages SET lease_until = ? WHERE id = ? AND consumer = ?",
                        [(now() + self.lease_seconds, mid, self.tag) for mid in held],
                    )
            except Exception:  # keep renewing; a failed renewal at worst redelivers
                log.exception("lease renewal failed")

    def _claim(self) -> SQLiteDelivery | None:
        """The next message: one claimed ahead, or a claim of as many as there is room
        for (and AHEAD more for fast work) in one write transaction."""
        while True:
            with self._cond:
                row = self._ready.popleft() if self._ready else None
            if row is None:
                row = self._claim_rows()
            if row is None:
                return None
            delivery = self._deliver(row)
            if delivery is not None:
                return delivery

    def _claim_rows(self) -> sqlite3.Row | None:
        ts = now()
        if self.db.conn().execute(self._ready_sql, (*self.queues, ts, ts, 1)).fetchone() is None:
            return None  # nothing ready: no write lock taken
        with self._cond:
            room = self.prefetch - len(self._held)
            fast = self._settle_seconds is not None and self._settle_seconds < FAST_SECONDS
        want = max(1, room) + (AHEAD if fast else 0)
        with self.db.write() as conn:
            ts = now()
            claim = (ts + self.lease_seconds, self.tag, *self.queues, ts, ts, want)
            rows: list[sqlite3.Row] = conn.execute(self._claim_sql, claim).fetchall()  # ends it
        if not rows:
            return None
        rows.sort(key=lambda r: (-r["priority"], r["id"]))  # RETURNING keeps no order
        with self._cond:
            self._held.update(r["id"] for r in rows)
            self._ready.extend(rows[1:])
            self._ready_at = time.monotonic()
        return rows[0]

    def _deliver(self, row: sqlite3.Row) -> SQLiteDelivery | None:
        """A claimed row as a delivery; None when it was dead-lettered instead."""
        count = row["deliveries"]
        if count > self.max_deliveries:  # before decoding: whatever made it poison
            self.dead_letter(row["id"], f"delivered {count - 1} times without an ack (poison)")
            return None
        try:
            env = decode_envelope(bytes(row["body"]))
        except MalformedMessage as exc:
            log.warning(
                "dead-lettering malformed message %s on %s: %s",
                row["id"],
                row["queue"],
                exc.message,
            )
            self.dead_letter(row["id"], exc.message)
            return None
        return SQLiteDelivery(self, row["id"], row["queue"], env, count)

    def get(self, timeout: float) -> SQLiteDelivery | None:
        """The next message; callers take turns, so one thread polls however many wait."""
        deadline = time.monotonic() + timeout
        if not self._poll_lock.acquire(timeout=timeout):
            return None
        try:
            return self._get(deadline)
        finally:
            self._poll_lock.release()

    def _get(self, deadline: float) -> SQLiteDelivery | None:
        pause = MIN_POLL_SECONDS
        while not self._closed.is_set():
            if not self._wait_capacity(deadline):
                return None
            version = self._data_version()
            delivery = self._claim()
            if delivery is not None:
                self._last_message = time.monotonic()
                return delivery
            self._flush_acks()  # out of work: the acks waiting for a transaction
            if time.monotonic() >= deadline:  # commits keep coming, none of them for us
                return None
            hot = time.monotonic() - self._last_message < HOT_SECONDS
            pause = MIN_POLL_SECONDS if hot else min(pause * 2, MAX_POLL_SECONDS)
            # Hot, data_version is read every MIN_POLL_SECONDS and a commit is claimed
            # from at once. Cold, the reads space out to COLD_POLL_SECONDS and one step
            # is always slept first: every commit of every other process moves
            # data_version, and a quiet consumer that ran the claim query after each
            # (the orchestrator's while agents work) took ~40% of a core (py-spy).
            step = MIN_POLL_SECONDS if hot else min(pause, COLD_POLL_SECONDS)
            waited, first = 0.0, not hot
            while first or (version == self._data_version() and waited < pause):
                first = False
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if self._closed.wait(min(step, left)):
                    return None
                waited += step
                if self.db.behind():  # another thread acked meanwhile
                    self._flush_acks()
        return None

    def _flush_acks(self) -> None:
        """Commit the process's acks waiting behind; a failure (a full disk) is logged
        and they stay queued for the next write: waiting for work goes on."""
        try:
            self.db.flush_behind()
        except Exception as exc:
            log.warning("could not commit acks now (%s); they wait for the next write", exc)

    def _wait_capacity(self, deadline: float) -> bool:
        with self._cond:
            while len(self._held) - len(self._ready) >= self.prefetch:  # handed out
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _release_ready(self) -> None:
        """Give the messages claimed ahead back to their queue."""
        with self._cond:
            ahead = [r["id"] for r in self._ready]
            self._ready = deque()
            self._held.difference_update(ahead)
        self._give_back([], ahead)

    def _give_back(self, handed: list[int], ahead: list[int]) -> None:
        """Release these leases in one transaction; the claim of those only claimed
        ahead (never handed out) is not counted as a delivery."""
        if not handed and not ahead:
            return
        release = "UPDATE messages SET lease_until = NULL, consumer = NULL"
        try:
            with self.db.write() as conn:
                conn.executemany(
                    release + " WHERE id = ? AND consumer = ?", [(m, self.tag) for m in handed]
                )
                conn.executemany(
                    release + ", deliveries = MAX(0, deliveries - 1) WHERE id = ? AND consumer = ?",
                    [(m, self.tag) for m in ahead],
                )
        except Exception:
            log.exception("could not release held messages; their leases will expire")

    def _data_version(self) -> int:
        """Moves whenever another connection commits (a cheap shared-memory read)."""
        return int(self.db.conn().execute("PRAGMA data_version").fetchone()[0])

    def settle(self, msg_id: int, sql: str, params: tuple[Any, ...] = ()) -> None:
        """Run one settling statement (its last two parameters: id, consumer tag).

        The message is let go even when the statement fails: its lease then runs
        out and it is redelivered, instead of being renewed forever by a consumer
        that can no longer settle it.
        """
        try:
            with self.db.write() as conn:
                conn.execute(sql, (*params, msg_id, self.tag))
        finally:
            self._let_go(msg_id)

    def ack(self, msg_id: int, handed_out: float) -> None:
        """Delete the message in this process's next write transaction (write_behind):
        the next claim, or the state write of another message's handler, or — when
        nothing else writes — the consumer's own flush as it waits for work. Until
        then the row stays leased to this consumer; if the process dies first, the
        message is redelivered, and its task's state says it has been done."""
        self.db.write_behind(
            "DELETE FROM messages WHERE id = ? AND consumer = ?", (msg_id, self.tag)
        )
        took = time.monotonic() - handed_out
        with self._cond:
            last = self._settle_seconds
            self._settle_seconds = took if last is None else 0.8 * last + 0.2 * took
        self._let_go(msg_id)

    def _let_go(self, msg_id: int) -> None:
        with self._cond:
            self._held.discard(msg_id)
            self._cond.notify_all()

    def dead_letter(self, msg_id: int, reason: str) -> None:
        self.settle(
            msg_id,
            "UPDATE messages SET origin = queue, queue = ?, reason = ?, lease_until = NULL, "
            "consumer = NULL WHERE id = ? AND consumer = ?",
            (Q_DEAD, reason),
        )

    def close(self) -> None:
        """Stop renewing; unsettled messages go back to their queues at once."""
        self._closed.set()
        try:
            self.db.flush_behind()  # the acks first: those messages are done
        except Exception:
            log.exception("could not commit acks; those messages will be redelivered")
        with self._cond:
            ahead = [r["id"] for r in self._ready]
            handed = list(self._held.difference(ahead))
            self._ready = deque()
            self._held.clear()
            self._cond.notify_all()
        self._give_back(handed, ahead)


class SQLiteBroker:
    """Broker on the embedded SQLite file."""

    def __init__(self, db: SQLiteDB, *, lease_seconds: float, max_deliveries: int) -> None:
        self.db = db
        self.url = f"sqlite:///{db.path}"
        self.lease_seconds = lease_seconds
        self.max_deliveries = max_deliveries

    def publish(
        self,
        queue: str,
        envelope: Envelope,
        *,
        priority: int = 0,
        delay: float = 0.0,
        confirm: bool = True,
        awaited: bool = False,
    ) -> None:
        """Committed when it returns (``confirm`` changes nothing here)."""
        self._insert(queue, envelope.encode(), priority, delay)

    def flush(self, timeout: float | None = None, *, reconnect: bool = True) -> None:
        """Nothing to wait for: every publish is a committed transaction."""

    def connect(self) -> None:
        """Nothing to open: the database is the broker."""

    def publish_raw(self, queue: str, body: bytes) -> None:
        self._insert(queue, body, 0, 0.0)

    def dead_letter(self, origin: str, envelope: Envelope, reason: str) -> None:
        self._insert(Q_DEAD, envelope.encode(), 0, 0.0, origin=origin, reason=reason)

    def _insert(
        self,
        queue: str,
        body: bytes,
        priority: int,
        delay: float,
        origin: str | None = None,
        reason: str | None = None,
    ) -> None:
        ts = now()
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO messages (queue, priority, body, enqueued_at, available_at, "
                "origin, reason) VALUES (?,?,?,?,?,?,?)",
                (queue, priority, body, ts, ts + delay, origin, reason),
            )

    def publish_control(self, message: dict[str, Any]) -> None:
        from orchestra_cli.broker import sqlite_control

        sqlite_control.publish(self.db, message)

    def control_consumer(self, name: str) -> Any:
        from orchestra_cli.broker.sqlite_control import SQLiteControlConsumer

        return SQLiteControlConsumer(self.db, name)

    def consumer(self, queues: list[str], *, prefetch: int, name: str) -> SQLiteConsumer:
        return SQLiteConsumer(
            self.db,
            queues,
            prefetch=prefetch,
            name=name,
            lease_seconds=self.lease_seconds,
            max_deliveries=self.max_deliveries,
        )

    def health(self, queues: list[str] | None = None) -> dict[str, Any]:
        """Round trip and, per queue, messages and holders of unexpired leases."""
        started = time.perf_counter()
        try:
            rows = (
                self.db.conn()
                .execute(
                    "SELECT queue, COUNT(*) AS n, COUNT(DISTINCT CASE WHEN lease_until > ? "
                    "THEN consumer END) AS c FROM messages GROUP BY queue",
                    (now(),),
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            return {"ok": False, "url": self.url, "error": f"{type(exc).__name__}: {exc}"}
        found = {q: {"messages": 0, "consumers": 0} for q in queues or []}
        found.update({r["queue"]: {"messages": r["n"], "consumers": r["c"]} for r in rows})
        return {
            "ok": True,
            "url": self.url,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "queues": found,
        }

    def depths(self) -> dict[str, int]:
        rows = (
            self.db.conn()
            .execute("SELECT queue, COUNT(*) AS n FROM messages GROUP BY queue ORDER BY queue")
            .fetchall()
        )
        return {r["queue"]: r["n"] for r in rows}

    def dead_letters(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = (
            self.db.conn()
            .execute(
                "SELECT id, origin, reason, body, enqueued_at, deliveries FROM messages "
                "WHERE queue = ? ORDER BY id DESC LIMIT ?",
                (Q_DEAD, limit),
            )
            .fetchall()
        )
        return [
            {
                "id": str(r["id"]),
                "queue": r["origin"],
                "reason": r["reason"],
                "deliveries": r["deliveries"],
                "enqueued_at": r["enqueued_at"],
                "headers": {},  # a row has its columns, not headers
                **describe_letter(bytes(r["body"])),
            }
            for r in rows
        ]

    def remove_dead_letters(self, ids: Collection[str]) -> int:
        """Delete these letters (ids as ``dead_letters`` gives them); how many went."""
        rows = [int(i) for i in ids if i.isdigit()]
        if not rows:
            return 0
        with self.db.write() as conn:
            return sum(
                conn.execute(
                    "DELETE FROM messages WHERE queue = ? AND id = ?", (Q_DEAD, row)
                ).rowcount
                for row in rows
            )

    def purge(self, queue: str) -> int:
        with self.db.write() as conn:
            return conn.execute("DELETE FROM messages WHERE queue = ?", (queue,)).rowcount

    def close(self) -> None:
        self.db.close()
