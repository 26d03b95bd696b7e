"""Many submissions at once (`task submit --batch`, bulk submitters of the API's
library): what ``TaskService.submit(req, confirm=False)`` does for each, with the
round trips shared.

A chunk of tasks is stored by one ``create_tasks`` call (Redis: every create
script sent in one write; SQLite: one transaction). Each create is still its own
atomic step, with the same routing, events and decisions as a single submit.
The work messages of the tasks that need no idempotency check go out while the
store runs the scripts, as a single submit's do; the others' once their creates
are known to be new. Messages are confirmed in windows (``flush()``), as with
``confirm=False``. A message that cannot be sent ends the call with
``Undelivered`` for the first such task; its ``stored`` lists every task this
call stored (those whose messages are missing run later: the recovery sweep
sends them). A state store that fails part-way ends it with ``PartlyStored``, whose
``stored`` lists the tasks known to be stored (each with its message sent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestra_cli import tracing
from orchestra_cli.broker.base import publish_run, publish_submit
from orchestra_cli.engine.planner import Plan
from orchestra_cli.errors import BrokerError, PartlyStored, StateUnavailable, Undelivered
from orchestra_cli.models import Task
from orchestra_cli.state.base import Create
from orchestra_cli.status import Status

if TYPE_CHECKING:
    from orchestra_cli.engine.service import TaskService
    from orchestra_cli.engine.submission import SubmitRequest

CHUNK = 100  # creates per round trip


class _Sends:
    """The chunk's messages, in order; the first failure stops the rest."""

    def __init__(self, service: TaskService) -> None:
        self.broker = service.b.broker
        self.sent: set[str] = set()
        self.failed: tuple[str, BrokerError | StateUnavailable] | None = None

    def send(self, task: Task, *, run: bool) -> None:
        """``run``: to its work queue; otherwise to the orchestrator's intake."""
        if self.failed is not None:
            return
        try:
            if run:
                publish_run(self.broker, task, confirm=False)
            else:
                publish_submit(self.broker, task, confirm=False)
        except (BrokerError, StateUnavailable) as exc:  # (the embedded broker is the database)
            self.failed = (task.id, exc)
        else:
            self.sent.add(task.id)


def submit_many(service: TaskService, reqs: Sequence[SubmitRequest]) -> list[tuple[Task, bool]]:
    """Validate every request, then store and route them in chunks; (task, created) each."""
    for req in reqs:
        service.validate(req)
    out: list[tuple[Task, bool]] = []
    for start in range(0, len(reqs), CHUNK):
        try:
            out += _chunk(service, reqs[start : start + CHUNK])
        except (Undelivered, PartlyStored) as exc:
            exc.stored = out + exc.stored  # (the earlier chunks' messages all went)
            raise
    return out


def _chunk(service: TaskService, reqs: Sequence[SubmitRequest]) -> list[tuple[Task, bool]]:
    # one span a chunk: its tasks' traces start here, as a single submit's start at its own
    with tracing.span("orchestra.submit_many", {"orchestra.tasks": len(reqs)}, kind="PRODUCER"):
        return _stored(service, reqs)


def _stored(service: TaskService, reqs: Sequence[SubmitRequest]) -> list[tuple[Task, bool]]:
    if any(req.idempotency_key is None for req in reqs):  # (with a key, again is safe anyway)
        service.b.broker.connect()  # an unreachable broker fails the chunk before it is stored
    sends = _Sends(service)
    items: list[tuple[Task, Create]] = []
    plans: dict[str, tuple[Plan, bool]] = {}  # task id → the route decided, and a live agent
    for req in reqs:
        task = service.new_task(req)
        if req.capability is None:  # the orchestrator plans it
            items.append((task, Create()))
            continue
        plan = Plan("submit", "capability given by the submitter", capability=req.capability)
        data, live = service.directory.queued_event(req.capability, plan.why())
        plans[task.id] = (plan, live)
        early = task.idempotency_key is None  # no older task to find: its message goes now
        meanwhile = (lambda t=task: sends.send(t, run=True)) if early else None
        items.append((task, Create(dispatch=data, meanwhile=meanwhile)))
    try:
        results = service.state.create_tasks(items)
    except PartlyStored as exc:  # the stored ones still get their messages and decisions
        _finish(service, sends, plans, exc.stored)
        raise
    _finish(service, sends, plans, results)
    if sends.failed is not None:
        task_id, cause = sends.failed
        error = Undelivered(task_id, cause)
        error.stored = list(results)
        error.unsent = {t.id for t, created in results if created and t.id not in sends.sent}
        raise error from cause
    return results


def _finish(
    service: TaskService,
    sends: _Sends,
    plans: dict[str, tuple[Plan, bool]],
    results: list[tuple[Task, bool]],
) -> None:
    """The messages not sent yet, the no-agent notes and the decisions of stored tasks."""
    for stored, created in results:
        if created and stored.id not in sends.sent:  # not routed after all: the orchestrator
            sends.send(stored, run=stored.status != Status.PENDING)
    journal = []
    for stored, created in results:
        if created and stored.id in plans:
            plan, live = plans[stored.id]
            if not live:
                service.directory.note_no_agent(stored, stored.capability or "")
            journal.append(plan.record(stored))
    service.b.journals.decisions.write_many(journal)
