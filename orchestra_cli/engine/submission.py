"""A task submission, described once: the service's request, the batch line format,
the API's body and the CLI's help all come from ``SubmitRequest``'s fields.

Each described field carries its help text (``Meta.description``: the CLI
option's help, the API document's description) and its limits
(``Meta.extra_json_schema``: written into the API document). The limits are
not enforced by decoding: ``TaskService.validate`` checks them, in the same
words for every front end, and a test holds its checks to these numbers
(tests/unit/test_submission.py).
"""

from __future__ import annotations

import functools
import typing
from typing import Annotated, Any, NamedTuple

import msgspec
from msgspec import Meta

from orchestra_cli.models import MAX_PRIORITY
from orchestra_cli.records import Record
from orchestra_cli.util import NOT_BLANK

# every task record carries these into each `task list --json`, API page and event
MAX_TITLE_CHARS = 500
MAX_LABELS = 50
MAX_LABEL_KEY_CHARS = 100
MAX_LABEL_VALUE_CHARS = 1000
MAX_KEY_CHARS = 200  # an idempotency key


class SubmitRequest(Record, forbid_unknown_fields=True):
    """A task to submit: ``TaskService.submit``'s input (None: the settings' default)."""

    text: Annotated[
        str,
        Meta(description="What to do.", extra_json_schema={"minLength": 1, "pattern": NOT_BLANK}),
    ]
    title: Annotated[
        str | None,
        Meta(
            description="Short title (default: first line).",
            extra_json_schema={"maxLength": MAX_TITLE_CHARS},
        ),
    ] = None
    capability: Annotated[
        str | None,
        Meta(description="Route to this capability; skips planning."),
    ] = None
    priority: Annotated[
        int | None,
        Meta(
            description="0 (low) to 9.", extra_json_schema={"minimum": 0, "maximum": MAX_PRIORITY}
        ),
    ] = None
    timeout: Annotated[
        float | None,
        Meta(description="Seconds per attempt.", extra_json_schema={"exclusiveMinimum": 0}),
    ] = None
    max_attempts: Annotated[
        int | None,
        Meta(description="Attempts before failing.", extra_json_schema={"minimum": 1}),
    ] = None
    labels: Annotated[
        dict[str, str],
        Meta(
            description="Labels, KEY=VALUE each; repeatable.",
            extra_json_schema={"maxProperties": MAX_LABELS},
        ),
    ] = msgspec.field(default_factory=dict)
    idempotency_key: Annotated[
        str | None,
        Meta(
            description="Submitting the same key again returns the same task.",
            extra_json_schema={"minLength": 1, "maxLength": MAX_KEY_CHARS, "pattern": NOT_BLANK},
        ),
    ] = None
    # the tree's starting files (engine/workspace.py): `task submit --workspace DIR` only
    workspace: dict[str, bytes] | None = None


class Described(NamedTuple):
    """One field of a submission as a front end offers it."""

    hint: Any  # the type, without its metadata
    default: Any  # msgspec.NODEFAULT when required
    help: str
    limits: dict[str, Any]  # JSON Schema keywords


@functools.cache
def described() -> dict[str, Described]:
    """The fields a person (CLI options, a batch line, the API's body) gives, in order."""
    hints = typing.get_type_hints(SubmitRequest, include_extras=True)
    out: dict[str, Described] = {}
    for info in msgspec.structs.fields(SubmitRequest):
        hint = hints[info.name]
        if typing.get_origin(hint) is not Annotated:
            continue  # not described: not part of the wire format
        meta = next(m for m in hint.__metadata__ if isinstance(m, Meta))
        default = info.default
        if info.default_factory is not msgspec.NODEFAULT:
            default = info.default_factory()
        limits = dict(meta.extra_json_schema or {})
        out[info.name] = Described(hint.__origin__, default, meta.description or "", limits)
    return out
