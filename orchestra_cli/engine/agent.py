"""Agents: claim tasks from their capability queues and run them through the LLM.

Lifecycle: init → starting → running → draining → stopped. A heartbeat thread
keeps the registry record fresh, notices cancelled tasks and stop requests.
A message for a task that another live agent is running is put back for
later, so a duplicate never runs twice; one whose owner is dead is taken
over (a redelivery), and one that keeps killing agents ends dead-lettered.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestra_cli import __version__, tracing
from orchestra_cli.backends import Backends
from orchestra_cli.broker.base import Delivery
from orchestra_cli.engine import applied
from orchestra_cli.engine.budget import Meter, MeteredProvider
from orchestra_cli.engine.loop import AgentLoop, AwaitingApproval, Paused, ToolRunner, short
from orchestra_cli.engine.retry import retry_or_fail
from orchestra_cli.engine.roles import (
    RoleDefinition,
    known_capabilities,
    load_roles,
    role_acts,
)
from orchestra_cli.engine.step_prompt import step_request
from orchestra_cli.engine.worker import (
    Ack,
    Action,
    ConsumerLoop,
    DeadLetter,
    Deadlines,
    Defer,
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
from orchestra_cli.llm.base import LLMProvider, LLMRequest, LLMResponse
from orchestra_cli.llm.outcomes import complete_text
from orchestra_cli.llm.prompts import PromptLibrary
from orchestra_cli.models import (
    MSG_RESULT,
    MSG_RUN,
    Q_RESULTS,
    AgentRecord,
    Envelope,
    Task,
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
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadlines = Deadlines(f"timeouts-{self.name}")  # one thread, not one per task
        self.toolbox: Toolbox | None = None  # the role's tools (and MCP servers), run() to its end
        self.loop = ConsumerLoop(
            backends.broker,
            [work_queue(c) for c in role.capabilities],
            self.handle,
            concurrency=self.concurrency,
            name=self.name,
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
            except Exception:  # a missed beat is survivable; log and go on
                log.exception("agent %s: heartbeat failed", self.name)

    def _notice_cancellations(self) -> None:
        with self._lock:
            running = dict(self._running)
        for task_id, cancel in running.items():
            try:
                if self.state.get_task(task_id).status == Status.CANCELLED:
                    cancel.set()
            except NotFoundError:
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
    def handle(self, delivery: Delivery) -> Action:
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
                self._notify(task, task.status.value)  # the first notice may have been lost
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
            self._notify(failed, "failed")
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

    @tracing.traced(tracing.agent_span, kind="CONSUMER")
    def _execute(self, task: Task) -> Action:
        cancel = threading.Event()
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()  # set first: whoever sees ``cancel`` must see why
            cancel.set()

        with self._lock:
            self._running[task.id] = cancel
        limit = self._limit(task)
        timer = self._deadlines.schedule(limit, expire)
        # the last call's usage rides on the succeeded transition (one write, not two)
        metered = self.meter.wrap(self.llm, task, agent=self.name, defer_last=True)
        try:
            try:
                if self.toolbox is not None:
                    response = self._act(task, cancel, metered)
                else:
                    response = self._call_llm(task, cancel, metered)
                if timed_out.is_set():
                    raise TaskTimeout(f"timed out after {limit:g}s")
            except BaseException:
                # no result to record: charge the call before any other outcome is
                self._charge(task, metered)
                raise
        except (AwaitingApproval, Paused) as exc:  # parked for a person: no slot or lease
            return self._block(task, exc if isinstance(exc, AwaitingApproval) else None)
        except TaskCancelled as exc:
            if timed_out.is_set():
                return self._fail(task, f"timed out after {limit:g}s")
            log.info("task %s cancelled while running: %s", task.id, exc)
            return Ack()
        except (StateUnavailable, BrokerUnavailable):
            # an outage, not the task's failure: the consume loop puts the message back
            # without counting a delivery, and the task resumes from its steps
            raise
        except OrchestraError as exc:
            return self._fail(task, str(exc), retryable=getattr(exc, "retryable", True))
        except Exception as exc:
            log.exception("task %s crashed", task.id)
            return self._fail(task, f"{type(exc).__name__}: {exc}")
        finally:
            timer.cancel()
            with self._lock:
                # a retry of this task may already run here: only drop our own entry
                if self._running.get(task.id) is cancel:
                    del self._running[task.id]
        return self._succeed(task, response, metered)

    def _block(self, task: Task, waiting: AwaitingApproval | None) -> Action:
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

    def _charge(self, task: Task, metered: MeteredProvider) -> None:
        """Charge a deferred call now; its spend is in metrics.jsonl either way."""
        usage = metered.take_uncharged()
        if usage is None:
            return
        try:
            self.state.add_usage(task.id, usage)
        except Exception as exc:  # never let accounting turn an outcome into a redelivery
            log.warning("task %s: could not charge the last call's usage: %s", task.id, exc)

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
        with self._lock:  # per-agent totals, saved to the registry with the next heartbeat
            self.record.usage = self.record.usage + response.usage
        return response

    def _tools_for(self, task: Task) -> ToolRunner:
        """The role's toolbox, with delegate/spawn/wait beside it when the role lists them."""
        engine = [t for t in self.role.tools if t in ENGINE_TOOLS]
        assert self.toolbox is not None, "only a role that acts runs the loop"
        toolbox: ToolRunner = self.toolbox  # checked against the protocol here
        if not engine:
            return toolbox
        from orchestra_cli.engine.delegation import DelegatingTools

        caps = known_capabilities(load_roles(self.b.settings.agents.definitions_dir))
        return DelegatingTools(
            self.b,
            toolbox,
            task,
            engine,
            sorted(caps),
            max_depth=self.b.settings.agents.max_delegation_depth,
        )

    def _act(self, task: Task, cancel: threading.Event, metered: MeteredProvider) -> LLMResponse:
        """The tool-use loop (engine/loop.py) in the task's workspace, every step durable."""
        workspace = Workspace(self.state, self.b.settings.home, task)
        # each turn is charged as it ends, not with the next write: a tool that runs for
        # long (or a kill -9 meanwhile) must not hold the turn's usage in memory only
        metered = self.meter.wrap(self.llm, task, agent=self.name)
        loop = AgentLoop(
            self.state,
            metered,
            self._tools_for(task),
            task,
            self._request(task, cancel),
            workspace=workspace.prepare(),
            max_turns=self.role.max_turns,
            max_continuations=self.b.settings.llm.max_continuations,
            deadline=time.monotonic() + self._limit(task),
            after_tools=workspace.save,
        )
        try:
            return loop.run()
        finally:
            with self._lock:
                self.record.usage = self.record.usage + loop.spent
            try:
                workspace.save()  # whatever the outcome: a retry or resume starts from it
            finally:
                workspace.remove()  # its files are artifacts in the state store now

    def _succeed(self, task: Task, response: LLMResponse, metered: MeteredProvider) -> Action:
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
            self._charge(task, metered)  # the call was made: it counts
            return Ack()
        except BaseException:
            self._charge(task, metered)
            raise
        metered.take_uncharged()  # charged by the transition
        self.record.processed += 1
        self.b.journals.metrics.write(
            {
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
        )
        if not task.is_root:  # the rest of its tree sees it (step_prompt.memory)
            self._remember(task, response)
        self._notify(done, "succeeded")
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
    def _fail(self, task: Task, error: str, *, retryable: bool = True) -> Action:
        """Apply the retry policy now: the task never waits in ``running`` for a notice."""
        log.warning("task %s attempt %d failed: %s", task.id, task.attempts, error)
        self.record.failed += 1
        after = retry_or_fail(self.b, task, error, retryable=retryable)
        if after.status == Status.FAILED:
            self._notify(after, "failed", error=after.error, retryable=False)  # for the parent
        return Ack()

    def _notify(
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


def _forward(source: threading.Event, *targets: threading.Event) -> None:
    """Set ``targets`` when ``source`` is set (an outer stop reaching an agent)."""
    source.wait()
    for target in targets:
        target.set()
