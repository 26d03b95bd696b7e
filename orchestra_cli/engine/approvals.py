"""Approvals: tool calls an ``ask`` rule parked for a person, and their answers.

A call that needs approval is an ``awaiting_approval`` step of its task, and
the task is ``blocked`` — it holds no agent slot, no lease and no thread, so
it waits for days and survives every restart. ``answer`` records the
person's ``approval`` step (approve, or reject with a reason) and puts the
task back on its way (``blocked → queued``, a run message to its capability):
any live agent resumes it from its steps, runs an approved call exactly once,
and gives the model a rejection as the call's result. ``--always`` also
records an ``allow`` step on the tree's root: the tool needs no approval for
the rest of the tree.

A step number is written once, so two people answering at the same moment
cannot both win; an answer recorded by a process that died before it moved
the task is finished by the next ``approve`` of the same task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestra_cli.broker.base import Broker, publish_run
from orchestra_cli.engine import plan_review
from orchestra_cli.engine.steps import TREE_MARKS, append_step
from orchestra_cli.errors import ConflictError, TransitionRejected, UsageError
from orchestra_cli.models import Task
from orchestra_cli.state.base import StateStore
from orchestra_cli.status import Status
from orchestra_cli.util import blank

INBOX_LIMIT = 500


@dataclass(frozen=True)
class Waiting:
    """One tool call waiting for a person."""

    task: Task
    step: int  # the awaiting_approval step's number: `task approve ID --step N`
    call_id: str
    tool: str
    input: Any
    since: float
    answer: dict[str, Any] | None = None  # recorded, but the task not yet moved on

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": {"pause": "paused", "plan": "plan"}.get(self.tool, "approval"),
            "task_id": self.task.id,
            "root_id": self.task.root_id,
            "title": self.task.title,
            "step": self.step,
            "tool": self.tool,
            "input": self.input,
            "since": self.since,
            "answered": self.answer is not None,
        }


def waiting(state: StateStore, task: Task) -> list[Waiting]:
    """The calls (or the plan) ``task`` waits on (none unless it is blocked)."""
    if task.status != Status.BLOCKED:
        return []
    plan = plan_review.under_review(state, task)
    if plan is not None:
        body = plan["plan"]
        summary = [s["title"] for s in body.get("subtasks") or []] or [body.get("capability")]
        return [Waiting(task, plan["n"], "", "plan", summary, float(plan["time"]))]
    steps = state.steps(task.id)
    answers = {s["call_id"]: s for s in steps if s.get("kind") == "approval"}
    results = {s["call_id"] for s in steps if s.get("kind") == "tool_result"}
    out = []
    for s in steps:
        if s.get("kind") != "awaiting_approval" or s["call_id"] in results:
            continue
        out.append(
            Waiting(
                task,
                s["n"],
                s["call_id"],
                s.get("name", "?"),
                s.get("input"),
                float(s.get("time") or task.updated_at),
                answers.get(s["call_id"]),
            )
        )
    return out


def inbox(state: StateStore) -> list[Waiting]:
    """Everything waiting for a person, oldest first: calls to approve, paused trees."""
    blocked = state.list_tasks(status=[Status.BLOCKED.value], limit=INBOX_LIMIT)
    items = [w for task in blocked for w in waiting(state, task)]
    roots = {t.root_id for t in blocked}
    open_roots = state.list_tasks(status=[Status.WAITING.value], limit=INBOX_LIMIT)
    roots |= {t.id for t in open_roots if t.is_root}
    for root_id in sorted(roots):
        marks = [s for s in state.steps(root_id) if s.get("kind") in ("pause", "resume")]
        if marks and marks[-1]["kind"] == "pause":
            root = state.get_task(root_id)
            items.append(Waiting(root, marks[-1]["n"], "", "pause", None, marks[-1]["time"]))
    return sorted(items, key=lambda w: w.since)


def _pick(task: Task, items: list[Waiting], step: int | None) -> list[Waiting]:
    if not items:
        raise ConflictError(
            f"task {task.id} is {task.status}; it waits for no approval",
            "`orchestra inbox` lists what waits for a person",
            api_hint="GET /v1/inbox lists what waits for a person",
        )
    if step is None:
        return items
    chosen = [w for w in items if w.step == step]
    if not chosen:
        steps = ", ".join(str(w.step) for w in items)
        raise UsageError(
            f"task {task.id} has no call waiting at step {step}", f"it waits at step(s) {steps}"
        )
    return chosen


def answer(
    state: StateStore,
    broker: Broker,
    task: Task,
    *,
    approve: bool,
    reason: str = "",
    step: int | None = None,
    always: bool = False,
    by: str = "operator",
) -> Task:
    """Record a person's answer to the task's waiting call(s); the task runs on."""
    if not approve and blank(reason):  # as the API's document says blank (util.NOT_BLANK)
        raise UsageError(
            "a rejection needs a reason",
            "pass --reason TEXT; the model reads it",
            api_hint='send {"reason": TEXT}; the model reads it',
        )
    if plan_review.under_review(state, task) is not None:
        return _answer_plan(state, broker, task, approve=approve, reason=reason, by=by)
    items = _pick(task, waiting(state, task), step)
    decision = "approve" if approve else "reject"
    fresh = [w for w in items if w.answer is None]
    if not fresh and step is not None:
        raise ConflictError(
            f"step {step} of task {task.id} was answered already ({items[0].answer})",
            "each call is answered once",
        )
    n = len(state.steps(task.id))
    for w in fresh:
        data = {"kind": "approval", "call_id": w.call_id, "decision": decision, "by": by}
        event = {"kind": "approval", "tool": w.tool, "decision": decision}
        if not state.record_step(task.id, task.root_id, n, {**data, "reason": reason}, event):
            raise ConflictError(
                f"task {task.id} was answered meanwhile",
                "`orchestra task get` shows its state",
                api_hint=f"GET /v1/tasks/{task.id} shows its state",
            )
        n += 1
    if always and approve:
        _allow(state, task, {w.tool for w in items})
    return _release(state, broker, task, decision)


def _answer_plan(
    state: StateStore, broker: Broker, task: Task, *, approve: bool, reason: str, by: str
) -> Task:
    """Approve the plan under review (it runs as it stands) or reject it (planned again)."""
    from orchestra_cli.broker.base import publish_submit

    kind = "plan_approved" if approve else "plan_rejected"
    plan_review.record(state, task, kind, by=by, **({} if approve else {"reason": reason}))
    try:
        pending = state.transition(
            task.id,
            Status.PENDING,
            expect_status=[Status.BLOCKED],
            event_data={"reason": kind.replace("_", " "), "by": by},
        )
    except TransitionRejected as exc:
        raise ConflictError(
            f"task {task.id} is no longer blocked ({exc})",
            "`orchestra task get` shows it",
            api_hint=f"GET /v1/tasks/{task.id} shows it",
        ) from None
    publish_submit(broker, pending)  # the orchestrator carries it out, or plans again
    return pending


def _allow(state: StateStore, task: Task, tools: set[str]) -> None:
    for tool in sorted(tools):
        append_step(state, task.root_id, task.root_id, {"kind": "allow", "tool": tool}, {})


def _release(state: StateStore, broker: Broker, task: Task, decision: str) -> Task:
    try:
        queued = state.transition(
            task.id,
            Status.QUEUED,
            expect_status=[Status.BLOCKED],
            event_data={"reason": decision.rstrip("e") + "ed", "by": "operator"},
        )
    except TransitionRejected as exc:
        raise ConflictError(
            f"task {task.id} is no longer blocked ({exc})",
            "`orchestra task get` shows it",
            api_hint=f"GET /v1/tasks/{task.id} shows it",
        ) from None
    publish_run(broker, queued)
    return queued


# -- pause and resume ----------------------------------------------------------------
# A tree is paused while the last pause/resume step on its root is a pause. Its
# agents stop between steps (a running model turn finishes first) and park the task
# as blocked; the orchestrator dispatches none of its subtasks; resume puts what
# the pause parked back on its way.


def _mark(state: StateStore, root_id: str, kind: str) -> None:
    append_step(state, root_id, root_id, {"kind": kind}, {"kind": kind})


def is_paused(state: StateStore, root_id: str) -> bool:
    marks = [s["kind"] for s in state.steps(root_id) if s.get("kind") in ("pause", "resume")]
    return bool(marks) and marks[-1] == "pause"


class PauseWatch:
    """``is_paused`` for one tree, asked between every two steps of a loop: each ask
    reads only the root's steps written since the last (a root task's own transcript
    was read whole before every step: O(steps²) per task, ~25% of a tool-loop agent's
    CPU at 17 steps a task, profiled). Steps are numbered upwards and never rewritten:
    the count is the count seen plus the new ones. When it is not (a rollback restored
    another state), it reads them all again.

    A loop's own step writes also say whether the root changed (``record_step``'s
    ``root_seen=watch.seen``, its answer to ``wrote``): an ask right after a write
    that says nobody else wrote there needs no read at all."""

    def __init__(self, state: StateStore, root_id: str) -> None:
        self.state, self.root_id = state, root_id
        self._seen, self._last, self._paused = 0, -1, False
        self._fresh = False  # the last write said the root holds nothing unread

    @property
    def seen(self) -> int:
        """The root's step count as of the last look (a write's ``root_seen``)."""
        return self._seen

    def wrote(self, answer: int, own: int | None = None) -> None:
        """A step write's answer (``record_step(…, root_seen=self.seen)``); ``own``: the
        step's number when the loop's task is the root itself (it is one of the root's)."""
        self._fresh = answer == 1
        if self._fresh and own is not None:
            self._seen += 1
            self._last = max(self._last, own)

    def __call__(self) -> bool:
        if self._fresh:  # as of the write just made, nothing new on the root
            self._fresh = False
            return self._paused
        count, new = self.state.steps_after(self.root_id, self._last)
        if count != self._seen + len(new):  # one taken away, or one written below _last
            self._seen, self._last, self._paused = 0, -1, False
            count, new = self.state.steps_after(self.root_id, -1)
        for step in new:
            self._last = max(self._last, int(step["n"]))
            if step.get("kind") in ("pause", "resume"):
                self._paused = step["kind"] == "pause"
        self._seen = count
        return self._paused


def pause(state: StateStore, task: Task) -> Task:
    """Stop ``task``'s tree taking new steps; returns its root."""
    root = task if task.is_root else state.get_task(task.root_id)
    if root.status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED):
        raise ConflictError(f"task tree {root.id} has ended ({root.status})", "nothing to pause")
    if is_paused(state, root.id):
        raise ConflictError(
            f"task tree {root.id} is paused already",
            f"resume it: orchestra task resume {root.id}",
            api_hint=f"resume it: POST /v1/tasks/{root.id}/resume",
        )
    _mark(state, root.id, "pause")
    return root


def resume(state: StateStore, broker: Broker, task: Task) -> list[Task]:
    """Let a paused tree go on; returns the tasks put back on their way."""
    from orchestra_cli.broker.base import publish_submit

    root = task if task.is_root else state.get_task(task.root_id)
    if not is_paused(state, root.id):
        raise ConflictError(
            f"task tree {root.id} is not paused",
            "`orchestra inbox` lists paused trees",
            api_hint="GET /v1/inbox lists paused trees",
        )
    _mark(state, root.id, "resume")
    moved = []
    for t in state.tree(root.id):
        steps = state.steps(t.id) if t.status == Status.BLOCKED else []
        own = [s for s in steps if s.get("kind") not in TREE_MARKS]  # a lone root's marks too
        if own and own[-1].get("kind") == "paused":  # parked by the pause, not a question
            try:
                moved.append(_release(state, broker, t, "resume"))
            except UsageError:
                continue  # cancelled meanwhile
    if root.status == Status.WAITING:  # its subtasks not dispatched while paused
        publish_submit(broker, root)
    return moved
