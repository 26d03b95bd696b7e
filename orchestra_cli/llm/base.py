"""The LLMProvider protocol."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from orchestra_cli.models import Usage


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


@dataclass
class LLMResponse:
    text: str
    model: str
    provider: str
    usage: Usage
    stop_reason: str = "end_turn"


class LLMProvider(Protocol):
    name: str

    def complete(self, request: LLMRequest) -> LLMResponse:
        """Run one call; raise LLMError (or TaskCancelled when ``cancel`` is set)."""
        ...
