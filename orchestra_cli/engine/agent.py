"""Agents: claim tasks from their capability queues and run them through the LLM.

Lifecycle: init → starting → running → draining → stopped. A heartbeat thread
keeps the registry record fresh, notices cancelled tasks and stop requests.
A message for a task that another live agent is running is put back for
later, so a duplicate never runs twice; one whose owner is dead is taken
over (a redelivery), and one that keeps killing agents ends dead-lettered.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestra_cli import __version__, tracing
from orchestra_cli.backends import Backends
from orchestra_cli.broker.base import Delivery
from orchestra_cli.engine import applied
from orchestra_cli.engine.acting import Acting
from orchestra_cli.engine.budget import Meter, MeteredProvider
from orchestra_cli.engine.loop import AgentLoop, AwaitingApproval, Paused
from orchestra_cli.engine.results import Results
from orchestra_cli.engine.roles import (
    RoleDefinition,
    role_acts,
)
from orchestra_cli.engine.step_prompt import step_request
from orchestra_cli.engine.worker import (
    Ack,
    Action,
    ConsumerLoop,
    DeadLetter,
    Deadline,
    Deadlines,
    Defer,
    Later,
    Nack,
)
from orchestra_cli.engine.workspace import Workspace
from orchestra_cli.errors import (
    BrokerUnavailable,
    NotFoundError,
    OrchestraError,
    StateUnavailable,
    TaskCancelled,
    TaskTimeout,
    TransitionRejected,
)
from orchestra_cli.llm.base import LLMProvider, LLMRequest, LLMResponse, awaitable
from orchestra_cli.llm.outcomes import acomplete_text, complete_text
from orchestra_cli.llm.prompts import PromptLibrary
from orchestra_cli.models import (
    MSG_RUN,
    AgentRecord,
    Task,
    Usage,
    work_queue,
)
from orchestra_cli.status import TERMINAL, Status
from orchestra_cli.tools.config import ENGINE_TOOLS
from orchestra_cli.util import new_id, now

if TYPE_CHECKING:
    from orchestra_cli.tools.toolbox import Toolbox

log = logging.getLogger(__name__)

MAX_CLAIM_ATTEMPTS = 3
# A message for a task not (yet) stored is looked at again, 0.25 s apart for its
# first 2 s and then every 5 s, until it is older than the longest a create can
# be retried (the store says: ``TaskStore.create_window``) plus this margin for
# clocks that disagree between hosts.
UNKNOWN_TASK_MARGIN_SECONDS = 8.0
UNKNOWN_TASK_RETRY_SECONDS = 0.25
UNKNOWN_TASK_SLOW_RETRY = 5.0
AWAITED_THREADS = 8  # handler threads of an agent whose slots are coroutines (Later)


def default_agent_name(role: str) -> str:
    return f"{role}-{socket.gethostname().split('.')[0]}-{os.getpid()}-{new_id()[-4:]}"


class Agent:
    """One agent worker of a role: registry, heartbeat, queue consumption, execution."""

    def __init__(
        self,
        backends: Backends,
        role: RoleDefinition,
        llm: LLMProvider,
        prompts: PromptLibrary,
        *,
        name: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.b = backends
        self.state = backends.state
        self.role = role
        self.llm = llm
        self.prompts = prompts
        self.name = name or default_agent_name(role.name)
        self.concurrency = concurrency or role.concurrency
        self.role_timeout = applied.role_timeout(role)  # for tasks without --timeout
        self.record = AgentRecord(
            name=self.name,
            role=role.name,
            capabilities=list(role.capabilities),
            concurrency=self.concurrency,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
        )
        self.meter = Meter(backends.state, backends.journals, backends.settings.llm)
        self.results = Results(backends, role, self.name, self.record)
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadlines = Deadlines(f"timeouts-{self.name}")  # one thread, not one per task
        self.toolbox: Toolbox | None = None  # the role's tools (and MCP servers), run() to its end
        self.acting: Acting | None = None  # its tasks' loops, with the toolbox
        # with a provider that can be awaited a slot is a coroutine on the loop (a single
        # call, or a tool loop whose blocking steps take turns on a few threads): a few
        # handler threads claim and conclude
        self._awaitable = awaitable(llm)
        self.loop = ConsumerLoop(
            backends.broker,
            [work_queue(c) for c in role.capabilities],
            self.handle,
            concurrency=self.concurrency,
            name=self.name,
            threads=AWAITED_THREADS if self._awaitable else None,
        )

    # -- lifecycle -----------------------------------------------------------
    def _set_status(self, status: str, *, fresh: bool = False) -> None:
        self.record.status = status
        self._beat(fresh=fresh)

    def _beat(self, *, fresh: bool = False) -> None:
        if self._stop.is_set() and self.record.status == "running":
            self.record.status = "draining"
        with self._lock:
            self.record.current = sorted(self._running)
            self.record.load = len(self._running)
        self.record.heartbeat_at = now()
        if self.state.save_agent(self.record, fresh=fresh) and not self._stop.is_set():
            log.info("agent %s: stop requested; draining", self.name)
            self._stop.set()

    def _heartbeat_loop(self, done: threading.Event) -> None:
        interval = self.b.settings.agents.heartbeat_seconds
        while not done.wait(interval):
            try:
                self._beat()
                self._notice_cancellations()
            except (StateUnavailable, BrokerUnavailable) as exc:  # an outage: one line
                log.warning(
                    "agent %s: heartbeat missed (%s); trying again in %ss",
                    self.name,
                    exc.message,
                    interval,
                )
            except Exception:  # a missed beat is survivable; log and go on
                log.exception("agent %s: heartbeat failed", self.name)

    def _notice_cancellations(self) -> None:
        with self._lock:
            running = dict(self._running)
        if not running:
            return
        # one read for every slot, and only their statuses (whole tasks, at 400 in flight,
        # cost ~10% of a tool-loop agent's CPU: profiled)
        found = self.state.get_statuses(running)
        for task_id, cancel in running.items():
            status = found.get(task_id)
            if status is None or status == Status.CANCELLED:
                cancel.set()

    def run(self, stop: threading.Event | None = None) -> None:
        """Register, consume until stopped (or asked to stop), drain, deregister."""
        self._set_status("starting", fresh=True)  # a stop asked of an earlier run is done
        beat_done = threading.Event()
        beater = threading.Thread(
            target=self._heartbeat_loop,
            args=(beat_done,),
            name=f"heartbeat-{self.name}",
            daemon=True,
        )
        beater.start()
        controller = threading.Thread(
            target=self._control_loop, args=(beat_done,), name=f"control-{self.name}", daemon=True
        )
        controller.start()
        if stop is not None:
            watcher = threading.Thread(target=_forward, args=(stop, self._stop), daemon=True)
            watcher.start()
        log.info(
            "agent %s (%s) running on %s", self.name, self.role.name, ", ".join(self.loop.queues)
        )
        if role_acts(self.role):
            from orchestra_cli.tools.toolbox import Toolbox  # MCP servers start with the agent

            builtins = [t for t in self.role.tools if t not in ENGINE_TOOLS]
            # the sandbox sees the host read-only: orchestra's home (the database, logs,
            # other tasks' workspaces) and a .env beside the agent are emptied inside it
            hidden = [self.b.settings.home, Path.cwd() / ".env"]
            self.toolbox = Toolbox(
                builtins,
                mcp_servers=self.role.mcp_servers,
                permissions=self.role.permissions,
                sandbox=self.role.sandbox,
                hide=[p for p in hidden if p.exists()],
            )
            self.acting = Acting(self.b, self.role, self.toolbox, self._count_usage)
        self._set_status("running")
        try:
            self.loop.run(self._stop)
        finally:
            if self.toolbox is not None:
                self.toolbox.close()  # and stop with it
            self.record.status = "draining"
            beat_done.set()
            beater.join(timeout=5)
            self._set_status("stopped")
            log.info(
                "agent %s stopped (processed %d, failed %d)",
                self.name,
                self.record.processed,
                self.record.failed,
            )

    def request_stop(self) -> None:
        self._stop.set()

    def _control_loop(self, done: threading.Event) -> None:
        """Act on broadcast cancel / stop / ping at once (heartbeats catch them otherwise)."""
        try:
            consumer = self.b.broker.control_consumer(self.name)
        except Exception as exc:  # control is a fast path; state polling still works
            log.warning("agent %s: no control channel (%s); relying on heartbeats", self.name, exc)
            return
        try:
            while not done.is_set():
                message = consumer.get(timeout=0.5)
                if message is not None:
                    self.on_control(message)
        finally:
            consumer.close()

    def on_control(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        addressed = message.get("agent") in (None, "*", self.name)
        if kind == "cancel":
            with self._lock:
                events = [
                    self._running[t] for t in message.get("task_ids", []) if t in self._running
                ]
            for event in events:
                event.set()
        elif kind == "stop" and addressed and not self._stop.is_set():
            log.info("agent %s: stop requested; draining", self.name)
            self._stop.set()
        elif kind == "ping" and addressed:
            self._beat()

    # -- message handling ----------------------------------------------------
    def handle(self, delivery: Delivery) -> Action | Later:
        env = delivery.envelope
        if env.type != MSG_RUN:
            return DeadLetter(f"{env.type} does not belong on {delivery.queue}")
        try:  # the common case, a queued task, is claimed in this one round trip
            task, claimed = self.state.claim(env.task_id, self.name)
        except NotFoundError:
            # A submitter publishes while its create is on its way to the state store
            # (TaskService.submit), and that create may be retried for as long as Redis
            # is out of reach: look again until the message is that old.
            age = now() - env.time
            if age < self.state.create_window + UNKNOWN_TASK_MARGIN_SECONDS:
                return Defer(UNKNOWN_TASK_RETRY_SECONDS if age < 2 else UNKNOWN_TASK_SLOW_RETRY)
            return DeadLetter(f"task {env.task_id} does not exist")
        if claimed:
            return self._execute(task)
        for _ in range(MAX_CLAIM_ATTEMPTS):
            decision = self._claim(task)
            if isinstance(decision, Task):
                return self._execute(decision)
            if decision is not None:
                return decision
            task = self.state.get_task(env.task_id)  # changed under us: look again
        return Nack(1.0)

    def _claim(self, task: Task) -> Task | Action | None:
        """The claimed task, an action for the message, or None to look again."""
        if task.status in TERMINAL:
            if task.status != Status.CANCELLED:
                self.results.notify(task, task.status.value)  # the first notice may have been lost
            return Ack()
        if task.status == Status.RUNNING:
            takeover = self._takeover(task)
            if not isinstance(takeover, Task):
                return takeover
            task = takeover
        if task.status in (Status.PENDING, Status.WAITING):
            # reopened (task retry) after this message was sent: the orchestrator sends
            # the task a message of its own when it routes it again; this one is stale
            log.info("dropping a stale run message for task %s (%s)", task.id, task.status)
            return Ack()
        if task.status != Status.QUEUED:
            return DeadLetter(f"task {task.id} is {task.status}, not queued")
        try:
            return self.state.transition(
                task.id,
                Status.RUNNING,
                expect_version=task.version,
                agent=self.name,
                attempts=task.attempts + 1,
                error=None,
            )
        except TransitionRejected:
            return None

    def _takeover(self, task: Task) -> Task | Action | None:
        """A message for a running task: a duplicate (put back) or a redelivery (take over)."""
        with self._lock:
            mine = task.id in self._running
        if mine:
            return Defer(self.b.settings.agents.heartbeat_seconds)
        if task.agent and task.agent != self.name and self._owner_alive(task.agent):
            return Defer(self.b.settings.agents.heartbeat_seconds)
        if task.attempts >= task.max_attempts:
            try:
                failed = self.state.transition(
                    task.id,
                    Status.FAILED,
                    expect_version=task.version,
                    error=f"agent {task.agent} stopped responding on attempt {task.attempts} "
                    f"of {task.max_attempts}; giving up (poison task?)",
                )
            except TransitionRejected:
                return None
            self.results.notify(failed, "failed")
            return DeadLetter(failed.error or "exhausted attempts")
        try:
            return self.state.transition(
                task.id,
                Status.QUEUED,
                expect_version=task.version,
                event_data={"reason": "redelivered", "previous_agent": task.agent},
            )
        except TransitionRejected:
            return None

    def _owner_alive(self, owner: str) -> bool:
        try:
            record = self.state.get_agent(owner)
        except NotFoundError:
            return False
        return record.is_alive(self.b.settings.agents.ttl_seconds)

    def _limit(self, task: Task) -> float:
        return applied.time_limit(task.timeout, task.timeout_set, self.role_timeout)

    def _execute(self, task: Task) -> Action | Later:
        """Run the claimed ``task``: on this thread, or (a provider that can be awaited)
        as a coroutine on the loop, freeing this thread."""
        if not self._awaitable:
            return self._execute_here(task)
        span = tracing.opened(*tracing.agent_span(self, task), kind="CONSUMER")
        with span.current():  # the prompt is built in the task's span, as on a thread
            run = self._begin(task)
            leftover: Workspace | None = None  # the work's, if it never runs
            try:
                work: Callable[[], Awaitable[LLMResponse]]
                if self.acting is not None:  # its workspace is ready before it starts
                    loop, leftover = self._prepare(task, run)
                    work = functools.partial(self.acting.arun, loop, leftover)
                else:
                    work = functools.partial(self._acall, run, self._request(task, run.cancel))
            except BaseException as exc:
                with span.current(end=True):
                    return self._conclude(task, run, None, exc)

        def abandon(exc: BaseException) -> None:  # the work never ran: give its slot back
            run.timer.cancel()
            self._release(task, run)
            if leftover is not None:
                leftover.remove()
            span.end(exc)

        return Later(lambda: self._later(task, run, span, work), abandon=abandon)

    @tracing.traced(tracing.agent_span, kind="CONSUMER")
    def _execute_here(self, task: Task) -> Action:
        run = self._begin(task)
        response: LLMResponse | None = None
        error: BaseException | None = None
        try:
            if self.acting is not None:
                loop, workspace = self._prepare(task, run)
                response = self.acting.run(loop, workspace)
            else:
                response = self._call_llm(task, run.cancel, run.metered)
        except BaseException as exc:  # concluded below, as the coroutine's are
            error = exc
        return self._conclude(task, run, response, error)

    async def _later(
        self,
        task: Task,
        run: _Run,
        span: tracing.Opened,
        work: Callable[[], Awaitable[LLMResponse]],
    ) -> Callable[[], Action]:
        """The task's ``work`` on the loop (a call, or a tool loop: ``Acting.arun``); its
        conclusion (blocking writes) on a settlement thread, both in the task's span
        (opened by ``_execute``)."""
        response: LLMResponse | None = None
        error: BaseException | None = None
        try:
            with span.current():
                response = await work()
        except BaseException as exc:
            error = exc

        def conclude() -> Action:
            with span.current(end=True):
                return self._conclude(task, run, response, error)

        return conclude

    async def _acall(self, run: _Run, request: LLMRequest) -> LLMResponse:
        continuations = self.b.settings.llm.max_continuations
        response = await acomplete_text(run.metered, request, max_continuations=continuations)
        self._count_usage(response.usage)
        return response

    def _begin(self, task: Task) -> _Run:
        """The task's cancel event (in ``_running``), its time limit and its meter."""
        cancel = threading.Event()
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()  # set first: whoever sees ``cancel`` must see why
            cancel.set()

        with self._lock:
            self._running[task.id] = cancel
        limit = self._limit(task)
        # the last call's usage rides on the succeeded transition (one write, not two)
        metered = self.meter.wrap(self.llm, task, agent=self.name, defer_last=True)
        timer = self._deadlines.schedule(limit, expire)
        return _Run(cancel, timed_out, limit, timer, metered)

    def _conclude(
        self,
        task: Task,
        run: _Run,
        response: LLMResponse | None,
        error: BaseException | None,
    ) -> Action:
        """The task's outcome from its answer, or from what its run raised."""
        try:
            try:
                if error is not None:
                    raise error
                if run.timed_out.is_set():
                    raise TaskTimeout(f"timed out after {run.limit:g}s")
            except BaseException:
                # no result to record: charge the call before any other outcome is
                self.results.charge(task, run.metered)
                raise
        except (AwaitingApproval, Paused) as exc:  # parked for a person: no slot or lease
            return self.results.block(task, exc if isinstance(exc, AwaitingApproval) else None)
        except TaskCancelled as exc:
            if run.timed_out.is_set():
                return self.results.fail(task, f"timed out after {run.limit:g}s")
            log.info("task %s cancelled while running: %s", task.id, exc)
            return Ack()
        except (StateUnavailable, BrokerUnavailable):
            # an outage, not the task's failure: the consume loop puts the message back
            # without counting a delivery, and the task resumes from its steps
            raise
        except OrchestraError as exc:
            return self.results.fail(task, str(exc), retryable=getattr(exc, "retryable", True))
        except Exception as exc:
            log.exception("task %s crashed", task.id)
            return self.results.fail(task, f"{type(exc).__name__}: {exc}")
        finally:
            run.timer.cancel()
            self._release(task, run)
        assert response is not None
        return self.results.succeed(task, response, run.metered)

    def _release(self, task: Task, run: _Run) -> None:
        with self._lock:
            # a retry of this task may already run here: only drop our own entry
            if self._running.get(task.id) is run.cancel:
                del self._running[task.id]

    def _prepare(self, task: Task, run: _Run) -> tuple[AgentLoop, Workspace]:
        assert self.acting is not None, "only a role that acts runs the loop"
        request = self._request(task, run.cancel)
        return self.acting.prepare(task, request, run.metered, self._limit(task))

    def _request(self, task: Task, cancel: threading.Event) -> LLMRequest:
        return step_request(self.b, self.role, self.prompts, task, cancel)

    def _call_llm(
        self, task: Task, cancel: threading.Event, metered: MeteredProvider
    ) -> LLMResponse:
        # each call reserves its worst case against the tree's budget and is charged
        continuations = self.b.settings.llm.max_continuations
        response = complete_text(
            metered, self._request(task, cancel), max_continuations=continuations
        )
        self._count_usage(response.usage)
        return response

    def _count_usage(self, usage: Usage) -> None:
        with self._lock:  # per-agent totals, saved to the registry with the next heartbeat
            self.record.usage = self.record.usage + usage


def _forward(source: threading.Event, *targets: threading.Event) -> None:
    """Set ``targets`` when ``source`` is set (an outer stop reaching an agent)."""
    source.wait()
    for target in targets:
        target.set()


@dataclass(frozen=True)
class _Run:
    """One run of a claimed task: what ``_begin`` sets up and ``_conclude`` ends."""

    cancel: threading.Event
    timed_out: threading.Event
    limit: float
    timer: Deadline
    metered: MeteredProvider
