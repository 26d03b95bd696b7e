"""Dead letters with what became of their tasks: finding one, re-running its task
(`dlq retry`), removing it (`dlq rm`), and resubmitting the tasks a store lost.

A Redis without persistence that restarts forgets every task while their
messages wait in RabbitMQ; each then ends dead-lettered as 'task does not
exist'. A root task's messages carry its submission (``broker.base.task_spec``),
so `orchestra dlq resubmit` can store such a task again, under its own id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestra_cli import ids
from orchestra_cli.backends import Backends
from orchestra_cli.errors import ConflictError, NotFoundError, UsageError
from orchestra_cli.status import Status

if TYPE_CHECKING:
    from orchestra_cli.engine.service import TaskService
    from orchestra_cli.models import Task

MISSING = "missing"  # task_status of a letter whose task the state store does not have
# The newest letters kept to find one (`dlq show|retry|rm`) or the lost tasks among them
# (`dlq resubmit`, `recover`): the whole queue is read (RabbitMQ: one by one, put back),
# this many of its newest held in memory.
SCAN = 100_000
LIST_HINT = "`orchestra dlq list` shows the letters"


def letters(backends: Backends, limit: int) -> list[dict[str, Any]]:
    """The broker's letters (newest first), each with ``task_status``: its task's status
    now, ``missing`` when the store does not have it, None when it names no task; and
    ``attempts`` / ``max_attempts``: the tries its task has had, from the state store."""
    found = backends.broker.dead_letters(limit)
    tasks = backends.state.get_tasks(x["task_id"] for x in found if x["task_id"])
    for x in found:
        task = tasks.get(x["task_id"]) if x["task_id"] else None
        x["task_status"] = task.status.value if task else (MISSING if x["task_id"] else None)
        x["attempts"] = task.attempts if task else None
        x["max_attempts"] = task.max_attempts if task else None
        x["error"] = task.error if task else None
    return found


@dataclass
class Found:
    """What an id given to `dlq show|retry|rm` names: the letters it names (a task id:
    all of its task's, newest first, maybe none left; a letter id: that one) and the
    task's id (None for a letter that names no task), with all of that task's letters."""

    task_id: str | None
    letters: list[dict[str, Any]] = field(default_factory=list)
    task_letters: list[dict[str, Any]] = field(default_factory=list)


def find(backends: Backends, text: str) -> Found:
    """A letter's id, or a task id (whole, prefix or short id, as elsewhere) among the
    letters' tasks, else among the state store's; NotFoundError when it is neither."""
    found = letters(backends, SCAN)
    for x in found:
        if x["id"] == text.strip():
            return Found(x["task_id"], [x], _of(found, x["task_id"]) if x["task_id"] else [x])
    named = sorted({x["task_id"] for x in found if x["task_id"]})
    try:
        task_id = ids.resolve(
            text,
            lambda p, n: [i for i in named if i.startswith(p)][:n],
            lambda t, n: [i for i in named if ids.short_id(i).startswith(t)][:n],
            lambda cands: {t.id: t.title for t in backends.state.get_tasks(cands).values()},
        )
        if task_id not in named:  # a whole id is taken as it is
            raise NotFoundError(task_id)
    except NotFoundError:
        try:
            task_id = backends.state.get_task(text).id
        except NotFoundError:
            raise NotFoundError(f"no dead letter or task {text.strip()}", LIST_HINT) from None
    mine = _of(found, task_id)
    return Found(task_id, mine, mine)


def _of(found: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    return [x for x in found if x["task_id"] == task_id]


def remove(backends: Backends, chosen: list[dict[str, Any]]) -> int:
    """Delete these letters (only these: one that came since stays)."""
    return backends.broker.remove_dead_letters([x["id"] for x in chosen]) if chosen else 0


def retry(service: TaskService, found: Found) -> dict[str, Any]:
    """Run the letters' task again, then remove all of its letters: ``{"task_id",
    "outcome", "removed"}``. A task without letters is left alone (a second retry is a
    no-op), and so is one on its way already (queued, running…) or that ended well: its
    letters, stale, are removed."""
    if found.task_id is None:
        letter = found.letters[0]["id"]
        raise UsageError(
            f"dead letter {letter} names no task to run again",
            f"`orchestra dlq rm {letter}` removes it",
        )
    if not found.task_letters:
        now = service.get(found.task_id).status.value
        outcome = f"no dead letter left: not run again (it is {now})"
        return {"task_id": found.task_id, "outcome": outcome, "removed": 0}
    outcome = _rerun(service, found.task_id, found.task_letters)
    return {
        "task_id": found.task_id,
        "outcome": outcome,
        "removed": remove(service.b, found.task_letters),
    }


def _rerun(service: TaskService, task_id: str, chosen: list[dict[str, Any]]) -> str:
    if chosen[0]["task_status"] == MISSING:
        specs, _ = lost(chosen)
        if not specs:
            raise UsageError(
                f"task {task_id} is lost and its letters carry no submission",
                "a subtask comes back with its root: `orchestra dlq retry ROOT`",
            )
        service.resubmit_lost(specs[0])
        return "resubmitted"
    task: Task = service.get(task_id)
    if task.status in (Status.FAILED, Status.CANCELLED):
        try:
            service.retry(task.id)
            return "retried"
        except ConflictError:  # retried meanwhile (another `dlq retry`, `task retry`)
            task = service.get(task.id)
    return f"not run again: {task.status.value}"


def by_task(found: list[dict[str, Any]]) -> list[Found]:
    """The letters grouped by task (`dlq retry --all`), newest first; the letters that
    name no task are left out."""
    tasks = dict.fromkeys(x["task_id"] for x in found if x["task_id"])
    return [Found(t, _of(found, t), _of(found, t)) for t in tasks]


def lost(found: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The submissions of lost tasks (one per task) and the ids of lost tasks whose
    letters carry none (subtasks: their root's resubmission plans them again)."""
    specs: dict[str, dict[str, Any]] = {}
    bare: set[str] = set()
    for x in found:
        if x["task_status"] != MISSING:
            continue
        if x.get("spec"):
            specs.setdefault(x["task_id"], x["spec"])
        else:
            bare.add(x["task_id"])
    return list(specs.values()), sorted(bare - set(specs))
