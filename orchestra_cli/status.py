"""The task status machine: one table, asked by every other module."""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    PENDING = "pending"  # stored, not yet planned
    WAITING = "waiting"  # a parent waiting on its subtasks
    QUEUED = "queued"  # on a capability queue
    RUNNING = "running"  # claimed by an agent
    BLOCKED = "blocked"  # waits for a person (a tool call to approve); holds no agent slot
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[Status] = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})

# from-status → statuses it may move to. running → queued is a retry or a
# redelivery; failed/cancelled → pending (a leaf) or waiting (a parent) is an
# operator's `task retry` (succeeded → pending too, with a note: feedback on a step
# that is re-run, and on its dependents); running → blocked parks a task for a person's answer
# (`task approve` / `reject` put it back on its way: blocked → queued); pending →
# blocked → pending is a root whose plan waits for review (plan_review.py).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(
        {Status.QUEUED, Status.WAITING, Status.FAILED, Status.CANCELLED, Status.BLOCKED}
    ),
    Status.WAITING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
    Status.QUEUED: frozenset({Status.RUNNING, Status.FAILED, Status.CANCELLED}),
    Status.RUNNING: frozenset(
        {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.QUEUED, Status.BLOCKED}
    ),
    Status.BLOCKED: frozenset({Status.QUEUED, Status.PENDING, Status.FAILED, Status.CANCELLED}),
    Status.SUCCEEDED: frozenset({Status.PENDING, Status.WAITING}),  # `task retry --note`
    Status.FAILED: frozenset({Status.PENDING, Status.WAITING}),
    Status.CANCELLED: frozenset({Status.PENDING, Status.WAITING}),
}


def can_transition(src: Status | str, dst: Status | str) -> bool:
    """True when the table allows ``src → dst``."""
    return Status(dst) in TRANSITIONS[Status(src)]


def is_terminal(status: Status | str) -> bool:
    return Status(status) in TERMINAL
