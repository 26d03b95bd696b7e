"""One description of a submission (engine/submission.py): the CLI's options, a batch
line's keys, the API's body and the service's checks all follow it."""

from __future__ import annotations

import math
import types
import typing
from typing import Any

import msgspec
import pytest
import typer

from orchestra_cli.backends import Backends
from orchestra_cli.engine.service import TaskService
from orchestra_cli.engine.submission import SubmitRequest, described
from orchestra_cli.errors import UsageError

CLI_NAME = {"text": "text", "labels": "label"}  # the option's name where it differs
CLICK_TYPE = {str: "str", int: "int", float: "float"}  # the names of typer's click types


def _scalar(hint: Any) -> Any:
    """``int | None`` → int; ``dict[str, str]`` → str (a label's KEY=VALUE)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
    return str if typing.get_origin(hint) is dict else hint


def _submit_params() -> dict[str, Any]:
    from orchestra_cli.cli.app import build_app

    group = typer.main.get_command(build_app("task"))
    submit = group.commands["task"].commands["submit"]  # type: ignore[attr-defined]
    return {p.name: p for p in submit.params if p.name}


def test_the_cli_offers_every_described_field_with_its_type_and_help() -> None:
    params = _submit_params()
    for name, field in described().items():
        param = params[CLI_NAME.get(name, name)]
        assert param.type.name == CLICK_TYPE[_scalar(field.hint)], name
        if name != "text":  # the argument: text, `-` or nothing with --file
            assert param.param_type_name == "option" and param.help == field.help, name


def test_a_batch_line_takes_exactly_the_described_fields() -> None:
    from orchestra_cli.cli.batch import FIELDS

    assert tuple(described()) == FIELDS and "workspace" not in FIELDS
    assert "workspace" in SubmitRequest.__struct_fields__  # the CLI's --workspace only


def test_the_api_body_is_the_description_plus_a_budget() -> None:
    from orchestra_cli.api.schemas import SubmitBody

    schema = SubmitBody.model_json_schema()
    assert list(schema["properties"]) == ["budget", *described()]
    assert schema["required"] == ["text"]
    for name, field in described().items():
        prop = schema["properties"][name]
        assert prop["description"] == field.help
        assert {k: prop[k] for k in field.limits} == field.limits, name
    body = SubmitBody.model_validate({"text": "x", "labels": {"a": "b"}, "budget": {"usd": 1}})
    request = body.to_request()
    assert (request.text, request.labels) == ("x", {"a": "b", "budget_usd": "1.0"})


def _outside_and_inside(limits: dict[str, Any]) -> list[tuple[Any, bool]]:
    """Values just outside (False) and at (True) each numeric limit of a field."""
    cases: list[tuple[Any, bool]] = []
    if "minimum" in limits:
        cases += [(limits["minimum"] - 1, False), (limits["minimum"], True)]
    if "maximum" in limits:
        cases += [(limits["maximum"] + 1, False), (limits["maximum"], True)]
    if "exclusiveMinimum" in limits:
        low = limits["exclusiveMinimum"]
        cases += [(low, False), (math.nextafter(low, math.inf), True)]
    if "maxLength" in limits:
        cases += [("k" * (limits["maxLength"] + 1), False), ("k" * limits["maxLength"], True)]
    if "minLength" in limits:
        cases += [(" " * max(limits["minLength"], 1), False)]  # and `pattern: \S`
    if "maxProperties" in limits:
        many = limits["maxProperties"]
        cases += [({f"k{i}": "v" for i in range(many + 1)}, False)]
        cases += [({f"k{i}": "v" for i in range(many)}, True)]
    return cases


@pytest.mark.parametrize("name", [n for n, f in described().items() if f.limits])
def test_the_service_refuses_exactly_what_the_description_limits(
    backends: Backends, name: str
) -> None:
    service = TaskService(backends, {})
    cases = _outside_and_inside(described()[name].limits)
    assert cases, f"a test case for each of {name}'s limits"
    for value, allowed in cases:
        request = msgspec.structs.replace(SubmitRequest("do it"), **{name: value})
        if allowed:
            service.validate(request)
        else:
            with pytest.raises(UsageError):
                service.validate(request)
