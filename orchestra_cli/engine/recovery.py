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

    def scan(self) -> list[Finding]:
        """What a sweep would do, without doing it."""
        state = self.b.state
        at = now()
        agents = {a.name: a for a in state.list_agents()}
        findings = []
        for task in state.list_tasks(status=[Status.RUNNING.value], limit=SCAN_LIMIT):
            reason = self._orphan_reason(task, agents, at)
            if reason:
                findings.append(Finding(task.id, task.status, "requeue", reason))
        ended: dict[str, bool] = {}
        for task in state.list_tasks(status=[Status.PENDING.value], limit=SCAN_LIMIT):
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

    def sweep(self, *, dry_run: bool = False) -> list[Finding]:
        """Scan, then (unless ``dry_run``) apply each finding; returns them."""
        findings = self.scan()
        if dry_run:
            return findings
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
        return findings

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


def prune_agents(backends: Backends) -> list[str]:
    """Forget agents (and orchestrators) silent for ``agents.prune_after_seconds``."""
    cutoff = now() - backends.settings.agents.prune_after_seconds
    gone = [a.name for a in backends.state.list_agents() if a.heartbeat_at < cutoff]
    for name in gone:
        backends.state.delete_agent(name)
        log.info("pruned agent %s from the registry", name)
    return gone


def locked_sweep(backends: Backends, ttl: float) -> list[Finding] | None:
    """One sweep (and registry pruning) under the store's lock when it has one (Redis).

    None when another orchestrator holds the lock and is sweeping right now.
    """
    make_lock = getattr(backends.state, "lock", None)
    lock = make_lock(LOCK_NAME, ttl) if make_lock is not None else None
    if lock is not None and not lock.acquire():
        return None
    try:
        findings = Recovery(backends).sweep()
        prune_agents(backends)
        return findings
    finally:
        if lock is not None:
            lock.release()
