"""records.Record: the msgspec records every command loads (settings, tasks, roles), and
``translate``, which words msgspec's errors as the CLI always has (pydantic's words)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pytest
from msgspec import Meta

from orchestra_cli.broker.base import decode_envelope
from orchestra_cli.engine.roles import RoleDefinition
from orchestra_cli.errors import MalformedMessage
from orchestra_cli.models import Envelope, Task, Usage
from orchestra_cli.records import FieldError, Record, RecordError
from orchestra_cli.settings import Settings
from orchestra_cli.status import Status


class Inner(Record, forbid_unknown_fields=True):
    size: Annotated[int, Meta(ge=1)] = 1

    def __post_init__(self) -> None:
        if self.size == 13:
            raise ValueError("13 is unlucky")


class Outer(Record, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1)]
    ratio: Annotated[float, Meta(gt=0, le=1)] = 0.5
    mode: Literal["a", "b"] = "a"
    where: Path | None = None
    inner: Inner = msgspec.field(default_factory=Inner)
    tags: dict[str, Inner] = msgspec.field(default_factory=dict)
    items: list[Inner] = msgspec.field(default_factory=list)
    flag: bool = False
    count: int | None = None

    def __post_init__(self) -> None:
        if self.name == "reserved":
            raise FieldError("name", "is reserved")


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        ({}, ("name",), "Field required"),
        ({"name": ""}, ("name",), "String should have at least 1 character"),
        ({"name": 5}, ("name",), "Input should be a valid string"),
        ({"name": "x", "ratio": "lots"}, ("ratio",), "unable to parse string as a number"),
        ({"name": "x", "ratio": "inf"}, ("ratio",), "Input should be a finite number"),
        ({"name": "x", "ratio": float("nan")}, ("ratio",), "Input should be a finite number"),
        ({"name": "x", "ratio": 10**400}, ("ratio",), "Input should be a finite number"),
        ({"name": "x", "ratio": 0}, ("ratio",), "Input should be greater than 0"),
        ({"name": "x", "ratio": 1.5}, ("ratio",), "less than or equal to 1"),
        ({"name": "x", "mode": "c"}, ("mode",), "Input should be 'a' or 'b'"),
        ({"name": "x", "inner": {"size": 2.5}}, ("inner", "size"), "fractional part"),
        ({"name": "x", "inner": {"size": "0"}}, ("inner", "size"), "greater than or equal to 1"),
        ({"name": "x", "inner": {"size": 13}}, ("inner",), "13 is unlucky"),
        ({"name": "x", "inner": 3}, ("inner",), "valid dictionary"),
        ({"name": "x", "tags": {"t": {"size": "no"}}}, ("tags", "t", "size"), "integer"),
        ({"name": "x", "tags": {"a": {}, "b": {"size": 0}}}, ("tags", "b", "size"), "equal to 1"),
        ({"name": "x", "tags": {"a": {}, "t": {"size": 13}}}, ("tags", "t"), "13 is unlucky"),
        ({"name": "x", "tags": {5: {}}}, ("tags", "5"), "Input should be a valid string"),
        ({"name": "x", "items": [{}, {"size": 0}]}, ("items", 1, "size"), "equal to 1"),
        ({"name": "x", "items": {}}, ("items",), "Input should be a valid list"),
        ({"name": "x", "flag": "maybe"}, ("flag",), "Input should be a valid boolean"),
        ({"name": "x", "count": "many"}, ("count",), "unable to parse string as an integer"),
        ({"name": "reserved"}, ("name",), "is reserved"),
        ({"name": "x", "where": ""}, ("where",), "is empty"),
        ({"name": "x", "where": 5}, ("where",), "Input is not a valid path"),
        ({"name": "x", "colour": "red"}, ("colour",), "Extra inputs are not permitted"),
        ({"name": "x", "inner": {"size": 1, "colour": "red"}}, ("inner", "colour"), "Extra"),
    ],
)
def test_a_bad_value_is_refused_with_where_and_pydantics_words(
    data: dict[str, Any], loc: tuple[str | int, ...], message: str
) -> None:
    with pytest.raises(RecordError) as exc:
        Outer.model_validate(data)
    assert exc.value.loc == loc
    assert message in exc.value.msg
    assert exc.value.errors() == [{"loc": loc, "msg": exc.value.msg, "type": exc.value.kind}]


def test_text_is_read_as_numbers_and_paths_as_in_lax_mode() -> None:
    o = Outer.model_validate(
        {"name": "x", "ratio": "0.25", "where": "/tmp", "inner": {"size": "3"}, "flag": "true"}
    )
    assert (o.ratio, o.where, o.inner.size, o.flag) == (0.25, Path("/tmp"), 3, True)
    assert (
        Task.model_validate({"title": "t", "input": "i", "status": "queued"}).status
        is Status.QUEUED
    )


def test_unknown_keys_are_dropped_where_the_record_ignores_them() -> None:
    task = Task.model_validate({"title": "t", "input": "i", "from_a_newer_version": 1})
    assert "from_a_newer_version" not in task.model_dump()
    with pytest.raises(RecordError, match="Extra inputs"):
        Envelope.model_validate({"type": "task.run", "task_id": "x", "extra": 1})


def test_each_record_gets_its_own_default_sections() -> None:
    one, two = Settings(), Settings()
    one.redis.stream_maxlen = 50
    assert two.redis.stream_maxlen == Settings().redis.stream_maxlen != 50
    assert Outer(name="a").tags is not Outer(name="b").tags


def test_tasks_are_changed_by_the_stores_unchecked() -> None:
    task = Task(title="t", input="i")
    task.version = 7
    assert task.version == 7


def test_a_task_survives_json_as_it_went_in() -> None:
    task = Task(title="t", input="ünïcode", labels={"a": "b"}, usage=Usage(calls=2, cost_usd=0.5))
    text = task.model_dump_json()
    assert "ünïcode" in text and ", " not in text  # compact UTF-8, as stored before
    again = Task.model_validate_json(text)
    assert again == task and again.root_id == task.id and isinstance(again.usage, Usage)
    assert json.loads(text) == task.model_dump(mode="json")
    assert task.model_dump(mode="json")["status"] == "pending"
    assert Settings(home=Path("/h")).model_dump(mode="json")["home"] == "/h"


def test_a_copy_takes_updates_as_they_are() -> None:
    task = Task(title="t", input="i")
    moved = task.model_copy(update={"status": Status.RUNNING, "version": 1})
    assert (moved.status, moved.version, task.status) == (Status.RUNNING, 1, Status.PENDING)
    assert Task(title="t", input="i").labels is not task.labels  # each its own default


def test_invalid_json_and_bad_envelopes_are_one_line_errors() -> None:
    with pytest.raises(RecordError, match="Invalid JSON"):
        Task.model_validate_json("{not json")
    with pytest.raises(MalformedMessage, match=r"invalid envelope: attempt: Input should be"):
        decode_envelope(b'{"type": "task.run", "task_id": "x", "attempt": "twice"}')
    with pytest.raises(MalformedMessage, match=r"invalid envelope: body: Input should be a valid"):
        decode_envelope(b"[1, 2]")


def test_role_definitions_check_names_and_capabilities() -> None:
    with pytest.raises(RecordError, match="should match pattern"):
        RoleDefinition.model_validate({"name": "Coder", "capabilities": ["code"]})
    with pytest.raises(RecordError, match="List should have at least 1 item"):
        RoleDefinition.model_validate({"name": "coder", "capabilities": []})


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "task.run", "task_id": "x", "time": 1' + b"0" * 400 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"type": "task.run", "task_id": "x", "time": NaN}',
        b'{"type": "task.run", "task_id": "x", "payload": {"n": Infinity}}',
        b'{"type": "task.run", "task_id": "\\ud800"}',
        b"null",
        b'{"type": 1, "task_id": "x"}',
        b'{"type": "task.run", "task_id": "x", "payload": []}',
    ],
    ids=["huge-number", "deep-nesting", "nan", "infinity", "lone-surrogate", "null", "int", "list"],
)
def test_any_bad_body_is_a_malformed_message_never_another_exception(body: bytes) -> None:
    with pytest.raises(MalformedMessage, match="invalid envelope"):
        decode_envelope(body)


def test_numbers_out_of_range_are_errors_about_the_field() -> None:
    with pytest.raises(RecordError) as exc:
        Task.model_validate({"title": "t", "input": "i", "timeout": float("inf")})
    assert exc.value.loc == ("timeout",) and "finite number" in exc.value.msg
    with pytest.raises(RecordError, match="finite number"):
        Task.model_validate({"title": "t", "input": "i", "result": {"n": float("nan")}})
    with pytest.raises(RecordError, match="Invalid JSON"):
        Task.model_validate_json('{"title": "t", "input": "i", "created_at": Infinity}')
    with pytest.raises(RecordError, match="created_at: Input should be a finite number"):
        Task.model_validate_json('{"title": "t", "input": "i", "created_at": 1e400}')


def test_whole_numbers_written_as_decimals_are_integers() -> None:
    assert Outer.model_validate({"name": "x", "inner": {"size": "64.0"}}).inner.size == 64
    with pytest.raises(RecordError, match="integer"):
        Outer.model_validate({"name": "x", "inner": {"size": "64.5"}})


def test_a_pattern_ending_in_dollar_does_not_take_a_final_newline() -> None:
    with pytest.raises(RecordError, match=r"pattern '\^\[a-z\]\[a-z0-9_-\]\*\$'"):
        RoleDefinition.model_validate({"name": "coder\n", "capabilities": ["code"]})


def test_a_subclass_keeps_the_defaults_of_its_parent() -> None:
    class Base(Record):
        x: int = 1

    class Child(Base):
        y: int = 2

    assert (Child().x, Child().y) == (1, 2)


def test_sets_and_bytes_in_free_form_fields_are_written_as_lists_and_base64() -> None:
    task = Task(title="t", input="i", result={"tags": {"b"}, "raw": b"ok"})
    assert json.loads(task.model_dump_json())["result"] == {"tags": ["b"], "raw": "b2s="}


def test_a_record_of_a_type_json_cannot_hold_fails_when_written_not_silently() -> None:
    with pytest.raises(NotImplementedError, match="not JSON serializable: complex"):
        Task(title="t", input="i", result=1j).model_dump_json()


def test_each_record_type_decodes_json_with_one_cached_strict_decoder() -> None:
    from orchestra_cli.records import _decoder

    assert _decoder(Task) is _decoder(Task)
    with pytest.raises(RecordError, match="priority: Input should be a valid integer"):
        Task.model_validate_json('{"title": "t", "input": "i", "priority": "5"}')


def test_settings_read_from_text_as_an_environment_gives_it() -> None:
    s = Settings.model_validate(
        {"agents": {"concurrency": "5"}, "log": {"level": "debug"}, "home": "~/x"}
    )
    assert (s.agents.concurrency, s.log.level) == (5, "DEBUG")
    assert s.home == Path("~/x").expanduser()
    with pytest.raises(RecordError, match="'DEBUG', 'INFO', 'WARNING' or 'ERROR'") as exc:
        Settings.model_validate({"log": {"level": "loud"}})
    assert exc.value.loc == ("log", "level")
