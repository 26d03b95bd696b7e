"""The offline provider: deterministic, clearly labelled output, no network.

Used when no API key resolves, so the whole pipeline runs anywhere. An
optional simulated think time (``llm.offline.latency_ms``) lets load and
crash tests exercise long-running tasks.

Offered tools, it uses them the same way every time (``TOOL_SCRIPTS``, by
role): the coder writes a module and its test and runs the test with
``Bash``, the architect writes a design note, infra runs a command, the
reviewer lists and reads the files — then each answers in text. Every file
it writes says ``[offline]``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from orchestra_cli.errors import TaskCancelled
from orchestra_cli.llm.base import LLMRequest, LLMResponse, ToolCall
from orchestra_cli.models import Usage

OFFLINE_LABEL = "[offline]"

_APP = '''"""[offline] A deterministic stand-in module written by the offline coder."""


def add(a: int, b: int) -> int:
    return a + b
'''
_TEST = '''"""[offline] The stand-in module's check, run with Bash."""
from app import add

assert add(2, 3) == 5
print("ok: add(2, 3) == 5")
'''
_DESIGN = "# [offline] Design\n\nComponents: app.py (the logic), test_app.py (its check).\n"

# role → the tool calls of each turn; a turn whose tools are not all offered ends the script
TOOL_SCRIPTS: dict[str, list[list[tuple[str, dict[str, Any]]]]] = {
    "coder": [
        [
            ("Write", {"file_path": "app.py", "content": _APP}),
            ("Write", {"file_path": "test_app.py", "content": _TEST}),
        ],
        [("Bash", {"command": "python3 test_app.py", "description": "run the check"})],
    ],
    "architect": [[("Write", {"file_path": "DESIGN.md", "content": _DESIGN})]],
    "infra": [[("Bash", {"command": "ls -la", "description": "look at the workspace"})]],
    "reviewer": [
        [("Glob", {"pattern": "**/*"})],
        [("Read", {"file_path": "app.py"})],
    ],
}


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
                time.sleep(self.latency)
        whole = f"{request.system}\n{request.prompt_prefix}{request.prompt}"
        digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
        calls = self._tool_calls(request, digest)
        if calls:
            blocks = [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in calls
            ]
            return self._response(request, "", "tool_use", calls, blocks)
        first_line = next((ln for ln in request.prompt.splitlines() if ln.strip()), "")[:120]
        used = sum(len(t.tool_results) for t in request.followups)
        after = f" (after {used} tool call(s))" if used else ""
        text = (
            f"{OFFLINE_LABEL} {request.role or 'agent'} {request.purpose} result {digest}{after}: "
            f"deterministic stand-in output for: {first_line}"
        )
        return self._response(request, text, "end_turn", [], [{"type": "text", "text": text}])

    def _tool_calls(self, request: LLMRequest, digest: str) -> list[ToolCall]:
        offered = {t.name for t in request.tools}
        script = TOOL_SCRIPTS.get(request.role, [])
        turn = sum(1 for t in request.followups if t.role == "assistant" and t.tool_calls)
        if not offered or turn >= len(script):
            return []
        wanted = script[turn]
        if not all(name in offered for name, _ in wanted):
            return []
        return [
            ToolCall(id=f"toolu_offline_{digest}_{turn}_{i}", name=name, input=dict(data))
            for i, (name, data) in enumerate(wanted)
        ]

    def _response(
        self,
        request: LLMRequest,
        text: str,
        stop: str,
        calls: list[ToolCall],
        blocks: list[dict[str, Any]],
    ) -> LLMResponse:
        out = max(1, (len(text) + sum(len(str(c.input)) for c in calls)) // 4)
        usage = Usage(calls=1, input_tokens=self.count_tokens(request), output_tokens=out)
        return LLMResponse(
            text=text,
            model=f"offline/{request.model}",
            provider=self.name,
            usage=usage,
            stop_reason=stop,
            tool_calls=calls,
            blocks=blocks,
        )

    def count_tokens(self, request: LLMRequest) -> int:
        """What the call is billed for: a quarter of the characters sent."""
        return max(1, len(request.system + request.prompt_prefix + request.prompt) // 4)
