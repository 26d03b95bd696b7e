"""The embedded store's records of the agent loop: step log, artifacts, budget ledger."""

from __future__ import annotations

from typing import Any

from orchestra_cli.errors import NotFoundError
from orchestra_cli.models import Usage
from orchestra_cli.state.base import taken_over
from orchestra_cli.state.ledger import Ask, Ledger, Limits, grant
from orchestra_cli.state.sqlite_base import _NOT_FOUND_HINT, SQLiteBase
from orchestra_cli.util import dumps, loads, now


class SQLiteRecords(SQLiteBase):
    """``StepLog``, ``ArtifactStore`` and ``BudgetLedger`` on SQLite (state/base.py)."""

    # -- step log ----------------------------------------------------------
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
        task's usage, in one transaction; 0 if ``n`` exists already (nothing added), else
        1, or 2 if the root's step count is not ``root_seen`` (``StepLog.record_step``)."""
        with self.db.write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO steps (task_id, n, time, data) VALUES (?,?,?,?)",
                (task_id, n, now(), dumps(data)),
            )
            if cur.rowcount == 0:
                return 0
            if add_usage is not None:  # no such task: NotFoundError, the step rolled back
                self._add_usage(conn, task_id, add_usage)
            self._event(conn, task_id, root_id, "step", {"n": n, **event})
            if root_seen is not None:  # has anyone else written on the root since?
                (count,) = conn.execute(
                    "SELECT COUNT(*) FROM steps WHERE task_id = ?", (root_id,)
                ).fetchone()
                if count != root_seen + (root_id == task_id):
                    return 2
        return 1

    def steps(self, task_id: str) -> list[dict[str, Any]]:
        """The task's steps in order, each with its ``n`` and ``time``."""
        rows = self.db.conn().execute(
            "SELECT n, time, data FROM steps WHERE task_id = ? ORDER BY n", (task_id,)
        )
        return [{**loads(r["data"]), "n": r["n"], "time": r["time"]} for r in rows]

    def steps_after(self, task_id: str, after: int) -> tuple[int, list[dict[str, Any]]]:
        """How many steps the task has, and those numbered above ``after``, in order."""
        # one statement, so the count and the steps are of one moment; the older steps'
        # data is left where it is
        rows = (
            self.db.conn()
            .execute(
                "SELECT n, time, CASE WHEN n > ? THEN data END AS data FROM steps"
                " WHERE task_id = ? ORDER BY n",
                (after, task_id),
            )
            .fetchall()
        )
        new = [{**loads(r["data"]), "n": r["n"], "time": r["time"]} for r in rows if r["n"] > after]
        return len(rows), new

    # -- artifacts -------------------------------------------------------
    def save_artifacts(
        self,
        task_id: str,
        changes: dict[str, bytes | None],
        owner: tuple[str, int] | None = None,
    ) -> None:
        """Record a task's changed files (content-addressed); None: the file was deleted.
        With ``owner``: only while the task is that agent's attempt (same transaction)."""
        import hashlib  # here: its OpenSSL load was ~3 ms of every command's start

        with self.db.write() as conn:
            if owner is not None:
                row = conn.execute(
                    "SELECT agent, json_extract(data, '$.attempts') AS attempts FROM tasks"
                    " WHERE id = ?",
                    (task_id,),
                ).fetchone()
                held = (row["agent"], row["attempts"]) if row and row["agent"] else None
                if held != (owner[0], owner[1]):
                    raise taken_over(task_id, owner, held)
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
