"""`orchestra task transcript`: a task's steps as a person reads them."""

from __future__ import annotations

import json
from typing import Any

from orchestra_cli.models import Task
from orchestra_cli.util import iso

TOOL_RESULT_CHARS = 2000  # of a tool's result in the text view (--json has it whole)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in (text or "").splitlines()) or prefix + "(empty)"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}\n… [{len(text) - limit:,} more chars]"


def _model(step: dict[str, Any]) -> list[str]:
    usage = step.get("usage") or {}
    head = (
        f"── turn {step.get('turn', '?')} · {step.get('model', '')} · "
        f"stop {step.get('stop_reason')} · {usage.get('input_tokens', 0):,} in / "
        f"{usage.get('output_tokens', 0):,} out"
        + (f" · {step['duration_s']:.1f}s" if "duration_s" in step else "")
    )
    lines = [head]
    if step.get("thinking"):
        lines += ["  thinking:", _indent(step["thinking"])]
    if step.get("text"):
        lines += ["  text:", _indent(step["text"])]
    for block in step.get("blocks") or []:
        if block.get("type") == "tool_use":
            lines.append(
                f"  → {block['name']} {json.dumps(block.get('input'), ensure_ascii=False)}"
            )
    return lines


def _step(step: dict[str, Any]) -> list[str]:
    kind = step.get("kind")
    when = iso(step["time"]) if step.get("time") else ""
    if kind == "prompt":
        tools = ", ".join(step.get("tools") or []) or "-"
        return [
            f"── prompt (step {step['n']}, {when}) · tools: {tools}",
            "  system:",
            _indent(step.get("system", "")),
            "  prompt:",
            _indent((step.get("prefix") or "") + (step.get("prompt") or "")),
        ]
    if kind == "model":
        return _model(step)
    if kind == "tool_start":
        return []  # its result says the rest; a start without one is shown below
    if kind == "tool_result":
        status = "error" if step.get("is_error") else "ok"
        return [
            f"── {step.get('name')} → {status} ({step.get('duration_s', 0):.1f}s)",
            _indent(_cut(step.get("content", ""), TOOL_RESULT_CHARS)),
        ]
    return [f"── {kind}"]


def render(task: Task, steps: list[dict[str, Any]]) -> str:
    """The transcript as text: each step's header and its content, indented."""
    done = {s["call_id"] for s in steps if s.get("kind") == "tool_result"}
    lines = [f"task {task.id} · {task.title} · {task.status}"]
    for step in steps:
        lines += _step(step)
        if step.get("kind") == "tool_start" and step.get("call_id") not in done:
            lines.append(f"── {step.get('name')} … running (or its agent stopped)")
    if not steps:
        lines.append("(no steps: the task has not run, or it made a single model call)")
    return "\n".join(lines) + "\n"
