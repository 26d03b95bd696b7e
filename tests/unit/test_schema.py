"""schema.Model: the records every command loads (settings, tasks, roles) without pydantic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest

from orchestra_cli.broker.base import decode_envelope
from orchestra_cli.engine.roles import RoleDefinition
from orchestra_cli.errors import MalformedMessage
from orchestra_cli.models import Envelope, Task, Usage
from orchestra_cli.schema import Field, Model, SchemaError
from orchestra_cli.settings import LLMSettings, Settings
from orchestra_cli.status import Status


class Inner(Model):
    size: int = Field(default=1, ge=1)

    def model_post_init(self, context: Any, /) -> None:
        if self.size == 13:
            raise ValueError("13 is unlucky")


class Outer(Model, extra="forbid", validate_assignment=True):
    name: str = Field(min_length=1)
    ratio: float = Field(default=0.5, gt=0, le=1)
    mode: Literal["a", "b"] = "a"
    where: Path | None = None
    inner: Inner = Inner()
    tags: dict[str, Inner] = Field(default_factory=dict)


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        ({}, ("name",), "Field required"),
        ({"name": ""}, ("name",), "String should have at least 1 character"),
        ({"name": 5}, ("name",), "Input should be a valid string"),
        ({"name": "x", "ratio": "lots"}, ("ratio",), "unable to parse string as a number"),
        ({"name": "x", "ratio": "inf"}, ("ratio",), "Input should be a finite number"),
        ({"name": "x", "ratio": 0}, ("ratio",), "Input should be greater than 0"),
        ({"name": "x", "ratio": 1.5}, ("ratio",), "less than or equal to 1"),
        ({"name": "x", "mode": "c"}, ("mode",), "Input should be 'a' or 'b'"),
        ({"name": "x", "inner": {"size": 2.5}}, ("inner", "size"), "fractional part"),
        ({"name": "x", "inner": {"size": "0"}}, ("inner", "size"), "greater than or equal to 1"),
        ({"name": "x", "inner": {"size": 13}}, ("inner",), "13 is unlucky"),
        ({"name": "x", "inner": 3}, ("inner",), "valid dictionary"),
        ({"name": "x", "tags": {"t": {"size": "no"}}}, ("tags", "t", "size"), "integer"),
        ({"name": "x", "colour": "red"}, ("colour",), "Extra inputs are not permitted"),
    ],
)
def test_a_bad_value_is_refused_with_where_and_pydantics_words(
    data: dict[str, Any], loc: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SchemaError) as exc:
        Outer.model_validate(data)
    assert exc.value.loc == loc
    assert message in exc.value.msg


def test_text_is_read_as_numbers_and_paths_as_in_lax_mode() -> None:
    o = Outer.model_validate(
        {"name": "x", "ratio": "0.25", "where": "/tmp", "inner": {"size": "3"}}
    )
    assert (o.ratio, o.where, o.inner.size) == (0.25, Path("/tmp"), 3)
    assert (
        Task.model_validate({"title": "t", "input": "i", "status": "queued"}).status
        is Status.QUEUED
    )


def test_unknown_keys_are_dropped_where_the_record_ignores_them() -> None:
    task = Task.model_validate({"title": "t", "input": "i", "from_a_newer_version": 1})
    assert "from_a_newer_version" not in task.model_dump()
    with pytest.raises(SchemaError, match="Extra inputs"):
        Envelope.model_validate({"type": "task.run", "task_id": "x", "extra": 1})


def test_each_record_gets_its_own_default_sections() -> None:
    one, two = Settings(), Settings()
    one.redis.stream_maxlen = 50
    assert two.redis.stream_maxlen == Settings().redis.stream_maxlen != 50
    assert Outer(name="a").tags is not Outer(name="b").tags


def test_assignment_is_checked_where_the_record_asks_for_it() -> None:
    settings = Settings()
    with pytest.raises(SchemaError, match="greater than or equal to 1"):
        settings.redis.stream_maxlen = 0
    settings.llm = {"provider": "offline"}  # type: ignore[assignment]
    assert isinstance(settings.llm, LLMSettings) and settings.llm.provider == "offline"
    task = Task(title="t", input="i")
    task.version = 7  # tasks are changed by the stores, unchecked
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


def test_a_copy_takes_updates_as_they_are_and_deep_copies_are_independent() -> None:
    task = Task(title="t", input="i")
    moved = task.model_copy(update={"status": Status.RUNNING, "version": 1})
    assert (moved.status, moved.version, task.status) == (Status.RUNNING, 1, Status.PENDING)
    deep = task.model_copy(deep=True)
    deep.labels["x"] = "y"
    deep.usage.calls = 9
    assert task.labels == {} and task.usage.calls == 0


def test_invalid_json_and_bad_envelopes_are_one_line_errors() -> None:
    with pytest.raises(SchemaError, match="Invalid JSON"):
        Task.model_validate_json("{not json")
    with pytest.raises(MalformedMessage, match=r"invalid envelope: attempt: Input should be"):
        decode_envelope(b'{"type": "task.run", "task_id": "x", "attempt": "twice"}')
    with pytest.raises(MalformedMessage, match=r"invalid envelope: body: Input should be a valid"):
        decode_envelope(b"[1, 2]")


def test_role_definitions_check_names_and_capabilities() -> None:
    with pytest.raises(SchemaError, match="should match pattern"):
        RoleDefinition.model_validate({"name": "Coder", "capabilities": ["code"]})
    with pytest.raises(SchemaError, match="List should have at least 1 item"):
        RoleDefinition.model_validate({"name": "coder", "capabilities": []})


def test_an_unsupported_annotation_fails_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="unsupported annotation"):

        class Odd(Model):
            when: complex = 1j


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
    with pytest.raises(SchemaError) as exc:
        Outer.model_validate({"name": "x", "ratio": 10**400})
    assert exc.value.loc == ("ratio",) and "finite number" in exc.value.msg
    with pytest.raises(SchemaError, match="finite number"):
        Task(title="t", input="i", timeout=float("inf"))
    with pytest.raises(SchemaError, match="Infinity is not a number JSON allows"):
        Task.model_validate_json('{"title": "t", "input": "i", "created_at": Infinity}')


def test_whole_numbers_written_as_decimals_are_integers() -> None:
    assert Outer.model_validate({"name": "x", "inner": {"size": "64.0"}}).inner.size == 64
    with pytest.raises(SchemaError, match="integer"):
        Outer.model_validate({"name": "x", "inner": {"size": "64.5"}})


def test_assignment_reruns_the_records_own_check_and_refuses_unknown_names() -> None:
    settings = Settings()
    with pytest.raises(SchemaError, match="twice heartbeat_seconds"):
        settings.agents.ttl_seconds = 1
    assert settings.agents.ttl_seconds == 10  # left as it was
    with pytest.raises(AttributeError, match="no field 'bogus'"):
        settings.bogus = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no field 'stauts'"):
        Task(title="t", input="i").stauts = "queued"  # type: ignore[attr-defined]


def test_a_pattern_ending_in_dollar_does_not_take_a_final_newline() -> None:
    with pytest.raises(SchemaError, match="pattern"):
        RoleDefinition(name="coder\n", capabilities=["code"])


def test_a_subclass_keeps_the_defaults_of_its_parent() -> None:
    class Base(Model):
        x: int = 1

    class Child(Base):
        y: int = 2

    assert (Child().x, Child().y) == (1, 2)


def test_sets_and_bytes_in_free_form_fields_are_written_as_lists_and_text() -> None:
    task = Task(title="t", input="i", result={"tags": {"b"}, "raw": b"ok"})
    assert json.loads(task.model_dump_json())["result"] == {"tags": ["b"], "raw": "ok"}
