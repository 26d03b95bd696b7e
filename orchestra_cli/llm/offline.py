"""The offline provider: deterministic, clearly labelled output, no network.

Used when no API key resolves, so the whole pipeline runs anywhere. An
optional simulated think time (``llm.offline.latency_ms``) lets load and
crash tests exercise long-running tasks.
"""

from __future__ import annotations

import hashlib

from orchestra_cli.errors import TaskCancelled
from orchestra_cli.llm.base import LLMRequest, LLMResponse
from orchestra_cli.models import Usage

OFFLINE_LABEL = "[offline]"


class OfflineProvider:
    name = "offline"

    def __init__(self, latency_ms: int = 0) -> None:
        self.latency = latency_ms / 1000

    def complete(self, request: LLMRequest) -> LLMResponse:
        if self.latency > 0:
            if request.cancel is not None:
                if request.cancel.wait(self.latency):
                    raise TaskCancelled("cancelled while waiting for the model")
            else:
                import time

                time.sleep(self.latency)
        whole = f"{request.system}\n{request.prompt_prefix}{request.prompt}"
        digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
        first_line = next((ln for ln in request.prompt.splitlines() if ln.strip()), "")[:120]
        text = (
            f"{OFFLINE_LABEL} {request.role or 'agent'} {request.purpose} result {digest}: "
            f"deterministic stand-in output for: {first_line}"
        )
        usage = Usage(
            calls=1, input_tokens=self.count_tokens(request), output_tokens=max(1, len(text) // 4)
        )
        return LLMResponse(
            text=text, model=f"offline/{request.model}", provider=self.name, usage=usage
        )

    def count_tokens(self, request: LLMRequest) -> int:
        """What the call is billed for: a quarter of the characters sent."""
        return max(1, len(request.system + request.prompt_prefix + request.prompt) // 4)
