"""Dead letters with what became of their tasks, and resubmitting the tasks a store lost.

A Redis without persistence that restarts forgets every task while their
messages wait in RabbitMQ; each then ends dead-lettered as 'task does not
exist'. A root task's messages carry its submission (``broker.base.task_spec``),
so `orchestra dlq resubmit` can store such a task again, under its own id.
"""

from __future__ import annotations

from typing import Any

from orchestra_cli.backends import Backends

MISSING = "missing"  # task_status of a letter whose task the state store does not have


def letters(backends: Backends, limit: int) -> list[dict[str, Any]]:
    """The broker's letters (newest first), each with ``task_status``: its task's status
    now, ``missing`` when the store does not have it, None when it names no task."""
    found = backends.broker.dead_letters(limit)
    tasks = backends.state.get_tasks(x["task_id"] for x in found if x["task_id"])
    for x in found:
        task = tasks.get(x["task_id"]) if x["task_id"] else None
        x["task_status"] = task.status.value if task else (MISSING if x["task_id"] else None)
    return found


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
