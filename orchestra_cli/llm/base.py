"""The LLMProvider protocol.

A request is one system prompt and one user prompt, optionally with tools
(for structured output) and the turns that followed (for a re-ask). The
shapes are provider-neutral; each provider maps them to its own API.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from orchestra_cli.models import Usage


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: a name and a JSON schema for its input."""

    name: str
    description: str
    input_schema: dict[str, Any]


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
    """A turn after the first prompt: the model's answer or our reply to it."""

    role: Literal["user", "assistant"]
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()


@dataclass
class LLMRequest:
    """One model call: a system prompt and a user prompt."""

    system: str
    prompt: str
    model: str
    max_tokens: int = 2048
    temperature: float = 0.2
    purpose: str = "execute"  # plan | execute | review | aggregate
    role: str = ""
    cancel: threading.Event | None = field(default=None, repr=False)
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: str | None = None  # force a call to this tool
    followups: list[Turn] = field(default_factory=list)


@dataclass
class LLMResponse:
    text: str
    model: str
    provider: str
    usage: Usage
    stop_reason: str = "end_turn"
    tool_calls: list[ToolCall] = field(default_factory=list)


class LLMProvider(Protocol):
    name: str

    def complete(self, request: LLMRequest) -> LLMResponse:
        """Run one call; raise LLMError (or TaskCancelled when ``cancel`` is set)."""
        ...
