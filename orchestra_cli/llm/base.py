"""The LLMProvider protocol.

A request is a system prompt and a user prompt — the prompt's stable
``prompt_prefix`` (the tree's shared context) first, so it can be cached —
optionally with tools, a JSON schema the answer must follow (structured
output) and the turns that followed (a re-ask, a continuation). The shapes
are provider-neutral; each provider maps them to its own API.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from orchestra_cli.models import Usage

Effort = Literal["low", "medium", "high", "xhigh", "max"]


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: a name and a JSON schema for its input."""

    name: str
    description: str
    input_schema: dict[str, Any]
    strict: bool = False  # constrained decoding of the input (structured outputs)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    input: Any


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    content: str
    is_error: bool = False


@dataclass(frozen=True)
class Turn:
    """A turn after the first prompt: the model's answer or our reply to it.

    ``blocks`` is an assistant turn's content exactly as the provider returned
    it (thinking blocks with their signatures included); when set it is sent
    back unchanged instead of being rebuilt from ``text`` and ``tool_calls``.
    """

    role: Literal["user", "assistant"]
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    blocks: tuple[dict[str, Any], ...] = ()

    def calls(self) -> tuple[ToolCall, ...]:
        """The tool calls this turn makes (from ``blocks`` when they are set)."""
        if not self.blocks:
            return self.tool_calls
        return tuple(
            ToolCall(id=b["id"], name=b["name"], input=b.get("input"))
            for b in self.blocks
            if b.get("type") == "tool_use"
        )


def tool_pairing_problem(followups: list[Turn]) -> str | None:
    """What the Messages API rejects in ``followups``: a tool result that answers no call
    of the turn just before it, or a call whose result is not in the next turn."""
    before: set[str] = set()  # the first prompt makes no call
    for turn in followups:
        answered = {r.call_id for r in turn.tool_results}
        if answered - before:
            return f"tool result(s) for {', '.join(sorted(answered - before))} answer no call"
        if before - answered:
            return f"tool call(s) {', '.join(sorted(before - answered))} got no result"
        before = {c.id for c in turn.calls()} if turn.role == "assistant" else set()
    return None


@dataclass
class LLMRequest:
    """One model call."""

    system: str
    prompt: str
    model: str
    max_tokens: int = 2048
    temperature: float = 0.2  # kept for role files; current models take no sampling knobs
    purpose: str = "execute"  # plan | execute | review | aggregate
    role: str = ""
    cancel: threading.Event | None = field(default=None, repr=False)
    prompt_prefix: str = ""  # stable across a tree's calls: sent first, cached
    tools: list[ToolSpec] = field(default_factory=list)
    output_schema: dict[str, Any] | None = None  # JSON outputs: the answer's schema
    effort: Effort | None = None
    followups: list[Turn] = field(default_factory=list)

    def as_text(self) -> str:
        """Every text the request sends, for an input-size estimate."""
        parts = [self.system, self.prompt_prefix, self.prompt]
        parts += [f"{t.name}{t.description}{t.input_schema}" for t in self.tools]
        if self.output_schema is not None:
            parts.append(str(self.output_schema))
        for turn in self.followups:
            parts.append(turn.text)
            parts += [str(b) for b in turn.blocks]
            parts += [f"{c.name}{c.input}" for c in turn.tool_calls]
            parts += [r.content for r in turn.tool_results]
        return "".join(parts)


@dataclass
class LLMResponse:
    text: str
    model: str
    provider: str
    usage: Usage
    stop_reason: str = "end_turn"
    tool_calls: list[ToolCall] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)  # as returned, to send back
    thinking: str = ""  # the thinking summaries, for transcripts

    def as_turn(self) -> Turn:
        """This answer as the assistant turn of a continued conversation."""
        return Turn(
            role="assistant",
            text=self.text,
            tool_calls=tuple(self.tool_calls),
            blocks=tuple(self.blocks),
        )


class LLMProvider(Protocol):
    name: str

    def complete(self, request: LLMRequest) -> LLMResponse:
        """Run one call; raise LLMError (or TaskCancelled when ``cancel`` is set)."""
        ...

    def count_tokens(self, request: LLMRequest) -> int:
        """The input tokens ``request`` would be billed for (an upper bound if estimated)."""
        ...


def awaitable(provider: LLMProvider) -> bool:
    """Whether ``provider`` also has ``async def acomplete(request)`` (the same call as a
    coroutine on ``orchestra_cli.aio.SHARED``'s loop: an agent's slots need no thread)."""
    return callable(getattr(provider, "acomplete", None))
