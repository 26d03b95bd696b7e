"""The embedded backend's SQLite file: one writer connection per process, and
statements that ride on the next write transaction (``write_behind``)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestra_cli.sqlitedb import SQLiteDB


@pytest.fixture
def db(tmp_path: Path) -> SQLiteDB:
    return SQLiteDB(tmp_path / "orchestra.db")


def _count(db: SQLiteDB) -> int:
    return int(db.conn().execute("SELECT count(*) FROM locks").fetchone()[0])


def _insert(name: str) -> tuple[str, tuple[str, str, float]]:
    return "INSERT INTO locks VALUES (?,?,?)", (name, "t", 0.0)


def test_a_read_inside_a_write_sees_its_own_changes_and_other_threads_do_not(
    db: SQLiteDB,
) -> None:
    seen_elsewhere: list[int] = []
    with db.write() as conn:
        conn.execute(*_insert("a"))
        assert _count(db) == 1  # conn() inside write() is the writer
        reader = threading.Thread(target=lambda: seen_elsewhere.append(_count(db)))
        reader.start()
        reader.join()
    assert seen_elsewhere == [0]  # another thread reads what is committed
    assert _count(db) == 1


def test_threads_write_in_turn_through_one_connection_and_none_is_lost(db: SQLiteDB) -> None:
    used: set[int] = set()

    def writes(n: int) -> None:
        for i in range(50):
            with db.write() as conn:
                used.add(id(conn))
                conn.execute(*_insert(f"{n}-{i}"))

    threads = [threading.Thread(target=writes, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _count(db) == 400 and len(used) == 1


def test_a_failing_write_behind_statement_is_dropped_and_its_host_commits(
    db: SQLiteDB, caplog: pytest.LogCaptureFixture
) -> None:
    db.write_behind("INSERT INTO no_such_table VALUES (1)", ())
    db.write_behind(*_insert("behind"))  # rolled back with it: an ack would be redelivered
    with db.write() as conn:
        conn.execute(*_insert("host"))
    assert not db.behind() and _count(db) == 1
    assert "dropped 2 write-behind statement(s)" in caplog.text


def test_a_write_behind_statement_rides_on_the_next_transaction_of_any_thread(
    db: SQLiteDB,
) -> None:
    db.write_behind(*_insert("behind"))
    assert db.behind() and _count(db) == 0

    def other() -> None:
        with db.write() as conn:
            conn.execute(*_insert("host"))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert not db.behind() and _count(db) == 2


def test_a_write_behind_statement_outlives_a_rolled_back_host(db: SQLiteDB) -> None:
    db.write_behind(*_insert("behind"))
    with pytest.raises(RuntimeError), db.write() as conn:
        conn.execute(*_insert("host"))
        raise RuntimeError("the host transaction fails")
    assert db.behind() and _count(db) == 0  # rolled back with it, and kept for the next
    db.flush_behind()
    assert not db.behind() and _count(db) == 1


def test_close_commits_what_waits_behind(tmp_path: Path) -> None:
    db = SQLiteDB(tmp_path / "orchestra.db")
    db.write_behind(*_insert("behind"))
    db.close()
    assert _count(SQLiteDB(tmp_path / "orchestra.db")) == 1
