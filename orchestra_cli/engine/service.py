"""Task operations for the CLI and the API: submit, inspect, cancel, retry.

Each function validates its input, changes state through the status machine
and publishes what the orchestrator needs; none of them renders anything.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from orchestra_cli import tracing
from orchestra_cli.backends import Backends
from orchestra_cli.broker.base import publish_run, publish_submit
from orchestra_cli.engine.blockers import Blocker, blockers
from orchestra_cli.engine.routing import AgentDirectory
from orchestra_cli.engine.service_work import WorkAndPeople
from orchestra_cli.engine.submission import (
    MAX_KEY_CHARS,
    MAX_LABEL_KEY_CHARS,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_TITLE_CHARS,
    SubmitRequest,
)
from orchestra_cli.errors import (
    BrokerError,
    ConflictError,
    OrchestraError,
    StateUnavailable,
    TransitionRejected,
    Undelivered,
    UsageError,
)
from orchestra_cli.models import (
    MAX_PRIORITY,
    MSG_RESULT,
    Q_RESULTS,
    AgentRecord,
    Envelope,
    Event,
    Task,
    Usage,
)
from orchestra_cli.state.base import Create
from orchestra_cli.status import TERMINAL, Status
from orchestra_cli.util import blank

if TYPE_CHECKING:  # imported where used: `task submit` needs neither (-X importtime)
    from orchestra_cli.engine.follow import Follower, Update
    from orchestra_cli.engine.roles import RoleDefinition

log = logging.getLogger(__name__)

TITLE_LENGTH = 80
_SURROGATES = re.compile("[\ud800-\udfff]")


@contextlib.contextmanager
def _undelivered(task_id: str, *, state_too: bool = False) -> Iterator[None]:
    """A broker error while sending the message of a stored task: Undelivered.
    ``state_too``: the send alone is inside, so StateUnavailable is the broker's
    too (the embedded broker is the database)."""
    caught = (BrokerError, StateUnavailable) if state_too else BrokerError
    try:
        yield
    except caught as exc:
        if isinstance(exc, Undelivered):
            raise
        raise Undelivered(task_id, exc) from exc


_MD_LEAD = re.compile(r"^(?:#{1,6}\s+|>\s*|[-*+]\s+|\d+[.)]\s+|\[[ xX]\]\s+)+")
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_EMPHASIS = re.compile(r"(\*\*|__|\*|`+|~~)(?=\S)(.+?)(?<=\S)\1")


def plain_title(line: str) -> str:
    """A markdown line as a title: ``# Spec`` → ``Spec``, ``**Fix** [it](url)`` → ``Fix it``."""
    text = _MD_LEAD.sub("", line.strip()).rstrip("#").strip()
    text = _MD_LINK.sub(r"\1", text)
    return _MD_EMPHASIS.sub(r"\2", text).strip() or line.strip()


def _title_from(text: str) -> str:
    first = next((plain_title(ln) for ln in text.splitlines() if ln.strip()), "")
    return first if len(first) <= TITLE_LENGTH else first[: TITLE_LENGTH - 1] + "…"


def _check_sizes(req: SubmitRequest) -> None:
    """Titles, labels and keys are small; the text is the place for anything long."""
    if req.title is not None and len(req.title) > MAX_TITLE_CHARS:
        raise UsageError(
            f"the title is {len(req.title):,} characters, over the {MAX_TITLE_CHARS} limit",
            "shorten it (the task text holds the detail; a title defaults to its first line)",
        )
    labels = req.labels or {}
    if len(labels) > MAX_LABELS:
        raise UsageError(f"{len(labels)} labels, over the {MAX_LABELS} limit", "use fewer labels")
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY_CHARS or len(value) > MAX_LABEL_VALUE_CHARS:
            raise UsageError(
                f"label {key[:40]!r} is too long",
                f"keys up to {MAX_LABEL_KEY_CHARS} characters, values up to "
                f"{MAX_LABEL_VALUE_CHARS}",
            )
    if req.idempotency_key is not None and len(req.idempotency_key) > MAX_KEY_CHARS:
        raise UsageError(
            f"the idempotency key is {len(req.idempotency_key):,} characters, over the "
            f"{MAX_KEY_CHARS} limit",
            "use a shorter key (a hash of a long one works)",
        )


class TaskService(WorkAndPeople):
    def __init__(
        self,
        backends: Backends,
        roles: dict[str, RoleDefinition] | Callable[[], dict[str, RoleDefinition]],
    ) -> None:
        """``roles`` may be a loader: reads (get, list, tree) never need them."""
        self.b = backends
        self.state = backends.state
        self._roles = roles
        self.directory = AgentDirectory(self.state, backends.settings.agents.ttl_seconds)

    @functools.cached_property
    def roles(self) -> dict[str, RoleDefinition]:
        return self._roles if isinstance(self._roles, dict) else self._roles()

    def capabilities(self) -> set[str]:
        from orchestra_cli.engine.roles import known_capabilities

        return known_capabilities(self.roles, self.directory.agents(fresh=True))

    def _known(self, capability: str) -> bool:
        from orchestra_cli.engine.roles import known_capabilities

        # the roles' own capabilities need no registry read (a round trip per submit)
        return capability in known_capabilities(self.roles) or capability in self.capabilities()

    def validate(self, req: SubmitRequest) -> None:
        limit = self.b.settings.tasks.max_input_bytes
        if blank(req.text):
            raise UsageError(
                "task text is empty",
                "give the task as text, - for stdin, or --file",
                api_hint='give the task as "text"',
            )
        texts = {"task text": req.text, "title": req.title or "", "capability": req.capability}
        texts |= {"idempotency key": req.idempotency_key or ""}
        texts |= {f"label {k!r}": f"{k}={v}" for k, v in (req.labels or {}).items()}
        for what, value in texts.items():  # bytes that were not UTF-8 (argv, surrogateescape)
            if value and _SURROGATES.search(value):
                raise UsageError(f"{what} is not UTF-8", "convert it to UTF-8")
        if req.idempotency_key is not None and blank(req.idempotency_key):
            raise UsageError("the idempotency key is empty", "give a key, or leave the option out")
        _check_sizes(req)
        if any(key.startswith("budget_") for key in req.labels or {}):
            from orchestra_cli.engine.budget import check_budget_labels  # llm.* is not cheap

            check_budget_labels(req.labels or {})
        if len(req.text.encode("utf-8")) > limit:
            raise UsageError(
                f"task text is {len(req.text.encode()):,} bytes, over the {limit:,}-byte limit",
                "shorten it or raise tasks.max_input_bytes",
            )
        if req.capability is not None and not self._known(req.capability):
            raise UsageError(
                f"unknown capability {req.capability!r}",
                f"choose one of: {', '.join(sorted(self.capabilities()))}",
            )
        if req.priority is not None and not 0 <= req.priority <= MAX_PRIORITY:
            raise UsageError(f"priority {req.priority} is out of range", "use 0 (low) to 9")
        if req.timeout is not None and not (math.isfinite(req.timeout) and req.timeout > 0):
            raise UsageError(
                f"timeout {req.timeout:g} is not a positive number of seconds",
                "give seconds, e.g. --timeout 300",
                api_hint='give seconds, e.g. "timeout": 300',
            )
        if req.max_attempts is not None and req.max_attempts < 1:
            raise UsageError(
                "max attempts must be at least 1",
                "e.g. --max-attempts 3",
                api_hint='e.g. "max_attempts": 3',
            )

    @tracing.traced(tracing.submit_span, tracing.submitted, kind="PRODUCER")
    def submit(
        self, req: SubmitRequest, *, confirm: bool = True, wait: bool = False
    ) -> tuple[Task, bool]:
        """Store the task and route it (or hand it to the orchestrator); (task, created).

        It returns once the task and its message are durable. With
        ``confirm=False`` (bulk submitters) it returns once the task is stored
        and its message sent: the broker confirms messages in windows, and
        ``flush()`` (or closing the backends) waits for the rest; a message
        lost with a crashed submitter is re-sent by the recovery sweep, since
        the task is in state.

        ``wait``: the caller waits for the outcome next (``wait(task,
        counted=True)``). The store counts the waiter as it creates the task,
        and the message goes out at once without a publisher confirm: the
        task's end says more (a message the broker loses is sent again by the
        recovery sweep; one it refuses is an error from ``wait``).
        """
        self.validate(req)
        task = self.new_task(req)
        # an unreachable broker fails the submit before the task is stored; a broker
        # lost after that fails it with Undelivered (the task runs later: see there)
        if req.idempotency_key is None:  # (with a key, submitting again is safe anyway)
            self.b.broker.connect()
        if req.capability is None:  # the orchestrator plans it
            stored, created = self.state.create_task(task, Create(watch=wait))
            if created:
                with _undelivered(stored.id, state_too=True):
                    publish_submit(self.b.broker, stored, confirm=confirm, awaited=wait)
            return stored, created
        # The submitter chose the capability: there is nothing to plan (every
        # planner routes such a task as given), so it is routed here, in the
        # same atomic step that stores it, and goes straight to its work queue.
        from orchestra_cli.engine.planner import Plan

        plan = Plan("submit", "capability given by the submitter", capability=req.capability)
        data, live = self.directory.queued_event(req.capability, plan.why())
        # Without an idempotency key the create cannot find an older task, so its
        # message goes out while Redis runs the script (one round trip off every
        # task's latency); an agent that gets there first looks again (Agent.handle).
        early = task.idempotency_key is None
        sent: list[bool] = []

        def publish_early() -> None:
            publish_run(self.b.broker, task, confirm=confirm, awaited=wait)
            sent.append(True)

        with _undelivered(task.id):  # raised by the early publish once the task is stored
            how = Create(dispatch=data, meanwhile=publish_early if early else None, watch=wait)
            stored, created = self.state.create_task(task, how)
        if created:
            with _undelivered(stored.id, state_too=True):
                if stored.status == Status.PENDING:  # not routed after all: the orchestrator
                    publish_submit(self.b.broker, stored, confirm=confirm, awaited=wait)
                elif not sent:
                    publish_run(self.b.broker, stored, confirm=confirm, awaited=wait)
            if not live:
                self.directory.note_no_agent(stored, req.capability)
            self.b.journals.decisions.write(plan.record(stored))
        return stored, created

    def new_task(self, req: SubmitRequest) -> Task:
        """The task ``req`` asks for (validated), its workspace files stored first, so no
        agent can start without them."""
        defaults = self.b.settings.tasks
        task = Task(
            title=req.title or _title_from(req.text),
            input=req.text,
            capability=req.capability,
            priority=req.priority if req.priority is not None else 5,
            timeout=req.timeout or defaults.default_timeout,
            timeout_set=req.timeout is not None,
            max_attempts=req.max_attempts or defaults.default_max_attempts,
            labels=req.labels or {},
            idempotency_key=req.idempotency_key,
        )
        if req.workspace:
            from orchestra_cli.engine.workspace import base_key

            self.state.save_artifacts(base_key(task.id), dict(req.workspace))
        return task

    def submit_many(self, reqs: Sequence[SubmitRequest]) -> list[tuple[Task, bool]]:
        """``submit(req, confirm=False)`` for each, in pipelined steps (engine/bulk.py)."""
        from orchestra_cli.engine.bulk import submit_many

        return submit_many(self, reqs)

    def resubmit_lost(self, spec: dict[str, Any]) -> tuple[Task, bool]:
        """A root task the state store lost, from the submission its messages carried
        (``broker.base.task_spec``): stored again under its id as pending and handed to
        the orchestrator; (task, created) — not created when the id exists again."""
        from orchestra_cli.records import RecordError

        try:
            task = Task.model_validate({**spec, "status": Status.PENDING.value})
        except RecordError as exc:
            raise UsageError(f"a dead letter's task cannot be read: {exc}", "see the log") from exc
        self.validate(
            SubmitRequest(
                text=task.input,
                title=task.title,
                labels=task.labels,
                idempotency_key=task.idempotency_key,
            )
        )
        stored, created = self.state.create_task(task)
        if created:
            with _undelivered(stored.id, state_too=True):
                publish_submit(self.b.broker, stored)
        return stored, created

    def flush(self) -> None:
        """Wait until every message ``submit(confirm=False)`` sent is durable."""
        self.b.broker.flush()

    def wait(self, task: Task, timeout: float | None = None, *, counted: bool = False) -> Task:
        """Block until ``task`` has ended; the task then, or as it is after ``timeout``.

        Only the task's end wakes the caller (``follow(events=False)``);
        ``counted``: submitted with ``wait=True``.
        """
        *_, last = self.follow(task, timeout=timeout, events=False, counted=counted)
        return last.task

    def follow(
        self,
        task: Task,
        *,
        after: int = 0,
        timeout: float | None = None,
        events: bool = True,
        counted: bool = False,
    ) -> Iterator[Update]:
        """Follow ``task`` until it ends or ``timeout`` passes (engine/follow.py)."""
        from orchestra_cli.engine.follow import follow

        return follow(
            self.b, self.subtree, task, after=after, timeout=timeout, events=events, counted=counted
        )

    def follower(self, task: Task, after: int = 0) -> Follower:
        """A follow an async caller drives itself (``Follower.poll``)."""
        from orchestra_cli.engine.follow import Follower

        return Follower(self.b, self.subtree, task, after=after)

    def list_tasks(self, **filters: Any) -> list[Task]:
        """``TaskStore.list_tasks``: newest first, filtered."""
        return self.state.list_tasks(**filters)

    def events(self, root_id: str | None = None, after: int = 0, limit: int = 1000) -> list[Event]:
        """The event log after ``after`` (one tree's with ``root_id``), oldest first."""
        return self.state.events(root_id=root_id, after=after, limit=limit)

    def agents(self) -> list[AgentRecord]:
        return self.state.list_agents()

    def agent(self, name: str) -> AgentRecord:
        return self.state.get_agent(name)

    def blockers(self, tasks: list[Task]) -> dict[str, Blocker]:
        """The tasks among ``tasks`` that cannot move now, with why and the fix."""
        ttl = self.b.settings.agents.ttl_seconds
        return blockers(tasks, self.directory.agents(), lambda: self.roles, ttl)

    def get(self, task_id: str) -> Task:
        return self.state.get_task(task_id)

    def tree(self, task_id: str) -> list[Task]:
        task = self.state.get_task(task_id)
        return self.state.tree(task.root_id)

    def subtree(self, task_id: str) -> list[Task]:
        """The task followed by every task below it."""
        task = self.state.get_task(task_id)
        return [task, *_descendants(self.state.tree(task.root_id), task.id)]

    def tree_usage(self, tasks: list[Task]) -> Usage:
        total = Usage()
        for task in tasks:
            total = total + task.usage
        return total

    def cancel(self, task_id: str) -> list[Task]:
        """Cancel a task and its unfinished subtasks; returns what was cancelled."""
        task = self.state.get_task(task_id)
        if task.status in TERMINAL:
            raise ConflictError(
                f"task {task.id} already {task.status}", "only unfinished tasks can be cancelled"
            )
        cancelled = []
        for t in [task, *_descendants(self.state.tree(task.root_id), task.id)]:
            if t.status in TERMINAL:
                continue
            try:
                cancelled.append(
                    self.state.transition(
                        t.id,
                        Status.CANCELLED,
                        # whatever it became since the tree was read, unless it has ended
                        error="cancelled by operator",
                        event_data={"by": "operator"},
                    )
                )
            except TransitionRejected:
                continue
        # agents running one of these stop at once instead of at their next heartbeat
        self._broadcast({"type": "cancel", "task_ids": [t.id for t in cancelled]})
        if task.parent_id is not None:
            self._notify(task, "cancelled")  # the parent may now be complete
        return cancelled

    def stop_agent(self, name: str) -> None:
        """Ask an agent to drain: in the registry (authoritative) and on the control channel."""
        self.state.request_agent_stop(name)
        self._broadcast({"type": "stop", "agent": name})

    def _broadcast(self, message: dict[str, object]) -> None:
        try:
            self.b.broker.publish_control(message)
        except OrchestraError as exc:  # a hint only: agents also learn it from state
            log.warning("control message not sent (%s); agents will see it at their heartbeat", exc)

    def retry(self, task_id: str, note: str | None = None) -> Task:
        """Run a failed or cancelled task again (for a parent: its unfinished subtasks).

        Subtasks cancelled because this one failed (their dependency) are reopened
        too. Everything is reopened bottom-up — subtasks, then the task, then its
        finished ancestors — and only then published, so no result can find a
        half-reopened tree and aggregate it as failed again.

        With ``note`` (feedback) a finished step — succeeded too — runs again from
        scratch with the note added to its input, and so do its dependents that
        already ran.
        """
        task = self.state.get_task(task_id)
        allowed = (Status.FAILED, Status.CANCELLED) + ((Status.SUCCEEDED,) if note else ())
        if task.status not in allowed:
            raise ConflictError(
                f"task {task.id} has status {task.status}",
                "only finished tasks can be retried with --note"
                if note
                else "only failed or cancelled tasks can be retried (--note TEXT re-runs a "
                "succeeded step with your feedback)",
                api_hint="only finished tasks can be retried with a note"
                if note
                else "only failed or cancelled tasks can be retried (POST "
                f"/v1/tasks/{task.id}/retry?note=TEXT re-runs a succeeded step with your feedback)",
            )
        if note is not None and self.state.children(task.id):
            raise UsageError(
                f"task {task.id} has subtasks: --note re-runs one step",
                "give the id of the subtask to send back (`orchestra task get` lists them)",
                api_hint="retry the subtask to send back with the note "
                f"(GET /v1/tasks/{task.id} lists them)",
            )
        to_publish: list[Task] = []
        self._reopen(task, to_publish, note=note)
        if task.parent_id is not None:
            siblings = {t.id: t for t in self.state.children(task.parent_id)}
            unblocked = [task.id]
            while unblocked:  # and whatever was cancelled because those failed, transitively
                failed_id = unblocked.pop()
                for sibling in list(siblings.values()):
                    ran = note is not None and failed_id in sibling.depends_on
                    if (ran and sibling.status in TERMINAL) or _blocked_by(sibling, failed_id):
                        self._reopen(sibling, to_publish, note="" if ran else None)
                        del siblings[sibling.id]
                        unblocked.append(sibling.id)
        parent_id = task.parent_id
        while parent_id is not None:  # reopen finished ancestors so they aggregate again
            parent = self.state.get_task(parent_id)
            if parent.status in TERMINAL:
                try:
                    self.state.transition(
                        parent.id,
                        Status.WAITING,
                        expect_version=parent.version,
                        error=None,
                        event_data={"by": "operator"},
                    )
                except TransitionRejected:  # the orchestrator saw the retry and reopened it
                    if self.state.get_task(parent.id).status != Status.WAITING:
                        raise
            parent_id = parent.parent_id
        for leaf in to_publish:
            publish_submit(self.b.broker, leaf)
        return self.state.get_task(task.id)

    def _reopen(self, task: Task, to_publish: list[Task], *, note: str | None = None) -> None:
        """``note`` (not None): a step run again from scratch, the note (if any) in its input."""
        children = self.state.children(task.id)
        for child in children:
            if child.status in (Status.FAILED, Status.CANCELLED):
                self._reopen(child, to_publish)
        changes: dict[str, Any] = {}
        if note is not None:
            from orchestra_cli.engine.steps import restart

            restart(self.state, task, note)  # its loop starts afresh (history kept)
            if note:
                changes["input"] = f"{task.input}\n\n# A note on your previous attempt\n{note}"
        reopened = self.state.transition(
            task.id,
            Status.WAITING if children else Status.PENDING,
            expect_version=task.version,
            attempts=0,
            error=None,
            event_data={"by": "operator", **({"note": note} if note else {})},
            **changes,
        )
        if not children:
            to_publish.append(reopened)

    def _notify(self, task: Task, outcome: str) -> None:
        env = Envelope(
            type=MSG_RESULT,
            task_id=task.id,
            attempt=task.attempts,
            payload={"outcome": outcome, "agent": "operator"},
        )
        self.b.broker.publish(Q_RESULTS, env, priority=task.priority)


def _blocked_by(task: Task, failed_id: str) -> bool:
    """Cancelled or failed only because ``failed_id``, a dependency of it, failed."""
    return (
        failed_id in task.depends_on
        and task.status in (Status.FAILED, Status.CANCELLED)
        and (task.error or "").startswith("dependency ")
    )


def _descendants(tree: list[Task], ancestor_id: str) -> list[Task]:
    """Every task below ``ancestor_id`` in ``tree``, parents before children."""
    by_parent: dict[str | None, list[Task]] = {}
    for t in tree:
        by_parent.setdefault(t.parent_id, []).append(t)
    out: list[Task] = []
    stack = list(by_parent.get(ancestor_id, []))
    while stack:
        t = stack.pop(0)
        out.append(t)
        stack.extend(by_parent.get(t.id, []))
    return out
