"""The JSON shapes of tasks, events and agents: what `--json` prints and the API returns.

One module both front ends import (cli/ and api/), so a field means the same in
`orchestra task get --json` and `GET /v1/tasks/ID`; neither renders anything else here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestra_cli.util import iso, now

if TYPE_CHECKING:
    from orchestra_cli.models import AgentRecord, Event, Task


def task_json(task: Task) -> dict[str, Any]:
    data = task.model_dump(mode="json")
    data["duration_s"] = round(task.duration, 3) if task.duration is not None else None
    for key in ("created_at", "updated_at", "queued_at", "started_at", "finished_at"):
        data[key] = iso(data[key])
    return data


def event_json(event: Event) -> dict[str, Any]:
    """An event as `orchestra --json task watch` prints it and the WebSocket sends it."""
    data = event.model_dump(mode="json")
    data["time"] = iso(event.time)
    return data


LISTED_BY_DEFAULT = frozenset({"init", "starting", "running", "draining", "stopping"})


def agent_state(agent: AgentRecord, ttl: float) -> str:
    """An agent's one liveness word: init, starting, running, draining, stopping (asked
    to stop, still running), stopped, or dead (its heartbeat is older than the TTL)."""
    if agent.status == "stopped":
        return "stopped"
    if not agent.is_alive(ttl):
        return "dead"
    if agent.stop_requested and agent.status == "running":
        return "stopping"
    return agent.status


def agent_json(agent: AgentRecord, ttl: float) -> dict[str, Any]:
    """An agent as `agent list --json` and the API show it: its liveness is ``state``
    alone (the registry's own ``status`` says running for an agent that died)."""
    data = agent.model_dump(mode="json")
    del data["status"]
    data["state"] = agent_state(agent, ttl)
    data["heartbeat_age_s"] = round(now() - agent.heartbeat_at, 3)
    data["started_at"] = iso(agent.started_at)
    data["heartbeat_at"] = iso(agent.heartbeat_at)
    return data
