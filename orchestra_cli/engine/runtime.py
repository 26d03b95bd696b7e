"""Running components in one process: threads, signals, graceful stop.

``orchestra run``, ``orchestra agent start`` and ``orchestra demo`` all build
their components here and run them until a stop: the first SIGINT/SIGTERM
drains (in-flight tasks finish, nothing new is taken), a second one forces.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol

from orchestra_cli.backends import Backends, open_llm, open_secrets
from orchestra_cli.engine import applied
from orchestra_cli.engine.agent import Agent
from orchestra_cli.engine.aggregator import Aggregator, ConcatAggregator, LLMAggregator
from orchestra_cli.engine.orchestrator import Orchestrator
from orchestra_cli.engine.planner import Planner, RuleBasedPlanner
from orchestra_cli.engine.roles import RoleDefinition, get_role
from orchestra_cli.errors import ExitStatus, OrchestraError
from orchestra_cli.llm.prompts import PromptLibrary

log = logging.getLogger(__name__)


class Component(Protocol):
    name: str

    def run(self, stop: threading.Event) -> None: ...


@dataclass
class Runtime:
    """Builds orchestrators and agents that share one set of clients."""

    backends: Backends
    roles: dict[str, RoleDefinition]
    components: list[Component] = field(default_factory=list)
    sources: Mapping[str, str] = field(default_factory=dict)  # where each setting came from
    # what ended a component without a stop being asked for (run_until_stopped raises it)
    failures: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.backends.start_background()
        settings = self.backends.settings
        self.secrets = open_secrets(settings)
        self.llm = open_llm(settings, self.secrets)
        self.prompts = PromptLibrary(settings.prompts_dir)

    def planner(self) -> Planner:
        """The LLM planner with a real model, the rule-based one offline."""
        settings = self.backends.settings
        rules = RuleBasedPlanner(settings.tasks.default_capability)
        if self.llm.name == "offline":
            return rules
        from orchestra_cli.engine.budget import Meter
        from orchestra_cli.engine.llm_planner import LLMPlanner

        meter = Meter(self.backends.state, self.backends.journals, settings.llm)
        return LLMPlanner(
            self.llm,
            self.prompts,
            rules,
            meter,
            model=settings.llm.model,
            max_tokens=settings.llm.max_tokens,
            temperature=settings.llm.temperature,
            max_reasks=settings.llm.max_reasks,
        )

    def aggregator(self) -> Aggregator:
        """The model combines subtask results; offline they are assembled as they are."""
        if self.llm.name == "offline":
            return ConcatAggregator()
        from orchestra_cli.engine.budget import Meter

        s = self.backends.settings
        meter = Meter(self.backends.state, self.backends.journals, s.llm)
        return LLMAggregator(
            self.llm,
            self.prompts,
            meter,
            model=s.llm.model,
            max_tokens=s.llm.max_tokens,
            temperature=s.llm.temperature,
            max_continuations=s.llm.max_continuations,
        )

    def add_orchestrator(self, concurrency: int = 1) -> Orchestrator:
        orch = Orchestrator(
            self.backends,
            self.roles,
            self.planner(),
            concurrency=concurrency,
            aggregator=self.aggregator(),
        )
        self.components.append(orch)
        notify = self.backends.settings.notify
        if notify.webhook_url:  # inbox and tree_failed events, from this process
            from orchestra_cli.logs import register_secret
            from orchestra_cli.notify import SECRET_NAME, Notifier

            secret = self.secrets.get(SECRET_NAME)
            if secret:
                register_secret(secret)
            self.components.append(
                Notifier(self.backends, notify.webhook_url, secret, notify.timeout)
            )
        return orch

    def add_agent(
        self, role_name: str, *, name: str | None = None, concurrency: int | None = None
    ) -> Agent:
        role = get_role(self.roles, role_name)
        self.prompts.get(role.prompt)  # a missing prompt fails now, not on the first task
        settings = self.backends.settings
        threads = applied.concurrency(role, settings, self.sources, concurrency)
        agent = Agent(
            self.backends, role, self.llm, self.prompts, name=name, concurrency=int(threads.value)
        )
        # what it runs with and why, for `agent status`
        timeout = applied.task_timeout(role, settings, self.sources)
        agent.record.applied = {"concurrency": str(threads), "task_timeout": str(timeout)}
        self.components.append(agent)
        return agent

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        threads = []
        for comp in self.components:
            thread = threading.Thread(
                target=_run_component,
                args=(comp, stop, self.failures),
                name=comp.name,
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        return threads


def _run_component(comp: Component, stop: threading.Event, failures: list[BaseException]) -> None:
    try:
        comp.run(stop)
    except Exception as exc:
        if isinstance(exc, OrchestraError):
            log.error("%s stopped: %s; stopping the process", comp.name, exc)
        else:
            log.exception("%s crashed; stopping the process", comp.name)
        failures.append(exc)
        stop.set()


def install_stop_signals(stop: threading.Event, notify: Callable[[str], None]) -> list[int]:
    """First SIGINT/SIGTERM sets ``stop``; a second one exits at once (130).

    Returns the list that records which signals arrived.
    """
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            notify("stopping: finishing tasks in hand (press Ctrl-C again to force)")
            stop.set()
        else:
            notify("forced stop")
            os._exit(ExitStatus.INTERRUPTED)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return received


def settle_heap() -> None:
    """Move what the process built to start (modules, the SDK's and the records' types,
    roles, prompts: most of its objects) out of the cyclic collector's way: a full
    collection walks every tracked object, and in an agent with 256 calls in flight each
    of them held the GIL for up to ~200 ms (gc.callbacks), and every call waiting on the
    loop waited with it; frozen, one walks ~70,000 (~60 ms). What is frozen is still
    freed by reference counting; only cycles among it would stay, and start-up builds no
    garbage to speak of."""
    import gc

    gc.collect()
    gc.freeze()


def run_until_stopped(runtime: Runtime, stop: threading.Event) -> None:
    """Start every component and wait until all have stopped; raise what ended one
    unasked (a broker given up on is BrokerUnavailable: exit 3), so a process that
    stops by itself never exits 0."""
    settle_heap()
    threads = runtime.start(stop)
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.2)
            if stop.is_set():
                break
    for t in threads:
        t.join()
    if runtime.failures:
        raise runtime.failures[0]
