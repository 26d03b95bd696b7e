"""Delegation: agent-to-agent calls inside one task tree (``delegate``, ``spawn``, ``wait``).

A role that lists them among its ``tools`` may hand work to another capability:

- ``delegate(capability, task)`` creates a subtask of the running task in the
  same tree, routed straight to that capability's queue, and waits for its
  result (a synchronous call);
- ``spawn(capability, task)`` does the same without waiting and returns the
  subtask's id; ``wait(task_ids)`` waits for spawned subtasks.

Durable: a subtask's idempotency key is the parent's id and the model's call
id, so a parent resumed after its agent died finds the same child instead of
creating another (these calls are idempotent). Delegated work shows in the
tree, spends the tree's budget, and is bounded in depth
(``agents.max_delegation_depth``). The waiting parent keeps its agent slot:
a child of the parent's own capability needs a second slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestra_cli.backends import Backends
from orchestra_cli.blocking import waiting
from orchestra_cli.broker.base import publish_run
from orchestra_cli.engine.loop import ToolRunner
from orchestra_cli.engine.routing import AgentDirectory
from orchestra_cli.errors import TaskCancelled
from orchestra_cli.llm.base import ToolCall, ToolSpec
from orchestra_cli.models import Task
from orchestra_cli.state.base import Create
from orchestra_cli.status import Status
from orchestra_cli.tools.config import ENGINE_TOOLS

__all__ = ["ENGINE_TOOLS", "DelegatingTools"]

WAIT_STEP_SECONDS = 1.0
RESULT_CHARS = 30_000


class _Out:
    """A tool result (the shape ``tools.base.ToolOutput`` has)."""

    def __init__(self, content: str, is_error: bool = False) -> None:
        self.content = content
        self.is_error = is_error


def _work_schema(capabilities: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "capability": {"type": "string", "enum": capabilities},
            "task": {"type": "string", "description": "what the other agent must do, in full"},
            "title": {"type": "string", "description": "a short title for the subtask"},
        },
        "required": ["capability", "task"],
        "additionalProperties": False,
    }


def specs(capabilities: list[str]) -> dict[str, ToolSpec]:
    return {
        "delegate": ToolSpec(
            "delegate",
            "Hand a piece of work to an agent with another capability in this task tree and "
            "wait for its result. Use it for work outside your own role.",
            _work_schema(capabilities),
        ),
        "spawn": ToolSpec(
            "spawn",
            "Start a piece of work on an agent with another capability without waiting; "
            "returns its task id for wait. Start several, then wait for them together.",
            _work_schema(capabilities),
        ),
        "wait": ToolSpec(
            "wait",
            "Wait for subtasks started with spawn and return their results.",
            {
                "type": "object",
                "properties": {"task_ids": {"type": "array", "items": {"type": "string"}}},
                "required": ["task_ids"],
                "additionalProperties": False,
            },
        ),
    }


def depth_of(backends: Backends, task: Task) -> int:
    """How many parents ``task`` has (a root: 0)."""
    depth, current = 0, task
    while current.parent_id is not None:
        depth += 1
        current = backends.state.get_task(current.parent_id)
    return depth


class DelegatingTools:
    """A role's toolbox with ``delegate`` / ``spawn`` / ``wait`` beside it, for one task."""

    def __init__(
        self,
        backends: Backends,
        inner: ToolRunner,
        task: Task,
        engine_tools: Sequence[str],
        capabilities: list[str],
        *,
        max_depth: int,
    ) -> None:
        self.b = backends
        self.inner = inner
        self.task = task
        self.directory = AgentDirectory(backends.state, backends.settings.agents.ttl_seconds)
        allowed = depth_of(backends, task) < max_depth and bool(capabilities)
        every = specs(capabilities)
        self.engine = {name: every[name] for name in engine_tools if allowed}

    # -- what the loop asks ----------------------------------------------------
    def specs(self) -> list[ToolSpec]:
        return [*self.inner.specs(), *self.engine.values()]

    def idempotent(self, name: str) -> bool:
        return True if name in self.engine else self.inner.idempotent(name)

    def context(self, workspace: Path, *, cancel: Any = None, deadline: float | None = None) -> Any:
        return self.inner.context(workspace, cancel=cancel, deadline=deadline)

    def decide(self, name: str, input: Any = None, ctx: Any = None) -> Any:
        if name in self.engine:  # the role's own rules, as for any tool it lists
            return self.inner.permissions.decide(name, None).decision  # type: ignore[attr-defined]
        return self.inner.decide(name, input, ctx)

    def run(self, calls: Sequence[ToolCall], ctx: Any, *, approved: Any = ()) -> list[Any]:
        outputs: dict[int, Any] = {}
        others = [(i, c) for i, c in enumerate(calls) if c.name not in self.engine]
        if others:
            done = self.inner.run([c for _, c in others], ctx, approved=approved)
            outputs.update({i: out for (i, _), out in zip(others, done, strict=True)})
        for i, call in enumerate(calls):
            if call.name in self.engine:
                outputs[i] = self._engine_call(call, ctx)
        return [outputs[i] for i in range(len(calls))]

    # -- the engine's tools ----------------------------------------------------------
    def _engine_call(self, call: ToolCall, ctx: Any) -> _Out:
        data = call.input if isinstance(call.input, dict) else {}
        if call.name == "wait":
            ids = data.get("task_ids")
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                return _Out("wait needs task_ids: a list of ids that spawn returned", True)
            return self._wait_all(ids, ctx)
        capability, text = data.get("capability"), data.get("task")
        if not isinstance(capability, str) or not isinstance(text, str) or not text.strip():
            return _Out(f"{call.name} needs a capability and the task's text", True)
        child = self._child(call, capability, text, str(data.get("title") or ""))
        if call.name == "spawn":
            return _Out(f"started subtask {child.id} ({capability}); wait for it with wait")
        return self._wait_all([child.id], ctx)

    def _child(self, call: ToolCall, capability: str, text: str, title: str) -> Task:
        parent = self.task
        child = Task(
            root_id=parent.root_id,
            parent_id=parent.id,
            title=(title or text.splitlines()[0])[:80],
            input=text,
            capability=capability,
            priority=parent.priority,
            timeout=parent.timeout,
            timeout_set=parent.timeout_set,
            max_attempts=parent.max_attempts,
            labels={**parent.labels, "delegated_by": parent.id},
            idempotency_key=f"delegate:{parent.id}:{call.id}",
        )
        why = {"planner": "delegate", "why": f"delegated by {parent.id} ({call.name})"}
        data, live = self.directory.queued_event(capability, why)
        stored, created = self.b.state.create_task(child, Create(dispatch=data))
        if created or stored.status == Status.QUEUED:  # a resumed parent: send it again, safely
            publish_run(self.b.broker, stored)
        if created and not live:
            self.directory.note_no_agent(stored, capability)
        return stored

    def _wait_all(self, ids: list[str], ctx: Any) -> _Out:
        parts: list[str] = []
        failed = False
        for task_id in ids:
            try:
                child = self.b.state.get_task(task_id)
            except Exception:
                return _Out(f"no subtask {task_id}: wait takes the ids spawn returned", True)
            if child.parent_id != self.task.id:
                return _Out(f"task {task_id} is not a subtask of this task", True)
            done = self._wait_one(child, ctx)
            if done.status == Status.SUCCEEDED:
                parts.append(f"## {done.title} ({done.capability}, {done.id})\n{done.result}")
            else:
                failed = True
                parts.append(f"## {done.title} ({done.id}) {done.status}: {done.error}")
        content = "\n\n".join(parts)
        if len(content) > RESULT_CHARS:
            content = content[:RESULT_CHARS] + "\n[truncated]"
        return _Out(content, failed)

    def _wait_one(self, child: Task, ctx: Any) -> Task:
        # the task's own time-out sets ``cancel`` (the agent's deadline timer)
        cancel = getattr(ctx, "cancel", None)
        with waiting():  # for another agent: this thread is not the agent's to hold
            while True:
                if cancel is not None and cancel.is_set():
                    raise TaskCancelled("cancelled while waiting for a delegated subtask")
                ended = self.b.state.wait_ended(child.id, WAIT_STEP_SECONDS)
                if ended is not None:
                    return ended
