"""What the OpenAPI document says beyond the routes' signatures: every error answer a
route can give, and the shapes of query values the routes check themselves.

The document is checked against the running app by schemathesis (tests/api), so a
response the document does not list, or a request it allows that the API refuses,
fails a test.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from orchestra_cli.status import Status


class ErrorBody(BaseModel):
    """Every error: the two halves of the CLI's one-line error."""

    error: str
    hint: str | None


_WHY = {
    400: "the body is not JSON",
    401: "missing or wrong API token",
    404: "no task or agent by that id or name",
    409: "a conflict with the task's state: it changed meanwhile (re-read it and retry), "
    "or the request does not fit its status (retrying a task that succeeded)",
    413: "the body is over the size limit (refused from Content-Length before it is read)",
    422: "bad input: the error names the field and what is allowed",
    503: "the state store or the broker is unreachable",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each code with its meaning and the error body."""
    return {code: {"model": ErrorBody, "description": _WHY[code]} for code in codes}


GUARDED = errors(401, 413, 422, 503)  # every route behind the token (any may get a body)
BY_ID = errors(404)
CHANGES = errors(404, 409)
CHANGES_WITH_BODY = errors(400, 404, 409)  # a route that reads a JSON body


def _names(values: list[str]) -> str:
    """A comma-separated list of ``values`` (blanks between items allowed)."""
    one = "(" + "|".join(values) + ")"
    return rf"^\s*{one}?\s*(,\s*{one}?\s*)*$"


STATUS_LIST = {"items": {"type": "string", "pattern": _names([s.value for s in Status])}}


def check_list(names: list[str]) -> dict[str, Any]:
    return {"items": {"type": "string", "pattern": _names(names)}}


SINCE = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*[0-9]{1,9}[smhd]\s*$"},
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "date"},
    ]
}


def with_capabilities(doc: dict[str, Any], capabilities: list[str]) -> dict[str, Any]:
    """The document with the capabilities a submit may name (the roles'; a live agent's
    own are accepted too) as the enum of ``SubmitBody.capability``."""
    field = doc.get("components", {}).get("schemas", {}).get("SubmitBody", {})
    choices = field.get("properties", {}).get("capability", {}).get("anyOf", [])
    for choice in choices:
        if choice.get("type") == "string":
            choice["enum"] = capabilities
    return doc
