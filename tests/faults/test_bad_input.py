"""Bad input found by attacking the CLI and the API: each is one line and the documented
exit code (or a 422 naming the field and the range), never an internal error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestra_cli.backends import Backends
from tests.conftest import CliRunner
from tests.support import Result

DEEP = 100_000


def one_error_line(result: Result) -> str:
    """The error line of a failed command, checking it is the only thing on stderr."""
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestra: error: "), str(result)
    assert " — " in lines[0], f"no hint: {result}"
    return lines[0]


def _batch(tmp_path: Path, line: str) -> str:
    path = tmp_path / "batch.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"text": ' + "[" * DEEP + "]" * DEEP + "}", "nested too deeply"),
        ('{"text": "x", "priority": ' + "9" * 5000 + "}", "invalid JSON"),
        ('{"text": "x", "title": "' + "t" * 3_000_000 + '"}', "over the 500 limit"),
        ('{"text": "x", "labels": {"k": "' + "v" * 2000 + '"}}', "label 'k' is too long"),
    ],
    ids=["nested", "5000-digit-priority", "3MB-title", "long-label"],
)
def test_a_bad_batch_line_is_one_error_line_and_exit_2(
    cli: CliRunner, tmp_path: Path, line: str, says: str
) -> None:
    result = cli("task", "submit", "--batch", _batch(tmp_path, line), expect=2)
    assert says in one_error_line(result) and "batch.jsonl:1" in result.err
    assert result.out == ""  # nothing was submitted


def test_a_title_over_the_limit_is_refused_by_task_submit(cli: CliRunner) -> None:
    result = cli("task", "submit", "--title", "t" * 501, "do it", expect=2)
    assert "the title is 501 characters, over the 500 limit" in one_error_line(result)


def test_a_config_file_nested_too_deep_is_a_config_error(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("llm: " + "[" * DEEP + "]" * DEEP + "\n", encoding="utf-8")
    result = cli("--config", str(path), "config", "show", expect=2)
    line = one_error_line(result)  # libyaml's parser says it; the pure-Python one recurses
    assert "nested too deeply" in line or "maximum nesting depth" in line, line


def test_a_config_path_that_is_a_directory_says_so(cli: CliRunner, tmp_path: Path) -> None:
    result = cli("--config", str(tmp_path), "config", "show", expect=2)
    assert f"config file {tmp_path} is a directory" in one_error_line(result)
    Path("orchestra.yaml").mkdir()  # the cwd's: found by name, so not silently skipped
    result = cli("config", "show", expect=2)
    assert "orchestra.yaml is a directory" in one_error_line(result)
    assert "remove or rename" in result.err


def test_a_full_disk_is_one_line_and_exit_3_and_work_resumes_after(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.sqlitedb import SQLiteDB

    cli("task", "list")  # the database exists: its schema written while there was room
    original = SQLiteDB._connect  # every connection, the readers' and the writer's
    room = {"pages": 4}

    def cramped(self: SQLiteDB) -> object:
        conn = original(self)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages + room['pages']}")  # SQLITE_FULL past it
        return conn

    monkeypatch.setattr(SQLiteDB, "_connect", cramped)
    full = cli("task", "submit", "x" * 200_000, expect=3)
    assert "the disk is full" in one_error_line(full) and "free space" in full.err
    room["pages"] = 10_000  # space freed
    assert cli("task", "submit", "-q", "x" * 200_000).out.strip()


@pytest.fixture
def api(backends: Backends) -> Iterator[TestClient]:
    from orchestra_cli.api.app import create_app
    from orchestra_cli.engine.roles import load_roles

    with TestClient(create_app(backends, load_roles(), token=None)) as client:
        yield client


@pytest.mark.parametrize("after", [10**30, 2**63, 2**63 - 1, -1])
def test_an_events_cursor_out_of_range_is_422_with_the_range(api: TestClient, after: int) -> None:
    r = api.get(f"/v1/events?after={after}")
    assert r.status_code == 422, r.text
    assert "query.after" in r.json()["error"] and ("0" in r.json()["error"])
    assert api.get(f"/v1/events?after={2**63 - 2}").json()["events"] == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"text": "x", "budget": {"usd": 1e400}}',
        b'{"text": "x", "budget": {"usd": NaN}}',
        b'{"text": "x", "labels": {"budget_usd": "inf"}}',
        b'{"text": "x", "labels": {"budget_tokens": "-5"}}',
    ],
    ids=["1e400", "NaN", "inf-label", "negative-tokens-label"],
)
def test_the_api_refuses_a_budget_that_is_not_a_positive_finite_amount(
    api: TestClient, body: bytes
) -> None:
    r = api.post("/v1/tasks", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert api.get("/v1/tasks").json() == []  # nothing stored


def test_the_api_refuses_a_title_over_the_limit(api: TestClient) -> None:
    r = api.post("/v1/tasks", json={"text": "x", "title": "t" * 501})
    assert r.status_code == 422 and "over the 500 limit" in r.json()["error"]
    r = api.post("/v1/tasks", json={"text": "x", "labels": {f"k{i}": "v" for i in range(51)}})
    assert r.status_code == 422 and "51 labels" in r.json()["error"]


def test_api_serve_refuses_a_short_token_with_how_to_make_one(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRA_API_TOKEN", "x")
    result = cli("api", "serve", "--port", "0", expect=2)
    line = one_error_line(result)
    assert "ORCHESTRA_API_TOKEN has 1 character," in line and "at least 32" in line
    assert "openssl rand -hex 24" in line


def test_the_cli_budget_label_is_checked_as_the_api_one_is(cli: CliRunner) -> None:
    result = cli("task", "submit", "--label", "budget_usd=inf", "x", expect=2)
    assert "not a positive, finite amount" in one_error_line(result)
    assert json.loads(cli("--json", "task", "list").out) == []
