"""Why a task cannot move, and the command that gets it moving.

The live view (``task watch``) and ``task submit`` ask here, so the reason a
task waits reads the same wherever it is shown: a queued task whose
capability no live agent serves waits for one; unplanned work and parents
waiting on their subtasks need a live orchestrator; a blocked task waits for a
person.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestra_cli.status import Status

if TYPE_CHECKING:
    from orchestra_cli.engine.roles import RoleDefinition
    from orchestra_cli.models import AgentRecord, Task

ORCHESTRATOR_ROLE = "orchestrator"  # as engine.orchestrator registers itself


@dataclass(frozen=True)
class Blocker:
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.reason} — {self.fix}"


def start_agent_command(capability: str, roles: dict[str, RoleDefinition]) -> str:
    """`orchestra agent start ROLE` for a role that serves ``capability``."""
    names = sorted(name for name, r in roles.items() if capability in r.capabilities)
    return f"orchestra agent start {names[0] if names else f'<a role with {capability}>'}"


def no_agent(capability: str, roles: dict[str, RoleDefinition]) -> Blocker:
    return Blocker(
        f"no live agent serves {capability}",
        f"start one: {start_agent_command(capability, roles)}",
    )


def live_capabilities(agents: Iterable[AgentRecord], ttl: float) -> tuple[set[str], bool]:
    """The capabilities live agents serve, and whether an orchestrator is live."""
    caps: set[str] = set()
    orchestrator = False
    for agent in agents:
        if not agent.is_alive(ttl):
            continue
        if agent.role == ORCHESTRATOR_ROLE:
            orchestrator = True
        else:
            caps.update(agent.capabilities)
    return caps, orchestrator


def blockers(
    tasks: Iterable[Task],
    agents: Iterable[AgentRecord],
    roles: Callable[[], dict[str, RoleDefinition]],
    ttl: float,
) -> dict[str, Blocker]:
    """The tasks among ``tasks`` that cannot move now, by id, with why and the fix.

    ``roles`` is called only to name the role to start for a capability nobody
    serves: `task submit` of unrouted work then reads no role file (PyYAML's
    import and the parse were ~30 ms of its ~230, cProfile)."""
    caps, orchestrator = live_capabilities(agents, ttl)
    out: dict[str, Blocker] = {}
    for task in tasks:
        if task.status == Status.QUEUED and task.capability and task.capability not in caps:
            out[task.id] = no_agent(task.capability, roles())
        elif task.status == Status.BLOCKED:  # a person's answer (approvals.py)
            out[task.id] = Blocker(
                "waits for a person (a call to approve, a plan to review, or a pause)",
                f"see `orchestra inbox`; answer: orchestra task approve {task.id} | reject "
                f"{task.id} --reason TEXT | resume {task.root_id}",
            )
        elif task.status in (Status.PENDING, Status.WAITING) and not orchestrator:
            what = "to plan it" if task.status == Status.PENDING else "to finish it"
            out[task.id] = Blocker(f"no orchestrator running {what}", "start one: orchestra run")
    return out
