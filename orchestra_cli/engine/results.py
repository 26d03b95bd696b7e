"""What the end of a task's run writes: its transition, its metrics line, the tree's
memory and the notice the orchestrator acts on (engine/agent.py runs the task)."""

from __future__ import annotations

import logging
import threading

from orchestra_cli import tracing
from orchestra_cli.backends import Backends
from orchestra_cli.engine.budget import MeteredProvider
from orchestra_cli.engine.loop import AwaitingApproval
from orchestra_cli.engine.retry import retry_or_fail
from orchestra_cli.engine.roles import RoleDefinition
from orchestra_cli.engine.steps import short
from orchestra_cli.engine.worker import Ack, Action
from orchestra_cli.errors import TransitionRejected
from orchestra_cli.llm.base import LLMResponse
from orchestra_cli.models import MSG_RESULT, Q_RESULTS, AgentRecord, Envelope, Task
from orchestra_cli.status import Status
from orchestra_cli.util import now

log = logging.getLogger("orchestra_cli.engine.agent")  # the agent's log, as before


class Results:
    """The outcomes of one agent's tasks; counts them on its registry record."""

    def __init__(
        self, backends: Backends, role: RoleDefinition, name: str, record: AgentRecord
    ) -> None:
        self.b = backends
        self.state = backends.state
        self.role = role
        self.name = name
        self.record = record
        self._counts = threading.Lock()  # slots end on many threads (handlers, settlements)

    def _count(self, *, failed: bool) -> None:
        with self._counts:
            if failed:
                self.record.failed += 1
            else:
                self.record.processed += 1

    def block(self, task: Task, waiting: AwaitingApproval | None) -> Action:
        """running → blocked: the calls wait for `orchestra task approve` / `reject`, or
        (``waiting`` None) the tree was paused and waits for `orchestra task resume`."""
        tools = [f"{c.name}({short(c.input)})" for c in waiting.calls] if waiting else ["resume"]
        hint = (
            f"orchestra task approve {task.id} (or reject --reason …)"
            if waiting
            else f"orchestra task resume {task.root_id}"
        )
        try:
            self.state.transition(
                task.id,
                Status.BLOCKED,
                expect_version=task.version,
                event_data={
                    "reason": "approval" if waiting else "paused",
                    "waits_for": tools,
                    "hint": hint,
                },
            )
        except TransitionRejected as exc:  # cancelled meanwhile, or taken over
            log.info("task %s not parked for approval: %s", task.id, exc)
        else:
            log.info("task %s waits for approval of %s", task.id, ", ".join(tools))
        return Ack()

    def charge(self, task: Task, metered: MeteredProvider) -> None:
        """Charge a deferred call now; its spend is in metrics.jsonl either way."""
        usage = metered.take_uncharged()
        if usage is None:
            return
        try:
            self.state.add_usage(task.id, usage)
        except Exception as exc:  # never let accounting turn an outcome into a redelivery
            log.warning("task %s: could not charge the last call's usage: %s", task.id, exc)

    def succeed(self, task: Task, response: LLMResponse, metered: MeteredProvider) -> Action:
        try:
            done = self.state.transition(
                task.id,
                Status.SUCCEEDED,
                expect_version=task.version,
                known=task,  # the result is built from it: no read-back
                add_usage=metered.uncharged,
                result=response.text,
                event_data={
                    "model": response.model,
                    "provider": response.provider,
                    "tokens": response.usage.total_tokens,
                    "cost_usd": response.usage.cost_usd,
                },
            )
        except TransitionRejected as exc:
            log.info("result of task %s discarded: %s", task.id, exc)
            self.charge(task, metered)  # the call was made: it counts
            return Ack()
        except BaseException:
            self.charge(task, metered)
            raise
        self._count(failed=False)
        line = {
            "kind": "task",
            "task_id": task.id,
            "root_id": task.root_id,
            "agent": self.name,
            "role": self.role.name,
            "status": "succeeded",
            "model": response.model,
            "duration_s": round((done.finished_at or now()) - (task.started_at or now()), 4),
            **done.usage.model_dump(),  # every call of this task, charged by the meter
        }
        metered.take_uncharged(also=line)  # charged by the transition; both lines at once
        if not task.is_root:  # the rest of its tree sees it (step_prompt.memory)
            self._remember(task, response)
        self.notify(done, "succeeded")
        return Ack()

    def _remember(self, task: Task, response: LLMResponse) -> None:
        self.b.journals.memory(self.role.name).write(
            {
                "agent": self.name,
                "root_id": task.root_id,
                "task_id": task.id,
                "title": task.title,
                "summary": response.text[:300],
            }
        )

    def _needs_notice(self, task: Task) -> bool:
        # The orchestrator acts on a success only to advance a parent: a root
        # task's success notice would be a message, a claim and an ack for nothing.
        return task.parent_id is not None or task.status != Status.SUCCEEDED

    @tracing.failing
    def fail(self, task: Task, error: str, *, retryable: bool = True) -> Action:
        """Apply the retry policy now: the task never waits in ``running`` for a notice."""
        log.warning("task %s attempt %d failed: %s", task.id, task.attempts, error)
        self._count(failed=True)
        after = retry_or_fail(self.b, task, error, retryable=retryable)
        if after.status == Status.FAILED:
            self.notify(after, "failed", error=after.error, retryable=False)  # for the parent
        return Ack()

    def notify(
        self, task: Task, outcome: str, error: str | None = None, *, retryable: bool = True
    ) -> None:
        if not self._needs_notice(task):
            return
        payload: dict[str, object] = {"outcome": outcome, "agent": self.name}
        if error:
            payload["error"] = error
        if not retryable:
            payload["retryable"] = False  # e.g. budget exceeded: a retry would only fail again
        env = Envelope(type=MSG_RESULT, task_id=task.id, attempt=task.attempts, payload=payload)
        self.b.broker.publish(Q_RESULTS, env, priority=task.priority)
