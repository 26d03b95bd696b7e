"""A task's step log read as a conversation, and steps written by others than its loop.

The loop (engine/loop.py) writes a task's steps; ``replay`` turns them back
into the turns of the conversation and what the last turn still waits for,
so a loop resumed anywhere goes on from there. Marks on a tree's root (a
pause, a resume, a standing approval: ``TREE_MARKS``) and a fresh start
(``restart``) are appended by people through the engine, at the next free
number; ``short`` and ``redacted`` are how tool inputs look in events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from orchestra_cli.llm.base import ToolCall, ToolResult, Turn
from orchestra_cli.llm.outcomes import CONTINUE_PROMPT
from orchestra_cli.logs import redact
from orchestra_cli.models import Task
from orchestra_cli.state.base import StateStore

SHORT_INPUT_CHARS = 120
# steps a person writes on a tree's root whatever runs there (approvals.py): a loop
# running the root itself steps over them
TREE_MARKS = ("pause", "resume", "allow")


@dataclass
class Replay:
    """The conversation rebuilt from a task's steps."""

    turns: list[Turn] = field(default_factory=list)
    model_turns: int = 0
    pending: list[ToolCall] = field(default_factory=list)  # the last turn's calls
    results: dict[str, ToolResult] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    awaiting: set[str] = field(default_factory=set)  # calls parked for a person's answer
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # call id → approval
    last: dict[str, Any] | None = None  # the last model step
    answer: list[str] = field(default_factory=list)  # the final answer's pieces so far


def calls_of(blocks: list[dict[str, Any]]) -> list[ToolCall]:
    return [
        ToolCall(id=b["id"], name=b["name"], input=b.get("input"))
        for b in blocks
        if b.get("type") == "tool_use"
    ]


def replay(steps: list[dict[str, Any]]) -> Replay:
    """The turns the steps after the prompt make, and what the last turn still waits for."""
    r = Replay()
    for step in steps[1:]:
        kind = step.get("kind")
        if kind == "model":
            close_pending(r)
            blocks = list(step.get("blocks") or [])
            r.turns.append(Turn(role="assistant", text=step.get("text", ""), blocks=tuple(blocks)))
            r.model_turns += 1
            r.last = step
            r.pending = calls_of(blocks)
            if r.pending:
                r.answer = []
            else:
                r.answer.append(step.get("text", ""))
            if step.get("stop_reason") == "max_tokens" and not r.pending:
                r.turns.append(Turn(role="user", text=CONTINUE_PROMPT))
        elif kind == "tool_start":
            r.started.add(step["call_id"])
        elif kind == "awaiting_approval":
            r.awaiting.add(step["call_id"])
        elif kind == "approval":
            r.answers[step["call_id"]] = step
        elif kind == "tool_result":
            r.results[step["call_id"]] = ToolResult(
                step["call_id"], step.get("content", ""), bool(step.get("is_error"))
            )
    if r.pending and all(c.id in r.results for c in r.pending):
        close_pending(r)
    return r


def close_pending(r: Replay) -> None:
    """The user turn carrying the results of the last turn's calls."""
    if r.pending:
        results = tuple(r.results[c.id] for c in r.pending if c.id in r.results)
        r.turns.append(Turn(role="user", tool_results=results))
        r.pending = []


def redacted(value: Any) -> Any:
    """``value`` with known secrets and credential-like strings masked (logs.redact)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


MAIN_ARGUMENTS = ("command", "file_path", "pattern", "url", "path", "capability", "task")


def short(value: Any) -> str:
    """A tool input in one line, for events and the live view: its main argument, if any."""
    if isinstance(value, dict):
        main = next((value[k] for k in MAIN_ARGUMENTS if isinstance(value.get(k), str)), None)
        value = main if main is not None else json.dumps(value, ensure_ascii=False)
    text = " ".join(str(value).split())
    return text if len(text) <= SHORT_INPUT_CHARS else text[: SHORT_INPUT_CHARS - 1] + "…"


def append_step(
    state: StateStore, task_id: str, root_id: str, data: dict[str, Any], event: dict[str, Any]
) -> None:
    """A step written by someone other than the task's own loop (a person's answer, a mark):
    at the next free number, stepping past any written meanwhile."""
    # above the highest number, not at the count: after a rollback the numbers can have
    # a gap (a loop still running wrote past the restored steps), and a mark written
    # into it would sit below what a PauseWatch has read already
    n = max((int(s["n"]) for s in state.steps(task_id)), default=-1) + 1
    while not state.record_step(task_id, root_id, n, data, event):
        n += 1


def restart(state: StateStore, task: Task, note: str) -> None:
    """Mark a fresh start in the task's step log (``task retry --note``): the loop replays
    only what comes after it; the transcript keeps the earlier attempt."""
    append_step(state, task.id, task.root_id, {"kind": "restart", "note": note}, {})


def current(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps of the current attempt: those after the last ``restart``."""
    last = max((i for i, s in enumerate(steps) if s.get("kind") == "restart"), default=-1)
    return steps[last + 1 :]


def allowed_always(state: StateStore, task: Task, steps: list[dict[str, Any]]) -> set[str]:
    """Tools a person approved with ``--always``: ``allow`` steps on the tree's root."""
    root_steps = steps if task.is_root else state.steps(task.root_id)
    return {str(s["tool"]) for s in root_steps if s.get("kind") == "allow"}
