"""The orchestrator: plans submitted tasks, routes work, retries, aggregates parents.

Every handler is idempotent, because at-least-once delivery means any
message may arrive twice: state transitions are versioned, so a duplicate
finds the work already done and only re-publishes what may have been lost.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from orchestra_cli import __version__, tracing
from orchestra_cli.backends import Backends
from orchestra_cli.broker.base import Delivery, publish_run
from orchestra_cli.engine import blockers, plan_review
from orchestra_cli.engine.aggregator import Aggregator, ConcatAggregator
from orchestra_cli.engine.planner import Plan, Planner
from orchestra_cli.engine.retry import retry_or_fail
from orchestra_cli.engine.roles import RoleDefinition, known_capabilities
from orchestra_cli.engine.routing import AgentDirectory
from orchestra_cli.engine.worker import Ack, Action, ConsumerLoop, DeadLetter
from orchestra_cli.errors import NotFoundError, OrchestraError, TransitionRejected
from orchestra_cli.models import (
    MSG_RESULT,
    MSG_SUBMIT,
    Q_INTAKE,
    Q_RESULTS,
    AgentRecord,
    Envelope,
    Task,
)
from orchestra_cli.status import TERMINAL, Status
from orchestra_cli.util import new_id, now

log = logging.getLogger(__name__)

ORCHESTRATOR_ROLE = blockers.ORCHESTRATOR_ROLE


class Orchestrator:
    """Consumes intake and results; drives every task tree to a terminal state."""

    def __init__(
        self,
        backends: Backends,
        roles: dict[str, RoleDefinition],
        planner: Planner,
        *,
        name: str = "orchestrator",
        concurrency: int = 1,
        aggregator: Aggregator | None = None,
    ) -> None:
        self.b = backends
        self.state = backends.state
        self.broker = backends.broker
        self.roles = roles
        self.planner = planner
        self.aggregator = aggregator or ConcatAggregator()
        self.name = name
        self.loop = ConsumerLoop(
            self.broker, [Q_INTAKE, Q_RESULTS], self.handle, concurrency=concurrency, name=name
        )
        self.presence = AgentRecord(
            name=f"orchestrator-{socket.gethostname().split('.')[0]}-{os.getpid()}-{new_id()[-4:]}",
            role=ORCHESTRATOR_ROLE,
            capabilities=[],
            status="running",
            concurrency=concurrency,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
        )
        self.directory = AgentDirectory(self.state, backends.settings.agents.ttl_seconds)
        from orchestra_cli.engine.recovery import DeadAgentWatch

        self.watch = DeadAgentWatch(backends)  # takeovers; and whether heartbeats are fresh

    def run(self, stop: threading.Event) -> None:
        log.info("orchestrator %s started", self.name)
        loops = (
            (self._sweep_loop, "sweep"),
            (self._presence_loop, "presence"),
            (self._takeover_loop, "takeover"),
        )
        for target, label in loops:
            threading.Thread(
                target=target, args=(stop,), name=f"{self.name}-{label}", daemon=True
            ).start()
        try:
            self.loop.run(stop)
        finally:
            self.presence.status = "stopped"
            self._save_presence()
        log.info("orchestrator %s stopped", self.name)

    def _save_presence(self) -> bool:
        """Refresh the registry record; True when an operator asked this orchestrator to stop."""
        self.presence.heartbeat_at = now()
        self.presence.load = self.loop.inflight
        try:
            return self.state.save_agent(self.presence)
        except Exception:  # a missed beat is survivable; the next one retries
            log.exception("orchestrator %s: heartbeat failed", self.name)
            return False

    def _presence_loop(self, stop: threading.Event) -> None:
        """Heartbeat in the registry (role ``orchestrator``), so health can tell one runs."""
        interval = self.b.settings.agents.heartbeat_seconds
        while not stop.is_set():
            if self._save_presence() and not stop.is_set():
                log.info("orchestrator %s: stop requested; draining", self.presence.name)
                stop.set()
            stop.wait(interval)

    def _sweep_loop(self, stop: threading.Event) -> None:
        """Every ``tasks.recovery_interval_seconds``: put stuck work back on its way."""
        from orchestra_cli.engine.recovery import locked_sweep

        interval = self.b.settings.tasks.recovery_interval_seconds
        if interval <= 0:
            return
        while not stop.wait(interval):
            try:
                # just after a state outage every heartbeat is stale: orphans wait a round
                locked_sweep(self.b, ttl=interval * 2, orphans=self.watch.settled())
            except Exception:  # the next sweep tries again; it must never stop the loop
                log.exception("recovery sweep failed")

    def _takeover_loop(self, stop: threading.Event) -> None:
        """Take over a dead agent's running tasks within its TTL (plus a poll)."""
        from orchestra_cli.engine.recovery import DEAD_AGENT_POLL_SECONDS

        if self.b.settings.tasks.recovery_interval_seconds <= 0:
            return  # recovery switched off: no takeovers either
        while not stop.wait(DEAD_AGENT_POLL_SECONDS):
            try:
                self.watch.poll()
            except OrchestraError as exc:  # an outage: the next poll tries again
                log.debug("dead-agent watch: %s", exc)
            except Exception:  # it must never stop the loop
                log.exception("dead-agent watch failed")

    # -- dispatch on message type -----------------------------------------
    def handle(self, delivery: Delivery) -> Action:
        env = delivery.envelope
        try:
            redelivered = delivery.delivery_count > 1
            if env.type == MSG_SUBMIT:
                self.on_submit(env.task_id, redelivered=redelivered)
            elif env.type == MSG_RESULT:
                self.on_result(env, redelivered=redelivered)
            else:
                return DeadLetter(f"{env.type} does not belong on {delivery.queue}")
        except NotFoundError:
            return DeadLetter(f"task {env.task_id} does not exist")
        return Ack()

    # -- intake ------------------------------------------------------------
    def capabilities(self) -> set[str]:
        return known_capabilities(self.roles, self.directory.agents())

    def on_submit(self, task_id: str, *, redelivered: bool = False) -> None:
        task = self.state.get_task(task_id)
        if task.status == Status.PENDING:
            if task.parent_id is not None:
                self._dispatch_if_ready(task)
                return
            self._plan(task)
        elif task.status == Status.WAITING:
            # a redelivery: finish what a crash interrupted
            self._advance_children(task.id, republish=redelivered)
        elif task.status == Status.QUEUED:
            publish_run(self.broker, task)

    @tracing.traced(tracing.plan_span)
    def _plan(self, task: Task) -> None:
        caps = self.capabilities()
        if plan_review.wants_review(task, self.b.settings.tasks.review_plans):
            reviewed = self._reviewed_plan(task, caps)
            if reviewed is None:
                return  # it waits for a person now
            plan = reviewed
        else:
            plan = self.planner.plan(task, caps)
        self._log_decision(task, plan)
        if not plan.decomposed:
            # the route decision rides on the queued event: one state write, not two
            self._dispatch(task, plan.capability or "", plan.why())
            return
        children: list[Task] = []
        for step in plan.subtasks:
            children.append(
                Task(
                    root_id=task.root_id,
                    parent_id=task.id,
                    title=step.title,
                    input=step.input,
                    capability=step.capability,
                    priority=task.priority,
                    timeout=task.timeout,
                    timeout_set=task.timeout_set,
                    max_attempts=task.max_attempts,
                    labels=dict(task.labels),
                    depends_on=[children[i].id for i in step.depends_on],
                )
            )
        try:
            self.state.create_subtasks(task.id, children, plan.reason)
        except TransitionRejected:
            return  # another orchestrator planned it first
        self._advance_children(task.id)

    def _reviewed_plan(self, task: Task, caps: set[str]) -> Plan | None:
        """The approved plan, or None after parking a new one for review (plan_review.py)."""
        recorded, status = plan_review.latest(self.state, task.id)
        if status == "approved" and recorded is not None:
            return plan_review.plan_from(recorded["plan"])
        reasons = plan_review.rejections(self.state, task.id)
        if len(reasons) >= plan_review.MAX_PLAN_REJECTIONS:
            self._fail_root(task, f"its plan was rejected {len(reasons)} times: {reasons[-1]}")
            return None
        asked = task
        if reasons:  # plan again, with what the person said
            notes = "\n".join(f"- {r}" for r in reasons)
            asked = task.model_copy(
                update={"input": f"{task.input}\n\n# A person rejected earlier plans\n{notes}"}
            )
        plan = self.planner.plan(asked, caps)
        self.b.journals.decisions.write({**plan.record(task), "review": "waiting"})
        plan_review.record(self.state, task, "plan", plan=plan_review.plan_json(plan))
        try:
            self.state.transition(
                task.id,
                Status.BLOCKED,
                expect_status=[Status.PENDING],
                event_data={
                    "reason": "plan review",
                    "waits_for": [f"plan by {plan.planner}: {len(plan.subtasks) or 1} step(s)"],
                    "hint": f"orchestra task plan {task.id}; then approve or reject --reason",
                },
            )
        except TransitionRejected:
            pass  # planned by another orchestrator meanwhile
        return None

    def _fail_root(self, task: Task, error: str) -> None:
        try:
            self.state.transition(
                task.id, Status.FAILED, expect_status=[Status.PENDING], error=error
            )
        except TransitionRejected:
            pass

    def _log_decision(self, task: Task, plan: Plan) -> None:
        self.b.journals.decisions.write(plan.record(task))
        if not plan.decomposed:
            return  # logged with the queued transition (see ``_dispatch``)
        self.state.append_event(
            task.id,
            task.root_id,
            "planned",
            {
                "planner": plan.planner,
                "why": plan.reason,
                "subtasks": len(plan.subtasks),
                "capability": plan.capability,
            },
        )

    def _dispatch(
        self, task: Task, capability: str, decision: dict[str, str] | None = None
    ) -> None:
        """pending → queued on ``work.<capability>``; waits in the queue if no agent is live.

        ``decision`` (planner, why) goes into the queued event's data.
        """
        data, live = self.directory.queued_event(capability, decision)
        if not live:
            self.directory.note_no_agent(task, capability)
        try:
            task = self.state.transition(
                task.id,
                Status.QUEUED,
                expect_status=[Status.PENDING],
                capability=capability,
                event_data=data,
            )
        except TransitionRejected:
            return  # dispatched by someone else meanwhile
        publish_run(self.broker, task)

    def _dispatch_if_ready(self, task: Task) -> None:
        deps = [self.state.get_task(d) for d in task.depends_on]
        broken = [d for d in deps if d.status in (Status.FAILED, Status.CANCELLED)]
        if broken:
            try:
                self.state.transition(
                    task.id,
                    Status.CANCELLED,
                    expect_status=[Status.PENDING],
                    error=f"dependency {broken[0].title!r} {broken[0].status}",
                )
            except TransitionRejected:
                pass
            return
        if all(d.status == Status.SUCCEEDED for d in deps):
            from orchestra_cli.engine.approvals import is_paused

            if is_paused(self.state, task.root_id):  # `task resume` dispatches it
                return
            self._dispatch(task, task.capability or "")

    # -- results -----------------------------------------------------------
    def on_result(self, env: Envelope, *, redelivered: bool = False) -> None:
        task = self.state.get_task(env.task_id)
        outcome = env.payload.get("outcome")
        if outcome == "failed" and task.attempts == env.attempt:
            if task.status == Status.RUNNING:
                error = str(env.payload.get("error") or "failed")
                retryable = env.payload.get("retryable", True) is not False
                task = retry_or_fail(self.b, task, error, retryable=retryable)
            elif task.status == Status.QUEUED and redelivered:
                publish_run(self.broker, task)  # the retry's publish may have been lost in a crash
        if task.status in TERMINAL and task.parent_id is not None:
            self._advance_children(task.parent_id, republish=redelivered)

    def _advance_children(self, parent_id: str, *, republish: bool = False) -> None:
        """Dispatch subtasks whose dependencies are met; aggregate when all are done.

        With ``republish`` (handling a redelivered message) queued subtasks are
        published again, in case a crash came between their transition and
        their publish; agents drop the duplicate.
        """
        parent = self.state.get_task(parent_id)
        if parent.status != Status.WAITING:
            if republish and parent.status in TERMINAL and parent.parent_id is not None:
                # a crash may have come between aggregating it and advancing its parent
                self._advance_children(parent.parent_id, republish=True)
            return
        children = self.state.children(parent_id)
        for child in children:
            if child.status == Status.PENDING:
                self._dispatch_if_ready(child)
            elif child.status == Status.QUEUED and republish:
                publish_run(self.broker, child)
        children = self.state.children(parent_id)
        if all(c.status in TERMINAL for c in children):
            self._aggregate(parent, children)

    def _reopened_meanwhile(self, failed: Task) -> bool:
        """A subtask retried (`task retry`) between the read of the children and the
        parent's failure: the parent waits again (or the retry has reopened it)."""
        if all(c.status in TERMINAL for c in self.state.children(failed.id)):
            return False
        try:
            self.state.transition(
                failed.id,
                Status.WAITING,
                expect_version=failed.version,
                error=None,
                event_data={"by": "retry", "reason": "a subtask was retried meanwhile"},
            )
        except TransitionRejected:
            pass  # the operator's retry reopened it first
        return True

    @tracing.traced(tracing.aggregate_span)
    def _aggregate(self, parent: Task, children: list[Task]) -> None:
        failed = [c for c in children if c.status != Status.SUCCEEDED]
        try:
            if failed:
                reasons = "; ".join(
                    f"{c.title}: {c.status} ({c.error or 'no detail'})" for c in failed
                )
                done = self.state.transition(
                    parent.id,
                    Status.FAILED,
                    expect_status=[Status.WAITING],
                    error=f"{len(failed)} of {len(children)} subtasks did not succeed: {reasons}",
                )
            else:
                done = self.state.transition(
                    parent.id,
                    Status.SUCCEEDED,
                    expect_status=[Status.WAITING],
                    result=self.aggregator.aggregate(parent, children),
                )
        except TransitionRejected:
            return  # aggregated by another orchestrator thread
        if failed and self._reopened_meanwhile(done):
            return
        self.b.journals.decisions.write(
            {
                "decision": "aggregate",
                "task_id": parent.id,
                "root_id": parent.root_id,
                "why": f"all {len(children)} subtasks finished",
                "outcome": done.status.value,
                "alternatives": [],
            }
        )
        if done.parent_id is not None:
            self._advance_children(done.parent_id)
