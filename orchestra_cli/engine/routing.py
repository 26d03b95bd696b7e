"""Routing a leaf task to its capability's work queue: one path for every dispatcher.

Both the orchestrator (after planning) and ``TaskService.submit`` (a task
whose capability the submitter chose needs no plan) queue work through here,
so the queued event, the "no live agent" warning and the registry view they
rest on are the same whoever routes.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from orchestra_cli.models import AgentRecord, Task, work_queue

log = logging.getLogger(__name__)

# The registry is read for routing hints on every dispatch; a view this old is
# fine (liveness itself is judged on a heartbeat TTL of seconds), and a miss
# always reads it afresh, so a just-started agent is seen at once.
AGENTS_CACHE_SECONDS = 1.0


class _Registry(Protocol):
    def list_agents(self) -> list[AgentRecord]: ...

    def append_event(
        self, task_id: str, root_id: str, type: str, data: dict[str, Any] | None = None
    ) -> None: ...


class AgentDirectory:
    """A cached view of the agent registry: who is live for a capability."""

    def __init__(self, state: _Registry, ttl_seconds: float) -> None:
        self.state = state
        self.ttl = ttl_seconds
        self._cache: tuple[float, list[AgentRecord]] = (-AGENTS_CACHE_SECONDS, [])

    def agents(self, *, fresh: bool = False) -> list[AgentRecord]:
        """The registry, read at most once per ``AGENTS_CACHE_SECONDS`` unless ``fresh``."""
        read_at, agents = self._cache
        if fresh or time.monotonic() - read_at > AGENTS_CACHE_SECONDS:
            agents = self.state.list_agents()
            self._cache = (time.monotonic(), agents)
        return agents

    def live_for(self, capability: str) -> list[str]:
        """Live agents with ``capability``; "none" is only ever said after a fresh read."""
        for fresh in (False, True):
            names = [
                a.name
                for a in self.agents(fresh=fresh)
                if capability in a.capabilities and a.is_alive(self.ttl)
            ]
            if names:
                return names
        return []

    def queued_event(
        self, capability: str, decision: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], bool]:
        """The queued event's data for a route to ``capability``, and whether any agent is live.

        ``decision`` (planner, why) rides on the queued event: one state write, not two.
        """
        live = self.live_for(capability)
        data = {"queue": work_queue(capability), "live_agents": len(live), **(decision or {})}
        return data, bool(live)

    def note_no_agent(self, task: Task, capability: str) -> None:
        """Say, in the log and the task's events, that its work waits for an agent."""
        log.warning(
            "no live agent for capability %s; task %s waits in its queue", capability, task.id
        )
        self.state.append_event(
            task.id,
            task.root_id,
            "no_agent",
            {
                "capability": capability,
                "hint": f"start one: orchestra agent start <role with {capability}>",
            },
        )
