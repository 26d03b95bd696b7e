"""A task of a role that acts: its workspace, its tools, its durable loop (engine/loop.py).

The agent (engine/agent.py) claims the task and concludes it; in between,
``Acting`` prepares the task's workspace (the files its earlier steps made),
puts the engine's tools (delegate, spawn, wait) beside the role's toolbox,
and runs the loop: on the agent's thread (``run``), or as a coroutine
(``arun``) whose model calls are awaited and whose blocking steps take turns
on the process's ``blocking.STEPS`` — a loop in flight then costs no thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestra_cli.backends import Backends
from orchestra_cli.blocking import STEPS
from orchestra_cli.engine.budget import MeteredProvider
from orchestra_cli.engine.loop import AgentLoop, ToolRunner
from orchestra_cli.engine.roles import RoleDefinition, known_capabilities, load_roles
from orchestra_cli.engine.workspace import Workspace
from orchestra_cli.llm.base import LLMRequest, LLMResponse
from orchestra_cli.models import Task, Usage
from orchestra_cli.tools.config import ENGINE_TOOLS


class Acting:
    """The loops of one agent's tasks; ``spent`` hears each run's usage."""

    def __init__(
        self,
        backends: Backends,
        role: RoleDefinition,
        toolbox: ToolRunner,
        spent: Callable[[Usage], None],
    ) -> None:
        self.b = backends
        self.role = role
        self.toolbox = toolbox
        self.spent = spent

    def prepare(
        self, task: Task, request: LLMRequest, metered: MeteredProvider, limit: float
    ) -> tuple[AgentLoop, Workspace]:
        """The task's loop, its workspace prepared (the files its steps so far made)."""
        workspace = Workspace(self.b.state, self.b.settings.home, task)
        # ``metered`` defers each call's charge to the caller's next write: the loop's
        # model step carries it (one write a turn, not two), before any tool runs, so a
        # tool that runs long or a kill -9 meanwhile finds the turn on record and charged;
        # a turn that records no step (a refusal, say) is charged with the task's end
        loop = AgentLoop(
            self.b.state,
            metered,
            self._tools_for(task),
            task,
            request,
            workspace=workspace.prepare(),
            max_turns=self.role.max_turns,
            max_continuations=self.b.settings.llm.max_continuations,
            deadline=time.monotonic() + limit,
            after_tools=workspace.save,
        )
        return loop, workspace

    def run(self, loop: AgentLoop, workspace: Workspace) -> LLMResponse:
        """The loop on this thread, every step durable."""
        try:
            return loop.run()
        finally:
            self.spent(loop.spent)
            close(workspace)

    async def arun(self, loop: AgentLoop, workspace: Workspace) -> LLMResponse:
        """The loop as a coroutine, its blocking steps on the pool."""
        try:
            return await loop.arun(STEPS.run)
        finally:
            self.spent(loop.spent)
            await STEPS.run(close, workspace)

    def _tools_for(self, task: Task) -> ToolRunner:
        """The role's toolbox, with delegate/spawn/wait beside it when the role lists them."""
        engine = [t for t in self.role.tools if t in ENGINE_TOOLS]
        if not engine:
            return self.toolbox
        from orchestra_cli.engine.delegation import DelegatingTools

        caps = known_capabilities(load_roles(self.b.settings.agents.definitions_dir))
        return DelegatingTools(
            self.b,
            self.toolbox,
            task,
            engine,
            sorted(caps),
            max_depth=self.b.settings.agents.max_delegation_depth,
        )


def close(workspace: Workspace) -> None:
    """A loop's workspace after its run, whatever the outcome: saved (a retry or resume
    starts from it), then removed (its files are artifacts in the state store now)."""
    try:
        workspace.save()
    finally:
        workspace.remove()
