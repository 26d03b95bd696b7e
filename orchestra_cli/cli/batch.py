"""`orchestra task submit --batch FILE`: many tasks from JSON lines or plain lines.

Each non-empty line is one task: a JSON object (``text`` required; ``title``,
``capability``, ``priority``, ``timeout``, ``max_attempts``, ``labels``,
``idempotency_key`` optional: the described fields of ``SubmitRequest``, checked
against its types) or, if it does not start with ``{``, the task text itself.
The command's own options are defaults for every line. Every line is read and
checked before the first task is stored, so a bad line changes nothing. Tasks
are then stored a chunk at a time (``TaskService.submit_many``: one round trip
to the state store per chunk), their messages confirmed in windows (one wait at
the end, not one per task); each id is printed once its chunk is stored.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import msgspec

from orchestra_cli.cli.context import AppContext
from orchestra_cli.engine.bulk import CHUNK
from orchestra_cli.engine.submission import SubmitRequest, described
from orchestra_cli.errors import (
    BrokerUnavailable,
    OrchestraError,
    PartlyStored,
    StateError,
    Undelivered,
    UsageError,
)
from orchestra_cli.models import Task
from orchestra_cli.records import RecordError, translate
from orchestra_cli.util import text_lines

FIELDS = tuple(described())  # a line's keys: the described fields of a submission
PROGRESS_SECONDS = 2.0


def read_batch(source: str, defaults: SubmitRequest) -> list[tuple[str, SubmitRequest]]:
    """Every task of the batch (``-`` is stdin) with its ``file:line``; UsageError names
    the bad line."""
    where = "stdin" if source == "-" else source
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc.strerror}", "check the path") from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{where} is not UTF-8 text (bad byte at offset {exc.start})", "convert it to UTF-8"
        ) from None
    requests = []
    for number, line in enumerate(text_lines(text), 1):
        if line.strip():
            requests.append((f"{where}:{number}", _request(line, defaults, f"{where}:{number}")))
    if not requests:
        raise UsageError(f"{where} holds no tasks", "one task per line: text or a JSON object")
    return requests


def _request(line: str, defaults: SubmitRequest, where: str) -> SubmitRequest:
    if not line.lstrip().startswith("{"):
        return msgspec.structs.replace(defaults, text=line.strip())
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: invalid JSON ({exc.msg})", "one JSON object per line") from None
    except RecursionError:
        raise UsageError(
            f"{where}: JSON nested too deeply", "one flat JSON object per line"
        ) from None
    except ValueError as exc:  # an integer of more than 4,300 digits (sys.int_info)
        raise UsageError(f"{where}: invalid JSON ({exc})", "one JSON object per line") from None
    unknown = sorted(set(data) - set(FIELDS)) if isinstance(data, dict) else []
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r}", f"use: {', '.join(FIELDS)}")
    try:  # strict: a JSON line says what it means ("5" is no priority)
        given = msgspec.convert(data, SubmitRequest, strict=True)
    except msgspec.ValidationError as exc:
        raise _line_error(translate(exc, SubmitRequest, data), where) from None
    fields = {name: getattr(given, name) for name in data}
    if "labels" in data:
        fields["labels"] = {**defaults.labels, **given.labels}
    return msgspec.structs.replace(defaults, **fields)


def _line_error(err: RecordError, where: str) -> UsageError:
    if err.kind == "missing":
        return UsageError(f"{where}: no text", '{"text": "what to do", …}')
    name = str(err.loc[0]) if err.loc else "text"
    return UsageError(f"{where}: {name} has the wrong type", f"e.g. {_example(name)}")


def _example(name: str) -> str:
    return {
        "priority": '"priority": 7',
        "timeout": '"timeout": 300',
        "max_attempts": '"max_attempts": 3',
        "labels": '"labels": {"team": "core"}',
    }.get(name, f'"{name}": "…"')


def _print(app: AppContext, task: Task, created: bool, *, delivered: bool = True) -> None:
    from orchestra_cli.cli.render import task_json

    if not app.json:
        print(task.id, flush=False)
        return
    line: dict[str, object] = {"created": created, "task": task_json(task)}
    if not delivered:  # the shape of `task submit --json`'s line for it
        line = {"created": True, "delivered": False, "task": line["task"]}
    print(json.dumps(line), flush=False)


def submit_batch(app: AppContext, batch: list[tuple[str, SubmitRequest]]) -> int:
    """Validate all, store them a chunk at a time (ids on stdout as they go), then wait
    for the confirms."""
    service = app.service()
    for where, req in batch:
        try:
            service.validate(req)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc.message}", exc.hint) from None
    requests = [req for _, req in batch]
    started = last_report = time.monotonic()
    existing = done = 0
    for start in range(0, len(requests), CHUNK):
        chunk = requests[start : start + CHUNK]
        try:
            results = service.submit_many(chunk)
        except Undelivered as exc:  # stored: their ids go out with the others
            for task, created in exc.stored:
                _print(app, task, created, delivered=task.id not in exc.unsent)
            sys.stdout.flush()
            stored = done + len(exc.stored)
            raise BrokerUnavailable(
                f"{stored:,} of {len(requests):,} tasks stored (ids on stdout); "
                f"{len(exc.unsent):,} of their messages were not sent and the "
                f"{len(requests) - stored:,} after them were not submitted: {exc.message}",
                "submit only the lines after the last id again, once the broker is back "
                "(the stored tasks run: the recovery sweep sends their messages)",
            ) from exc
        except PartlyStored as exc:  # the ones known to be stored: their ids go out
            for task, created in exc.stored:
                _print(app, task, created)
            sys.stdout.flush()
            error = StateError(
                f"{done + len(exc.stored):,} of {len(requests):,} tasks stored (ids on stdout); "
                f"the state store failed on the next {len(chunk) - len(exc.stored):,} (some may "
                f"be stored: see `orchestra task list`) and the "
                f"{len(requests) - done - len(chunk):,} after them were not submitted: "
                f"{exc.cause.message}",
                "submit the lines after the last id again once it is back (idempotency keys "
                "make that safe for lines that might be stored)",
            )
            error.exit_status = exc.exit_status
            raise error from exc
        for task, created in results:
            existing += not created
            _print(app, task, created)
        done += len(chunk)
        if time.monotonic() - last_report > PROGRESS_SECONDS:
            last_report = time.monotonic()
            app.info(f"… {done:,} of {len(requests):,} submitted")
    sys.stdout.flush()
    try:
        service.flush()
    except OrchestraError as exc:
        raise type(exc)(
            f"{len(requests):,} tasks stored, but the broker did not confirm every message: "
            f"{exc.message}",
            "`orchestra recover` sends the messages of queued tasks again",
        ) from exc
    took = time.monotonic() - started
    note = f" ({existing:,} existing for their idempotency keys)" if existing else ""
    noun = "task" if len(requests) == 1 else "tasks"
    app.info(f"submitted {len(requests):,} {noun} in {took:.1f}s{note}")
    return 0
