"""The state seam: small protocols, one per kind of state, and the store that has them all.

- ``TaskStore``: tasks and their status machine (``transition`` is the only way a
  status changes: it checks the table and the expected version, applies the
  change, bumps the version and appends the event, all in one atomic step);
- ``EventLog``: the append-only log every change writes, read by sequence number;
- ``AgentRegistry``: who is alive, with which capabilities, and stop requests;
- ``StepLog``, ``ArtifactStore``, ``BudgetLedger``: the agent loop's durable records;
- ``Locks``: named token locks with expiry (``locks.TokenLock``).

A component takes the narrowest one it needs; ``StateStore`` is all of them
plus snapshots and health, what a backend implements (Redis: ``redis*.py``,
SQLite: ``sqlite*.py``) and ``Backends.state`` holds. Each protocol has a
contract suite in tests/contract run over both backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestra_cli.models import AgentRecord, Event, Task, Usage
from orchestra_cli.state.ledger import Ask, Ledger, Limits
from orchestra_cli.status import Status, can_transition

if TYPE_CHECKING:  # a one-shot command never takes a lock
    from orchestra_cli.state.locks import TokenLock

# Event sequence numbers: SQLite integers are signed 64-bit and a Redis stream id is
# read as ``after + 1``, so ``after`` goes up to this (an API query beyond it is a 422)
MAX_EVENT_SEQ = 2**63 - 2
# Fields a transition may change besides the status.
MUTABLE_FIELDS = frozenset(
    {"agent", "result", "error", "attempts", "capability", "usage", "input"}  # input: retry --note
)


@dataclass(frozen=True)
class Create:
    """How a create goes, besides storing the task.

    ``dispatch`` (the queued event's data): the new task also goes pending →
    queued on its capability in the same atomic step — a route decided at
    submit (the submitter chose the capability).
    ``meanwhile`` runs once, while the store works (Redis: after the command is
    sent, before its reply is read; SQLite: after the commit); its exception is
    raised once the create's outcome is known. The submitter publishes the
    task's message here.
    ``watch``: the caller will wait for the task's end
    (``wait_ended(counted=True)``), counted as a waiter in the same step.
    """

    dispatch: dict[str, Any] | None = None
    meanwhile: Callable[[], None] | None = None
    watch: bool = False


PLAIN = Create()


class TaskStore(Protocol):
    """Tasks: create, read, list, and every status change."""

    @property
    def create_window(self) -> float:
        """The longest, in seconds, a create can go on being retried after its message
        was published (``Create.meanwhile``): a consumer that finds no task for a
        message younger than this looks again later instead of dead-lettering it."""
        ...

    def create_task(self, task: Task, how: Create = PLAIN) -> tuple[Task, bool]:
        """Store a new task; with an idempotency key already used, return that one.

        ``how`` (``Create``) says what else happens in the same step.
        """
        ...

    def create_tasks(self, items: Sequence[tuple[Task, Create]]) -> list[tuple[Task, bool]]:
        """``create_task`` for each item, in order, in as few round trips as the store
        allows (a bulk submitter's): each create is still its own atomic step. The
        ``meanwhile`` functions run in order once every create is under way (or, where
        the creates could not be sent together, each after its own); the first one's
        error is raised once every create's outcome is known. ``PartlyStored`` says
        which were stored when some create failed or its outcome is unknown."""
        ...

    def create_subtasks(self, parent_id: str, children: list[Task], reason: str) -> Task:
        """Store subtasks and move the parent pending → waiting, atomically."""
        ...

    def get_task(self, task_id: str) -> Task:
        """The task with this id (or unique id prefix); NotFoundError otherwise."""
        ...

    def get_tasks(self, task_ids: Iterable[str]) -> dict[str, Task]:
        """The tasks among these (whole) ids, by id, in one read; unknown ids left out."""
        ...

    def get_statuses(self, task_ids: Iterable[str]) -> dict[str, Status]:
        """The status of each task among these (whole) ids, in one read; unknown ids left
        out (an agent's heartbeat asks it for every task it runs)."""
        ...

    def list_tasks(
        self,
        *,
        status: Iterable[str] | None = None,
        agent: str | None = None,
        since: float | None = None,
        limit: int = 50,
        roots_only: bool = False,
        capability: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[Task]:
        """Newest first; ``labels``: every one of these key=value labels."""
        ...

    def status_counts(self) -> dict[str, int]:
        """How many tasks are in each status (statuses with none are left out)."""
        ...

    def tree(self, root_id: str) -> list[Task]:
        """The root task and every descendant, oldest first."""
        ...

    def children(self, parent_id: str) -> list[Task]: ...

    def transition(
        self,
        task_id: str,
        to: Status,
        *,
        expect_version: int | None = None,
        expect_status: Iterable[Status] | None = None,
        event_data: dict[str, Any] | None = None,
        add_usage: Usage | None = None,
        known: Task | None = None,
        **changes: Any,
    ) -> Task:
        """Apply one status change; TransitionRejected when refused.

        ``add_usage`` is added to the task's usage in the same atomic step.
        ``known``: the task as the caller read it at ``expect_version``; the
        store may build the result from it instead of reading the task back.
        """
        ...

    def claim(self, task_id: str, agent: str) -> tuple[Task, bool]:
        """An agent's claim: queued → running (attempts + 1) for ``agent``, atomically.

        Returns the task and whether it was claimed; a task that is not queued
        comes back unchanged, for the caller to decide (duplicate, takeover…).
        """
        ...

    def add_usage(self, task_id: str, usage: Usage) -> None: ...

    def wait_ended(self, task_id: str, wait: float, *, counted: bool = False) -> Task | None:
        """The task once it has ended (succeeded, failed, cancelled), or None if it
        has not after ``wait`` seconds (bounded: callers loop). Only its end
        wakes the caller, not its other events. ``counted``: counted as a waiter
        already (``create_task(watch=True)`` or an earlier call). NotFoundError
        when there is no such task."""
        ...


class EventLog(Protocol):
    """The append-only log of what happened, per tree and overall, by sequence number."""

    def append_event(
        self, task_id: str, root_id: str, type: str, data: dict[str, Any] | None = None
    ) -> None: ...

    def events(
        self, *, root_id: str | None = None, after: int = 0, limit: int = 1000, wait: float = 0.0
    ) -> list[Event]:
        """Events after sequence ``after``, oldest first.

        With ``wait`` and none there yet, block up to ``wait`` seconds for the
        next one (a live view learns of a change at once instead of polling).
        """
        ...

    def count_events(self, task_id: str, type: str) -> int: ...


class AgentRegistry(Protocol):
    """Agents (and orchestrators) with their heartbeats, capabilities and stop requests."""

    def save_agent(self, agent: AgentRecord, *, fresh: bool = False) -> bool:
        """Upsert the registry record; returns whether a stop was requested.

        ``fresh``: the process is (re)starting under this name, so a stop asked
        of an earlier process with the name no longer applies."""
        ...

    def list_agents(self) -> list[AgentRecord]: ...

    def get_agent(self, name: str) -> AgentRecord: ...

    def request_agent_stop(self, name: str) -> AgentRecord: ...

    def delete_agent(self, name: str) -> None: ...


class StepLog(Protocol):
    """The agent loop's steps, each written once under its number (engine/loop.py)."""

    def record_step(
        self,
        task_id: str,
        root_id: str,
        n: int,
        data: dict[str, Any],
        event: dict[str, Any],
        *,
        add_usage: Usage | None = None,
        root_seen: int | None = None,
    ) -> int:
        """Store step ``n`` of a task (and a ``step`` event): 0 (falsy) if ``n`` exists
        already, else 1 — or 2 when ``root_seen`` is given and the root's step log no
        longer holds that many steps (besides this one, on the root itself): someone wrote
        there meanwhile (a pause, say), and a ``PauseWatch`` looks; 1 says nobody did, as
        of this write, and saves that look's round trip. ``add_usage`` is added to the
        task's usage in the same atomic write (a model turn's step carries its call's
        charge: both are on record, or neither)."""
        ...

    def steps(self, task_id: str) -> list[dict[str, Any]]:
        """The task's steps in order (``n``, ``time`` and the step's own fields)."""
        ...

    def steps_after(self, task_id: str, after: int) -> tuple[int, list[dict[str, Any]]]:
        """How many steps the task has, and those numbered above ``after``, in order: a
        reader that asks again and again (``approvals.PauseWatch``) reads each step once."""
        ...


def taken_over(
    task_id: str, owner: tuple[str, int], held: tuple[str | None, int | None] | None
) -> BaseException:
    """A fenced write refused: the task is no longer ``owner``'s attempt."""
    from orchestra_cli.errors import TaskCancelled

    who = "it is gone" if held is None else f"now {held[0]}'s, attempt {held[1]}"
    return TaskCancelled(
        f"task {task_id} was taken over ({who}; this was {owner[0]}'s attempt {owner[1]}): "
        "its files are not saved"
    )


class ArtifactStore(Protocol):
    """Files a task changed, content-addressed (engine/workspace.py)."""

    def save_artifacts(
        self,
        task_id: str,
        changes: dict[str, bytes | None],
        owner: tuple[str, int] | None = None,
    ) -> None:
        """Record a task's changed files, content-addressed (None: deleted). ``owner``
        (agent, attempt): only while the task is still that agent's on that attempt, in
        the same atomic step; otherwise ``TaskCancelled`` (another agent took it over)
        and nothing is saved."""
        ...

    def artifacts(self, task_id: str) -> dict[str, tuple[str | None, int]]:
        """A task's files: path → (content hash or None for a deletion, size)."""
        ...

    def blob(self, sha: str) -> bytes:
        """An artifact's content by its hash."""
        ...


class BudgetLedger(Protocol):
    """A tree's spend and the holds of calls in flight (engine/budget.py)."""

    def reserve_budget(
        self, root_id: str, hold_id: str, ask: Ask, limits: Limits, *, ttl: float
    ) -> Ledger:
        """Atomically hold a call's worst case against its tree's budget (ledger.py)."""
        ...

    def settle_budget(self, root_id: str, hold_id: str, tokens: int, usd: float) -> None:
        """Release a hold; add the call's real usage to the tree's spend."""
        ...


class Locks(Protocol):
    """Named locks shared by every process on the store."""

    def lock(self, name: str, ttl: float) -> TokenLock:
        """A lock (not yet taken) that expires ``ttl`` seconds after it is taken or renewed."""
        ...


class StateStore(
    TaskStore, EventLog, AgentRegistry, StepLog, ArtifactStore, BudgetLedger, Locks, Protocol
):
    """Every part of the state seam on one backend, plus snapshots and health."""

    def export_snapshot(self, path: Path) -> int:
        """Write a consistent copy of all state to ``path``; returns a size measure."""
        ...

    def import_snapshot(self, path: Path) -> int:
        """Replace all state with the snapshot at ``path``."""
        ...

    def health(self) -> dict[str, Any]:
        """``{"ok", "url", "latency_ms", …}`` or ``{"ok": False, "url", "error"}``."""
        ...

    def close(self) -> None: ...


def check_changes(changes: dict[str, Any]) -> None:
    """A transition may change only ``MUTABLE_FIELDS`` besides the status (a caller's bug)."""
    unknown = set(changes) - MUTABLE_FIELDS
    if unknown:
        raise ValueError(f"transition cannot change {sorted(unknown)}")


def rejection_reason(
    task: Task, to: Status, expect_version: int | None, expect_status: Iterable[Status] | None
) -> str | None:
    """Why a transition is refused, or None when it may go ahead."""
    if expect_version is not None and task.version != expect_version:
        return f"version is {task.version}, expected {expect_version} (changed meanwhile)"
    if expect_status is not None and task.status not in set(expect_status):
        return f"status is {task.status}, expected one of {sorted(map(str, expect_status))}"
    if not can_transition(task.status, to):
        return f"cannot go from {task.status} to {to}"
    return None
