"""The agent loop: model turn → tool calls → their results → the next turn, every step durable.

Each step is written to the task's step log in the state store before the
next one starts (``StateStore.record_step``), so a task redelivered after its
agent died goes on from where it was, on any machine:

- ``prompt`` (step 0): the system prompt, the cached prefix and the prompt as
  sent. A resumed task is asked with exactly these, never re-rendered.
- ``model``: one model turn — its content blocks as returned (thinking and
  its signature included), stop reason, usage, duration. A recorded turn is
  never asked again: no double spend.
- ``tool_start`` then ``tool_result``: one tool call. A call with a recorded
  result never runs again; one that started but recorded nothing runs again
  only if its tool is idempotent, otherwise the model is told its outcome is
  unknown.

A step number is written once: an agent that lost its task to another (it
was presumed dead) cannot write over the new owner's steps; it stops. The
loop ends when the model ends its turn, and fails with a reason at the role's
``max_turns``; the tree's budget and the task's time-out bound each call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from orchestra_cli.engine.steps import (
    TREE_MARKS,
    Replay,
    allowed_always,
    calls_of,
    close_pending,
    current,
    redacted,
    replay,
    short,
)
from orchestra_cli.errors import LLMError, LLMTruncated, StateUnavailable, TaskCancelled
from orchestra_cli.llm.base import (
    LLMProvider,
    LLMRequest,
    LLMResponse,
    ToolCall,
    ToolResult,
    ToolSpec,
    Turn,
)
from orchestra_cli.llm.outcomes import CONTINUE_PROMPT, check_final
from orchestra_cli.models import Task, Usage
from orchestra_cli.state.base import StateStore

if TYPE_CHECKING:
    from orchestra_cli.engine.approvals import PauseWatch

log = logging.getLogger(__name__)
T = TypeVar("T")

UNKNOWN_OUTCOME = (
    "The outcome of this call is unknown: the agent running it stopped before it "
    "recorded a result, and {tool} is not safe to repeat blindly. Check its effects "
    "before calling it again."
)
CUT_OFF = (
    "This call was cut off at the output limit (max_tokens) before its input was "
    "complete, so it was not run. Call it again, with a shorter input if you can."
)


class AwaitingApproval(Exception):
    """Calls an ``ask`` rule holds for a person's answer; the task parks as ``blocked``."""

    def __init__(self, calls: list[ToolCall]) -> None:
        super().__init__(", ".join(f"{c.name}({short(c.input)})" for c in calls))
        self.calls = calls


class Paused(Exception):
    """The task's tree was paused (`orchestra task pause`); the task parks as blocked."""


class Blocking(Protocol):
    """Runs a blocking function off the event loop: ``await blocking(fn, *args)``."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


class ToolRunner(Protocol):
    """What the loop needs of a role's tools (``tools.toolbox.Toolbox``)."""

    def specs(self) -> list[ToolSpec]: ...

    def idempotent(self, name: str) -> bool: ...

    def decide(self, name: str, input: Any = None, ctx: Any = None) -> Any: ...

    def context(
        self,
        workspace: Path,
        *,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> Any: ...

    def run(self, call: Sequence[ToolCall], ctx: Any, *, approved: Any = ()) -> list[Any]: ...


def _value(decision: Any) -> str:
    """A permission decision (``tools.permissions.Decision``) as its plain name."""
    return str(getattr(decision, "value", decision))


class AgentLoop:
    """Runs one task's loop for an agent; ``run`` returns the final answer."""

    def __init__(
        self,
        state: StateStore,
        llm: LLMProvider,
        tools: ToolRunner,
        task: Task,
        base: LLMRequest,
        *,
        workspace: Path,
        max_turns: int,
        max_continuations: int,
        deadline: float | None = None,
        after_tools: Callable[[], object] | None = None,
    ) -> None:
        self.state = state
        self.llm = llm
        self.tools = tools
        self.task = task
        self.base = base
        self.workspace = workspace
        self.max_turns = max_turns
        self.max_continuations = max_continuations
        self.deadline = deadline
        self.after_tools = after_tools  # e.g. save the workspace's files as artifacts
        self.spent = Usage()  # the calls this run made (a resumed task's earlier ones excluded)
        self.always: set[str] = set()  # tools a person allowed for the rest of the tree
        self._n = 0
        self._lock = threading.Lock()
        self._paused: PauseWatch | None = None  # approvals.PauseWatch, on the first check
        self._replay: Replay | None = None  # the conversation so far, from the first advance
        self._request = base  # the task's request (as its prompt step has it), ditto
        self._continuations = 0  # cut turns (max_tokens) in a row

    # -- the step log ------------------------------------------------------------
    def _record(
        self, data: dict[str, Any], event: dict[str, Any], usage: Usage | None = None
    ) -> dict[str, Any]:
        if data.get("kind") != "model":  # a model turn goes back as it came (signatures)
            data = redacted(data)
        event = redacted(event)  # the event log, `task watch` and the WebSocket see it
        watch = self._pause_watch()
        with self._lock:
            n = self._n
            # the write also says whether the tree's root changed: the pause check that
            # follows it reads nothing when it did not (one round trip a step, not two)
            while not (
                written := self.state.record_step(
                    self.task.id,
                    self.task.root_id,
                    n,
                    data,
                    event,
                    add_usage=usage,
                    root_seen=watch.seen,
                )
            ):
                taken = next((s for s in self.state.steps(self.task.id) if s["n"] == n), {})
                if taken.get("kind") in TREE_MARKS:  # a person paused the tree meanwhile
                    n += 1
                    continue
                raise TaskCancelled(
                    f"step {n} of task {self.task.id} was written by another agent; "
                    "it has taken the task over"
                )
            self._n = n + 1
            watch.wrote(written, n if self.task.is_root else None)
        return data

    def _steps(self) -> list[dict[str, Any]]:
        every = self.state.steps(self.task.id)
        self._n = len(every)
        steps = current(every)
        if steps:
            return steps
        prompt = {
            "kind": "prompt",
            "system": self.base.system,
            "prefix": self.base.prompt_prefix,
            "prompt": self.base.prompt,
            "model": self.base.model,
            "tools": [t.name for t in self.tools.specs()],
        }
        return [self._record(prompt, {"kind": "prompt", "tools": prompt["tools"]})]

    # -- the loop --------------------------------------------------------------------
    def run(self) -> LLMResponse:
        """The loop on this thread (a provider that cannot be awaited, a test)."""
        answered: tuple[LLMResponse, float] | None = None
        while (request := self.advance(answered)) is not None:
            asked = time.monotonic()
            answered = self.llm.complete(request), time.monotonic() - asked
        return self._answer()

    async def arun(self, blocking: Blocking) -> LLMResponse:
        """The loop as a coroutine: each model call awaited (``acomplete``), the work
        between two calls in one ``await blocking(self.advance, …)`` (on a thread of the
        caller's, e.g. ``blocking.BlockingPool.run``): a loop in flight costs no thread."""
        acomplete = self.llm.acomplete  # type: ignore[attr-defined]  # (llm.base.awaitable)
        answered: tuple[LLMResponse, float] | None = None
        while (request := await blocking(self.advance, answered)) is not None:
            asked = time.monotonic()
            answered = await acomplete(request), time.monotonic() - asked
        return self._answer()

    def advance(self, answered: tuple[LLMResponse, float] | None) -> LLMRequest | None:
        """Everything between two model calls, blocking: the turn just ``answered`` (its
        response and how long it took) on record, then the steps it leads to — its tool
        calls, the checks for a cancel or a pause — up to the next call. Returns that
        call's request, or None once the task's answer is in (``_answer``)."""
        if self._replay is None:
            self._open()
        elif answered is not None:
            self._took(*answered)
        r = self._replay
        assert r is not None
        while True:
            self._check_cancel()
            self._check_paused()
            if r.pending:
                self._resolve(r)
                continue
            if r.last is not None and self._finished(r.last):
                return None
            if r.model_turns >= self.max_turns:
                error = LLMError(
                    f"the agent reached its max_turns ({self.max_turns}) without finishing",
                    "raise max_turns in the role file, or split the task",
                )
                error.retryable = False
                raise error
            return replace(self._request, followups=list(r.turns))

    def _open(self) -> None:
        """The task's steps so far (a prompt step first, if there are none) replayed."""
        steps = self._steps()
        first = steps[0]
        self._request = replace(
            self.base,
            system=first.get("system", self.base.system),
            prompt_prefix=first.get("prefix", self.base.prompt_prefix),
            prompt=first.get("prompt", self.base.prompt),
            # the model the task began with: thinking blocks are tied to it
            model=first.get("model", self.base.model),
            tools=self.tools.specs(),
        )
        self._replay = r = replay(steps)
        self.always = allowed_always(self.state, self.task, steps)
        if r.model_turns:
            log.info(
                "task %s: resuming after %d step(s), %d model turn(s)",
                self.task.id,
                len(steps),
                r.model_turns,
            )

    def _took(self, response: LLMResponse, took: float) -> None:
        """A model turn's answer: checked, on record (charged), and in the replay."""
        r = self._replay
        assert r is not None
        check_final(response, self._request.model)
        stop = response.stop_reason
        self._continuations = self._continuations + 1 if stop == "max_tokens" else 0
        if self._continuations > self.max_continuations:
            raise LLMTruncated(
                f"output truncated at max_tokens ({self._request.max_tokens}) after "
                f"{self.max_continuations} continuation(s)",
                "raise max_tokens in the role file (or llm.max_tokens)",
            )
        self._model_step(response, turn=r.model_turns + 1, took=took)
        self.spent = self.spent + response.usage
        self._replay = self._advance(r, response)

    def _finished(self, step: dict[str, Any]) -> bool:
        return step.get("stop_reason") not in (
            "max_tokens",
            "pause_turn",
            "tool_use",
        ) and not calls_of(list(step.get("blocks") or []))

    def _advance(self, r: Replay, response: LLMResponse) -> Replay:
        """The replay after a new model turn (without reading the steps back)."""
        step = {
            "kind": "model",
            "blocks": response.blocks,
            "text": response.text,
            "stop_reason": response.stop_reason,
            "model": response.model,
        }
        close_pending(r)
        r.turns.append(response.as_turn())
        r.model_turns += 1
        r.last = step
        r.pending = list(response.tool_calls)
        if r.pending:
            r.answer = []
        else:
            r.answer.append(response.text)
        if response.stop_reason == "max_tokens" and not r.pending:
            r.turns.append(Turn(role="user", text=CONTINUE_PROMPT))
        return r

    def _model_step(self, response: LLMResponse, *, turn: int, took: float) -> None:
        calls = [{"name": c.name, "input": short(c.input)} for c in response.tool_calls]
        # the call's charge, deferred by a metered provider (engine/budget.py), goes with
        # its step: one write a turn where a charge of its own made two, and a turn on
        # record is a turn charged (a resumed loop replays it and never asks it again)
        usage = getattr(self.llm, "uncharged", None)
        if not isinstance(usage, Usage):
            usage = None
        try:
            self._record(
                {
                    "kind": "model",
                    "blocks": response.blocks,
                    "text": response.text,
                    "thinking": response.thinking,
                    "stop_reason": response.stop_reason,
                    "model": response.model,
                    "usage": response.usage.model_dump(),
                    "turn": turn,
                    "duration_s": round(took, 4),
                },
                {
                    "kind": "model",
                    "turn": turn,
                    "max_turns": self.max_turns,
                    "stop_reason": response.stop_reason,
                    "tool_calls": calls,
                    "tokens": response.usage.total_tokens,
                },
                usage,
            )
        except StateUnavailable:
            if usage is not None:
                # the write may have landed, charge and all, with its reply lost: charging
                # again at the task's end could count the call twice, so the charge is
                # taken as given (if the write did not land, the task misses this call)
                self.llm.take_uncharged()  # type: ignore[attr-defined]
                log.warning(
                    "task %s: turn %d's step and charge went to a state store that did not "
                    "answer; if they did not land, the task's usage misses that call",
                    self.task.id,
                    turn,
                )
            raise
        if usage is not None:
            self.llm.take_uncharged()  # type: ignore[attr-defined]  # (and its metrics line)

    def _resolve(self, r: Replay) -> None:
        """Run (or account for) every call of the last turn that has no result yet; calls
        an ``ask`` rule holds without an answer park the task (``AwaitingApproval``)."""
        if r.last is not None and r.last.get("stop_reason") == "max_tokens":
            for call in r.pending:  # its input may be cut short: never run it
                if call.id not in r.results:
                    self._give(r, call, CUT_OFF, True)
            close_pending(r)
            return
        ctx = self.tools.context(self.workspace, cancel=self.base.cancel, deadline=self.deadline)
        todo: list[ToolCall] = []
        held: list[ToolCall] = []
        approved: set[str] = set()
        for call in r.pending:
            if call.id in r.results:
                continue
            verdict = self._verdict(call, r, ctx)
            if verdict == "held":
                held.append(call)
            elif verdict != "answered" and not self._unknown(call, r):
                if verdict == "approved":
                    approved.add(call.id)
                todo.append(call)
        self._run_calls(todo, approved, ctx, r)
        if held:
            self._hold(held, r)
        close_pending(r)

    def _verdict(self, call: ToolCall, r: Replay, ctx: Any) -> str:
        """``run``, ``approved`` (a person said yes), ``answered`` (no: its result is the
        rejection) or ``held`` (an ``ask`` rule waits for a person)."""
        if _value(self.tools.decide(call.name, call.input, ctx)) != "ask":
            return "run"
        answer = r.answers.get(call.id)
        if answer is None:
            return "approved" if call.name in self.always else "held"
        if answer.get("decision") == "reject":
            self._give(r, call, f"A person rejected this call: {answer.get('reason') or '-'}", True)
            return "answered"
        return "approved"

    def _unknown(self, call: ToolCall, r: Replay) -> bool:
        """A call that started before its agent died and must not simply run again."""
        if call.id in r.started and not self.tools.idempotent(call.name):
            self._give(r, call, UNKNOWN_OUTCOME.format(tool=call.name), True)
            return True
        return False

    def _give(self, r: Replay, call: ToolCall, content: str, is_error: bool) -> None:
        self._result(call, content, is_error, 0.0)
        r.results[call.id] = ToolResult(call.id, content, is_error)

    def _run_calls(self, todo: list[ToolCall], approved: set[str], ctx: Any, r: Replay) -> None:
        for call in todo:
            if call.id not in r.started:
                self._record(
                    {
                        "kind": "tool_start",
                        "call_id": call.id,
                        "name": call.name,
                        "input": call.input,
                    },
                    {"kind": "tool_start", "tool": call.name, "input": short(call.input)},
                )
        if not todo:
            return
        started = time.monotonic()
        outputs = self.tools.run(todo, ctx, approved=approved)
        took = time.monotonic() - started
        if self.after_tools is not None:  # the files first: a result never outruns them
            self.after_tools()
        for call, out in zip(todo, outputs, strict=True):
            self._result(call, out.content, out.is_error, took)
            r.results[call.id] = ToolResult(call.id, out.content, out.is_error)

    def _hold(self, calls: list[ToolCall], r: Replay) -> None:
        for call in calls:
            if call.id not in r.awaiting:
                self._record(
                    {
                        "kind": "awaiting_approval",
                        "call_id": call.id,
                        "name": call.name,
                        "input": call.input,
                    },
                    {"kind": "awaiting_approval", "tool": call.name, "input": short(call.input)},
                )
        raise AwaitingApproval(calls)

    def _result(self, call: ToolCall, content: str, is_error: bool, took: float) -> None:
        self._record(
            {
                "kind": "tool_result",
                "call_id": call.id,
                "name": call.name,
                "content": content,
                "is_error": is_error,
                "duration_s": round(took, 4),
            },
            {"kind": "tool_result", "tool": call.name, "is_error": is_error},
        )

    def _answer(self) -> LLMResponse:
        r = self._replay or Replay()
        last = r.last or {}
        return LLMResponse(
            text="".join(r.answer),
            model=str(last.get("model") or self.base.model),
            provider=self.llm.name,
            usage=self.spent,
            stop_reason=str(last.get("stop_reason") or "end_turn"),
        )

    def _pause_watch(self) -> PauseWatch:
        if self._paused is None:
            from orchestra_cli.engine.approvals import PauseWatch

            self._paused = PauseWatch(self.state, self.task.root_id)
        return self._paused

    def _check_paused(self) -> None:
        """Between steps: a paused tree takes no new step (the last turn has finished)."""
        if self._pause_watch()():
            self._record({"kind": "paused"}, {"kind": "paused"})
            raise Paused(self.task.root_id)

    def _check_cancel(self) -> None:
        cancel = self.base.cancel
        if cancel is not None and cancel.is_set():
            raise TaskCancelled("cancelled between steps")
