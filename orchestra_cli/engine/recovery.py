"""Recovery of stuck or orphaned work: the orchestrator's periodic sweep and `orchestra recover`.

Redelivery covers the common faults (a killed agent's message comes back).
The sweep is the safety net for the rest: a task left ``running`` by an agent
that is dead or no longer working on it, a ``pending`` task whose intake
message was lost between store and publish, and a parent whose subtasks all
ended without it being aggregated. Every action is idempotent and versioned,
so a sweep racing the normal flow, or another orchestrator's sweep, is harmless.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from orchestra_cli import metrics
from orchestra_cli.backends import Backends
from orchestra_cli.broker.base import publish_run, publish_submit
from orchestra_cli.engine.retry import retry_or_fail
from orchestra_cli.errors import NotFoundError, OrchestraError, TransitionRejected
from orchestra_cli.models import (
    MSG_RESULT,
    Q_RESULTS,
    AgentRecord,
    Envelope,
    Task,
    work_queue,
)
from orchestra_cli.status import TERMINAL, Status
from orchestra_cli.util import now

log = logging.getLogger(__name__)

SCAN_LIMIT = 10_000
DEAD_AGENT_POLL_SECONDS = 0.5  # how soon after its TTL a dead agent's tasks are taken over
LOCK_NAME = "recovery-sweep"


@dataclass
class Finding:
    task_id: str
    status: str
    action: str  # requeue | republish | resubmit | reaggregate
    reason: str
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recovery:
    """Finds stuck work and puts it back on its way."""

    def __init__(self, backends: Backends, *, stale_seconds: float | None = None) -> None:
        self.b = backends
        s = backends.settings
        self.ttl = s.agents.ttl_seconds
        self.heartbeat = s.agents.heartbeat_seconds
        # pending/waiting work older than this with nothing moving is considered stuck
        self.stale = (
            stale_seconds if stale_seconds is not None else max(60.0, 3 * s.broker.lease_seconds)
        )

    def _orphan_reason(self, task: Task, agents: dict[str, AgentRecord], at: float) -> str | None:
        age = at - task.updated_at
        owner = agents.get(task.agent or "")
        if owner is None or not owner.is_alive(self.ttl):
            if age > self.ttl + self.heartbeat:
                return f"agent {task.agent} is gone; running for {age:.0f}s"
            return None
        if task.id not in owner.current and age > 3 * self.heartbeat + 1:
            return f"agent {task.agent} is alive but not working on it"
        return None

    def _awaits_dependency(self, task: Task, ended: dict[str, bool]) -> bool:
        """A subtask whose dependencies have not all ended is waiting, not stuck
        (the orchestrator dispatches it when the last of them ends). ``ended``
        caches what one scan has read."""
        for dep in task.depends_on:
            if dep not in ended:
                try:
                    ended[dep] = self.b.state.get_task(dep).status in TERMINAL
                except NotFoundError:
                    ended[dep] = True
            if not ended[dep]:
                return True
        return False

    def scan(self, *, orphans: bool = True) -> list[Finding]:
        """What a sweep would do, without doing it. ``orphans=False`` leaves running
        tasks alone (just after a state outage every heartbeat looks stale)."""
        state = self.b.state
        at = now()
        agents = {a.name: a for a in state.list_agents()}
        findings = []
        running = (
            state.list_tasks(status=[Status.RUNNING.value], limit=SCAN_LIMIT) if orphans else []
        )
        for task in running:
            reason = self._orphan_reason(task, agents, at)
            if reason:
                findings.append(Finding(task.id, task.status, "requeue", reason))
        ended: dict[str, bool] = {}
        paused: dict[str, bool] = {}  # a paused tree's pending work waits for `task resume`
        for task in state.list_tasks(status=[Status.PENDING.value], limit=SCAN_LIMIT):
            if task.root_id not in paused:
                from orchestra_cli.engine.approvals import is_paused

                paused[task.root_id] = is_paused(state, task.root_id)
            if paused[task.root_id]:
                continue
            if at - task.updated_at > self.stale and not self._awaits_dependency(task, ended):
                findings.append(
                    Finding(
                        task.id, task.status, "resubmit", f"pending for {at - task.updated_at:.0f}s"
                    )
                )
        for task in state.list_tasks(status=[Status.WAITING.value], limit=SCAN_LIMIT):
            children = state.children(task.id)
            if (
                children
                and all(c.status in TERMINAL for c in children)
                and (at - max(c.updated_at for c in children) > self.stale)
            ):
                findings.append(
                    Finding(
                        task.id,
                        task.status,
                        "reaggregate",
                        "every subtask ended but the parent was not aggregated",
                    )
                )
        findings.extend(self.queued_without_message(at))
        return findings

    def queued_without_message(self, at: float | None = None) -> list[Finding]:
        """Stale queued tasks beyond the messages on their queue (a message was lost).

        Tasks legitimately wait in their queue while no agent is up, so only the
        deficit against the queue's depth is republished — never one per sweep.
        """
        at = now() if at is None else at
        queued = self.b.state.list_tasks(status=[Status.QUEUED.value], limit=SCAN_LIMIT)
        stale = [t for t in queued if at - (t.queued_at or t.updated_at) > self.stale]
        if not stale:
            return []
        caps = sorted({t.capability or "" for t in stale})
        info = self.b.broker.health([work_queue(c) for c in caps])
        if not info.get("ok"):
            return []
        findings = []
        for cap in caps:
            depth = info.get("queues", {}).get(work_queue(cap), {}).get("messages", 0)
            deficit = sum(1 for t in queued if t.capability == cap) - depth
            oldest = sorted((t for t in stale if t.capability == cap), key=lambda t: t.updated_at)
            for task in oldest[: max(0, deficit)]:
                findings.append(
                    Finding(
                        task.id,
                        task.status,
                        "republish",
                        f"queued for {at - task.updated_at:.0f}s with no message "
                        f"on {work_queue(cap)}",
                    )
                )
        return findings

    def sweep(self, *, dry_run: bool = False, orphans: bool = True) -> list[Finding]:
        """Scan, then (unless ``dry_run``) apply each finding; returns them."""
        findings = self.scan(orphans=orphans)
        if not dry_run:
            self.apply(findings)
        return findings

    def apply(self, findings: list[Finding]) -> None:
        """Act on each finding (``done`` says whether it was still needed)."""
        for finding in findings:
            try:
                finding.done = self._apply(finding)
            except TransitionRejected:
                finding.done = False  # it moved on by itself meanwhile
            except OrchestraError as exc:  # one failure must not stop the rest of the sweep
                log.warning("could not recover task %s: %s", finding.task_id, exc)
                finding.done = False
            if finding.done:
                log.warning(
                    "recovered task %s (%s): %s", finding.task_id, finding.action, finding.reason
                )
                self.b.journals.decisions.write(
                    {
                        "decision": "recover",
                        "task_id": finding.task_id,
                        "why": finding.reason,
                        "action": finding.action,
                        "alternatives": ["leave it (it would never end)"],
                    }
                )
        metrics.recovered(findings)

    def _apply(self, finding: Finding) -> bool:
        state, broker = self.b.state, self.b.broker
        task = state.get_task(finding.task_id)
        if task.status != finding.status:
            return False
        if finding.action == "requeue" and task.attempts >= task.max_attempts:
            retry_or_fail(self.b, task, f"{finding.reason} on the last attempt")  # fails it
        elif finding.action == "requeue":
            task = state.transition(
                task.id,
                Status.QUEUED,
                expect_version=task.version,
                event_data={
                    "reason": "recovered",
                    "why": finding.reason,
                    "previous_agent": task.agent,
                },
            )
            publish_run(broker, task)
        elif finding.action == "republish":
            publish_run(broker, task)
        elif finding.action == "resubmit":
            publish_submit(broker, task)
        else:
            child = state.children(task.id)[-1]
            broker.publish(
                Q_RESULTS,
                Envelope(
                    type=MSG_RESULT,
                    task_id=child.id,
                    attempt=child.attempts,
                    payload={"outcome": "recovered"},
                ),
            )
        return True


class DeadAgentWatch:
    """Takes over a dead agent's running tasks as soon as its heartbeat expires.

    A killed agent's messages come back by themselves, but one that hangs
    (SIGSTOP, a partition) keeps its connection, and its messages, until the
    broker's heartbeat gives up; the periodic sweep then found its tasks 12-27 s
    late. Polled every DEAD_AGENT_POLL_SECONDS: an agent seen alive that is now
    past ``agents.ttl_seconds`` has its running tasks queued again at once.
    After a failed read (the state store unreachable) nobody counts as seen
    alive, so heartbeats that went stale in an outage take no live agent's work.

    A hung agent still holds its broker connection, and RabbitMQ hands a message
    to any consumer with room under its prefetch — the hung one included — so a
    taken-over task's message goes out once more per slot the dead agent had
    free: one copy at least reaches a live agent (the others find the task
    running elsewhere, or done, and are settled as any duplicate is).
    """

    def __init__(self, backends: Backends) -> None:
        self.b = backends
        self.ttl = backends.settings.agents.ttl_seconds
        self._alive: set[str] = set()
        self._failed_at: float | None = None  # monotonic time of the last failed read
        # how long after an outage heartbeats may still be stale: a TTL and two beats
        self.settle_seconds = self.ttl + 2 * backends.settings.agents.heartbeat_seconds

    def settled(self) -> bool:
        """No failed read for ``settle_seconds``: heartbeats can be believed again (the
        sweep leaves running tasks alone until then)."""
        failed = self._failed_at
        return failed is None or time.monotonic() - failed > self.settle_seconds

    def poll(self) -> list[Finding]:
        """One look at the registry; the takeovers it made."""
        try:
            agents = self.b.state.list_agents()
        except OrchestraError:
            self._alive = set()
            self._failed_at = time.monotonic()
            raise
        alive = {a.name for a in agents if a.is_alive(self.ttl)}
        expired, self._alive = self._alive - alive, alive
        spare = {a.name: max(0, a.concurrency - len(a.current)) for a in agents}
        taken = []
        for name in sorted(expired):
            running = self.b.state.list_tasks(
                status=[Status.RUNNING.value], agent=name, limit=SCAN_LIMIT
            )
            why = f"agent {name} stopped heartbeating (agents.ttl_seconds={self.ttl:g})"
            findings = [Finding(t.id, t.status, "requeue", why) for t in running if t.agent == name]
            Recovery(self.b).apply(findings)
            for finding in (f for f in findings if f.done):
                task = self.b.state.get_task(finding.task_id)
                for _ in range(spare.get(name, 0)):  # the copies a hung consumer may absorb
                    publish_run(self.b.broker, task)
                taken.append(finding)
        return taken


def prune_agents(backends: Backends) -> list[str]:
    """Forget agents (and orchestrators) silent for ``agents.prune_after_seconds``."""
    cutoff = now() - backends.settings.agents.prune_after_seconds
    gone = [a.name for a in backends.state.list_agents() if a.heartbeat_at < cutoff]
    for name in gone:
        backends.state.delete_agent(name)
        log.info("pruned agent %s from the registry", name)
    return gone


def locked_sweep(backends: Backends, ttl: float, *, orphans: bool = True) -> list[Finding] | None:
    """One sweep (and registry pruning) under the store's lock.

    None when another orchestrator holds the lock and is sweeping right now.
    """
    lock = backends.state.lock(LOCK_NAME, ttl)
    if not lock.acquire():
        return None
    try:
        findings = Recovery(backends).sweep(orphans=orphans)
        prune_agents(backends)
        return findings
    finally:
        lock.release()
