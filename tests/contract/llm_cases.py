"""The LLM providers the contract suite runs over.

The offline provider, and the Anthropic provider through the real SDK on the
local fake Messages API. What the fake's model says is ``ContractModel``: a
deterministic model that calls the first tool offered, answers a JSON schema
with a value following it, and continues a cut answer where it stopped — what
the offline provider does by itself. A case can slow its model down, and says
which behaviours it cannot express, and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from orchestra_cli.llm.anthropic import AnthropicProvider
from orchestra_cli.llm.base import LLMProvider, LLMRequest, ToolSpec
from orchestra_cli.llm.offline import OfflineProvider
from orchestra_cli.llm.outcomes import CONTINUE_PROMPT
from orchestra_cli.llm.schema_example import example
from orchestra_cli.settings import LLMSettings
from orchestra_cli.tools.toolbox import BUILTINS
from tests.llm.fake_anthropic import FakeAnthropic, Reply, refusal, text, tool_use

MODEL = LLMSettings().model  # today's default, with the API rules the fake keeps for it
ANSWER = "The contract model's whole answer, long enough to be cut at a small max_tokens. " * 3


def request(**kw: Any) -> LLMRequest:
    """A request as an agent of the coder role sends it (the role the offline tools follow)."""
    values: dict[str, Any] = {
        "system": "You are the coder. Be brief.",
        "prompt": "Write app.py and check it.",
        "model": MODEL,
        "role": "coder",
    }
    return LLMRequest(**(values | kw))


def tools(*names: str) -> list[ToolSpec]:
    """The built-in tools' real specs."""
    return [BUILTINS[name]().spec() for name in names]


@dataclass
class ContractModel:
    """The fake endpoint's answer to any request no test scripted."""

    delay: float = 0.0

    def __call__(self, body: dict[str, Any]) -> Reply:
        fmt = (body.get("output_config") or {}).get("format") or {}
        if fmt.get("type") == "json_schema":
            return text(json.dumps(example(fmt["schema"])), delay=self.delay)
        messages = body.get("messages") or []
        offered = body.get("tools") or []
        if offered and not _has_tool_results(messages[-1]):
            first = offered[0]
            return tool_use(first["name"], example(first["input_schema"]), delay=self.delay)
        said = _continued(messages)
        return text(ANSWER[len(said) :] if ANSWER.startswith(said) else ANSWER, delay=self.delay)


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content") or []
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _has_tool_results(message: dict[str, Any]) -> bool:
    return any(b.get("type") == "tool_result" for b in _blocks(message))


def _continued(messages: list[dict[str, Any]]) -> str:
    """The assistant text of the trailing (answer, "continue") pairs."""
    pieces: list[str] = []
    end = len(messages)
    while end >= 3 and [b.get("text") for b in _blocks(messages[end - 1])] == [CONTINUE_PROMPT]:
        said = _blocks(messages[end - 2])
        pieces.insert(0, "".join(b.get("text", "") for b in said if b.get("type") == "text"))
        end -= 2
    return "".join(pieces)


@dataclass
class Case:
    """One provider, how to make its model slow or refuse, and what it cannot do."""

    provider: LLMProvider
    fake: FakeAnthropic | None = None
    model: ContractModel | None = None
    cannot: dict[str, str] = field(default_factory=dict)  # behaviour → why not

    def slow(self, seconds: float) -> None:
        """Every later call takes ``seconds`` before its answer begins."""
        if isinstance(self.provider, OfflineProvider):
            self.provider.latency = seconds
        elif self.model is not None:
            self.model.delay = seconds

    def refuse_next(self) -> None:
        assert self.fake is not None, self.cannot.get("refusal")
        self.fake.script(refusal())


OFFLINE_CANNOT = {
    "refusal": "the offline provider never refuses: its answers are deterministic stand-ins "
    "with nothing to decline, and no request can script one",
}


@contextmanager
def open_case(kind: str) -> Iterator[Case]:
    if kind == "offline":
        yield Case(OfflineProvider(), cannot=OFFLINE_CANNOT)
        return
    fake = FakeAnthropic().start()
    model = ContractModel()
    fake.default = model
    provider = AnthropicProvider(fake.api_key, base_url=fake.url, max_attempts=2, backoff_seconds=0)
    try:
        yield Case(provider, fake, model)
    finally:
        provider.close()
        fake.stop()
