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
