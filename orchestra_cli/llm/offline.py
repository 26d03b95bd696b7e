"""The offline provider: deterministic, clearly labelled output, no network.

Used when no API key resolves, so the whole pipeline runs anywhere. An
optional simulated think time (``llm.offline.latency_ms``) lets load and
crash tests exercise long-running tasks.

Offered tools, it uses them the same way every time (``TOOL_SCRIPTS``, by
role): the coder writes a module and its test and runs the test with
``Bash``, the architect writes a design note, infra runs a command, the
reviewer lists and reads the files — then each answers in text. Every file
it writes says ``[offline]``.

It keeps the protocol as the API does: a set ``cancel`` stops the call, an
``output_schema`` gets a JSON answer that follows it (``schema_example``),
``max_tokens`` cuts the output (``stop_reason: max_tokens``, a tool call cut
is dropped) and a continuation (``outcomes.complete_text``) goes on where the
cut answer stopped; input is counted from everything the request sends; a
tool result that answers no call of the turn before it, or a call left
without its result, is rejected as the API's 400 is.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

from orchestra_cli.errors import LLMError, TaskCancelled
from orchestra_cli.llm.base import LLMRequest, LLMResponse, ToolCall, Turn, tool_pairing_problem
from orchestra_cli.llm.outcomes import CONTINUE_PROMPT
from orchestra_cli.llm.schema_example import example
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
        self._think(request.cancel)
        problem = tool_pairing_problem(request.followups)
        if problem is not None:  # the API's 400: a caller's bug, never retried
            error = LLMError(
                f"the offline model rejected the request: {problem}",
                "each tool result must answer a call of the turn just before it",
            )
            error.retryable = False
            raise error
        whole = f"{request.system}\n{request.prompt_prefix}{request.prompt}"
        digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
        calls = self._tool_calls(request, digest)
        if calls:
            blocks = [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in calls
            ]
            return self._response(request, "", "tool_use", calls, blocks)
        text = self._answer(request, digest)
        said = _continued(request.followups)
        if said and text.startswith(said):
            text = text[len(said) :]
        return self._response(request, text, "end_turn", [], [{"type": "text", "text": text}])

    def _think(self, cancel: threading.Event | None) -> None:
        """The simulated think time; a cancel (set before or during it) stops the call."""
        if cancel is not None and cancel.is_set():
            raise TaskCancelled("cancelled before calling the model")
        if self.latency <= 0:
            return
        if cancel is None:
            time.sleep(self.latency)
        elif cancel.wait(self.latency):
            raise TaskCancelled("cancelled while waiting for the model")

    def _answer(self, request: LLMRequest, digest: str) -> str:
        """The whole answer: JSON following ``output_schema``, else a labelled line."""
        if request.output_schema is not None:
            return json.dumps(example(request.output_schema))
        first_line = next((ln for ln in request.prompt.splitlines() if ln.strip()), "")[:120]
        used = sum(len(t.tool_results) for t in request.followups)
        after = f" (after {used} tool call(s))" if used else ""
        return (
            f"{OFFLINE_LABEL} {request.role or 'agent'} {request.purpose} result {digest}{after}: "
            f"deterministic stand-in output for: {first_line}"
        )

    def _tool_calls(self, request: LLMRequest, digest: str) -> list[ToolCall]:
        offered = {t.name for t in request.tools}
        script = TOOL_SCRIPTS.get(request.role, [])
        turn = sum(1 for t in request.followups if t.role == "assistant" and t.calls())
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
        if out > request.max_tokens:  # cut as the API cuts: the text shortened, no tool call
            text, calls = text[: request.max_tokens * 4], []
            out, stop = request.max_tokens, "max_tokens"
            blocks = [{"type": "text", "text": text}] if text else []
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
        return max(1, len(request.as_text()) // 4)


def _continued(followups: list[Turn]) -> str:
    """The text already given when the request continues a cut answer: the assistant
    pieces of the trailing (answer, "continue") pairs ``complete_text`` appended."""
    pieces: list[str] = []
    end = len(followups)
    while end >= 2 and followups[end - 1].text == CONTINUE_PROMPT:
        answer = followups[end - 2]
        if answer.role != "assistant" or answer.calls():
            break
        pieces.insert(0, answer.text)
        end -= 2
    return "".join(pieces)
