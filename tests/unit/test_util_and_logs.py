import json
import multiprocessing
import time
from pathlib import Path

import pytest

from orchestra_cli.logs import JsonlWriter, redact, register_secret
from orchestra_cli.util import new_id, parse_since


def test_ids_are_time_ordered_uuid7() -> None:
    ids = []
    for _ in range(50):
        ids.append(new_id())
        time.sleep(0.001)
    assert ids == sorted(ids)
    assert all(i[14] == "7" for i in ids)
    assert len(set(ids)) == 50


def _ids_in_child(queue: "multiprocessing.Queue[list[str]]") -> None:
    queue.put([new_id() for _ in range(1000)])


def test_forked_processes_draw_different_ids_in_the_same_millisecond() -> None:
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [ctx.Process(target=_ids_in_child, args=(queue,)) for _ in range(3)]
    for p in procs:
        p.start()
    ids = [i for _ in procs for i in queue.get(timeout=30)] + [new_id() for _ in range(1000)]
    for p in procs:
        p.join()
    assert len(set(ids)) == 4000  # the generator is seeded again in every child


def test_since_accepts_durations_and_iso_dates() -> None:
    assert abs(parse_since("2h") - (time.time() - 7200)) < 2
    assert parse_since("2026-01-01") > 0


def _write_many(path: str, worker: int) -> None:
    writer = JsonlWriter(Path(path))
    for i in range(200):
        writer.write({"worker": worker, "i": i, "pad": "x" * 500})


def test_jsonl_writer_lines_never_interleave_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 800
    assert all(json.loads(line)["pad"] == "x" * 500 for line in lines)


def test_jsonl_writer_lines_never_interleave_across_threads(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "metrics.jsonl"
    writer = JsonlWriter(path)  # one open descriptor shared by every thread
    threads = [
        threading.Thread(
            target=lambda w=w: [writer.write({"w": w, "pad": "y" * 3000}) for _ in range(300)]
        )
        for w in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 1800
    assert all(json.loads(line)["pad"] == "y" * 3000 for line in lines)


def test_jsonl_writer_follows_a_rotated_or_deleted_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(JsonlWriter, "REOPEN_CHECK_SECONDS", 0.0)  # check on every write
    path = tmp_path / "metrics.jsonl"
    writer = JsonlWriter(path)
    writer.write({"n": 1})
    path.rename(tmp_path / "metrics.jsonl.1")  # logrotate's default: rename, new file
    writer.write({"n": 2})
    path.unlink()
    writer.write({"n": 3})
    writer.close()
    writer.write({"n": 4})  # a closed writer opens the file again

    def numbers(p: Path) -> list[int]:
        return [json.loads(line)["n"] for line in p.read_text().splitlines()]

    assert numbers(tmp_path / "metrics.jsonl.1") == [1]
    assert numbers(path) == [3, 4]
    writer.close()


def test_redaction_masks_known_secrets_keys_and_url_passwords() -> None:
    register_secret("super-secret-value-123")
    text = redact(
        "key sk-ant-api03-abcdefghijklmnop url amqp://guest:pw@host/ v super-secret-value-123"
    )
    assert "abcdefghijklmnop" not in text and "pw@" not in text
    assert "super-secret-value-123" not in text
    assert "amqp://guest:***@host/" in text


def test_vault_style_tokens_are_masked_whatever_their_case_or_script() -> None:
    token = "hvs." + "AbCdEfGhIjKlMnOpQrStUvWx"
    assert redact(f"token {token} end") == "token hvs.*** end"
    folded = "s." + "\u212a" * 20  # KELVIN SIGN: a letter under case-insensitive matching
    assert redact(f"x {folded}") == "x s.***"
    assert redact("a plain line with no.dots.worth.masking") == (
        "a plain line with no.dots.worth.masking"
    )


def test_log_lines_on_stderr_and_in_files_are_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from orchestra_cli.logs import setup_logging

    setup_logging(tmp_path, "unit", stderr_level="INFO")
    try:
        logging.getLogger("x").warning("using key sk-ant-api03-SECRETSECRETSECRET now")
    finally:
        setup_logging(None, "unit")
    err = capsys.readouterr().err
    assert "SECRETSECRET" not in err and "sk-ant-***" in err
    assert "SECRETSECRET" not in (tmp_path / "unit.log").read_text()


@pytest.mark.parametrize(
    "value",
    [
        "a",
        'é\n"x\u2028',
        "",
        0,
        -5,
        10**30,
        1.5,
        1764100000.123456,
        1e-7,
        True,
        False,
        None,
        float("nan"),
        float("inf"),
        [1, "a", None],
        {"k": {"n": 1.25}},
    ],
)
def test_dumps_fast_paths_write_exactly_what_the_json_module_does(value: object) -> None:
    import json

    from orchestra_cli.util import dumps
    from orchestra_cli.util import json_default as _default

    assert dumps(value) == json.dumps(value, default=_default, ensure_ascii=False)


def test_long_running_processes_checkpoint_the_wal_off_the_writers_path(tmp_path: Path) -> None:
    from orchestra_cli.sqlitedb import SQLiteDB

    def fill(db: SQLiteDB) -> None:
        for i in range(200):
            with db.write() as conn:
                conn.execute(
                    "INSERT INTO control (time, body) VALUES (?, ?)", (float(i), "x" * 5000)
                )

    alone = SQLiteDB(tmp_path / "alone.db")
    fill(alone)  # ~1 MB, far below the writers' own checkpoint threshold: all in the WAL
    assert (tmp_path / "alone.db").stat().st_size < 200_000
    alone.close()

    kept = SQLiteDB(tmp_path / "kept.db")
    kept.start_checkpointer(interval=0.05)
    fill(kept)
    deadline = time.monotonic() + 10
    while (tmp_path / "kept.db").stat().st_size < 1_000_000:  # copied back by the thread
        assert time.monotonic() < deadline, "the background checkpoint never ran"
        time.sleep(0.05)
    kept.close()
    assert kept._checkpointer is not None
    kept._checkpointer.join(timeout=5)
    assert not kept._checkpointer.is_alive()  # stopped with the database


def test_journal_lines_read_back_as_the_json_modules_lines_would(tmp_path: Path) -> None:
    # msgspec writes the lines; what it cannot encode (a 100-bit int, an int key) goes
    # through dumps. Either way a reader gets what json.dumps would have given it.
    import datetime as dt

    from orchestra_cli.logs import json_line
    from orchestra_cli.models import Task, Usage
    from orchestra_cli.util import dumps

    records: list[dict[str, object]] = [
        {"kind": "task", "task_id": "t1", "duration_s": 0.0012, "cost_usd": 0.0, "ok": True},
        {"text": 'naïve — ünïcode \u2028 "quoted" \\ \n\t', "none": None, "list": [1, 2.5]},
        {"usage": Usage(input_tokens=3), "task": Task(title="t", input="x")},
        {"path": tmp_path},
        {"big": 2**100, "nested": {"k": [{"a": 1}]}},
        {1: "an int key"},  # type: ignore[dict-item]
    ]
    for record in records:
        line = json_line(record)
        assert "\n" not in line
        assert json.loads(line) == json.loads(dumps(record)), record
    # datetimes: RFC 3339 with a Z, which fromisoformat reads as the same instant; sets:
    # their items (journal lines hold neither today)
    when = dt.datetime(2026, 12, 3, 1, 2, 3, 456, tzinfo=dt.UTC)
    odd = json.loads(json_line({"when": when, "set": {"b", "a", "c"}}))
    assert dt.datetime.fromisoformat(odd["when"]) == when
    assert sorted(odd["set"]) == ["a", "b", "c"]
    path = tmp_path / "j.jsonl"
    writer = JsonlWriter(path)
    writer.write_many(records[:2])
    writer.write(records[2])
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n")[:-1]]
    assert [x.pop("time") is not None for x in lines] == [True] * 3
    assert lines == [json.loads(dumps(r)) for r in records[:3]]


def test_journal_and_batch_lines_split_at_newlines_only(tmp_path: Path) -> None:
    # str.splitlines also splits at U+2028, U+2029, U+0085, \v, \f and \x1c-\x1e, which a
    # JSON string keeps raw: such a record was read back as two bad pieces and dropped
    from orchestra_cli.cli.batch import read_batch
    from orchestra_cli.engine.service import SubmitRequest
    from orchestra_cli.util import text_lines

    odd = "one\u2028two\u2029three\x85four\x0bfive\x0csix\x1cseven\x1deight\x1enine"
    assert text_lines(f"a\r\n{odd}\n\nlast") == ["a", odd, "", "last"]
    assert text_lines("") == [] and text_lines("x\n") == ["x"]
    writer = JsonlWriter(tmp_path / "memory.jsonl")
    writer.write_many([{"summary": odd}, {"summary": "plain"}])
    assert [r["summary"] for r in writer.read()] == [odd, "plain"]
    assert [r["summary"] for r in writer.read(limit=2)] == [odd, "plain"]
    assert [r["summary"] for r in writer.tail(2)] == [odd, "plain"]
    batch = tmp_path / "tasks.jsonl"
    batch.write_text(json.dumps({"text": odd}, ensure_ascii=False) + "\r\nplain line\r\n")
    got = read_batch(str(batch), SubmitRequest(text=""))
    assert [req.text for _, req in got] == [odd, "plain line"]


def test_a_url_password_is_masked_without_running_into_the_next_field(tmp_path: Path) -> None:
    """Found by review: in compact JSON ("a","b" with no space) the URL-password pattern
    ran from one field's URL to the next field's "@" and broke the line (or ate a field)."""
    writer = JsonlWriter(tmp_path / "memory.jsonl")
    records = [
        {"title": "Deploy to http://10.0.0.5", "summary": "admin@corp.example was notified"},
        {"url": "http://localhost:11434", "by": "ops@example.com"},
        {"url": "amqp://guest:s3cret@rabbit:5672/"},
    ]
    writer.write_many(records)
    back = writer.read()
    assert [{k: v for k, v in r.items() if k != "time"} for r in back[:2]] == records[:2]
    assert back[2]["url"] == "amqp://guest:***@rabbit:5672/"
