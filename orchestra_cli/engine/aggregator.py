"""Assembling a parent's result from its subtasks' results.

Offline the result is the subtask results under their titles, deterministic.
With a model, the ``aggregate`` prompt asks it to combine them into one
answer, charged to the parent task; if that call fails (budget spent, API
down) the parent still succeeds with the plain assembly, and the log says why.
"""

from __future__ import annotations

import logging
from typing import Protocol

from orchestra_cli.engine.budget import Meter
from orchestra_cli.errors import LLMError
from orchestra_cli.llm.base import LLMProvider, LLMRequest
from orchestra_cli.llm.outcomes import complete_text
from orchestra_cli.llm.prompts import PromptLibrary
from orchestra_cli.models import Task

log = logging.getLogger(__name__)


class Aggregator(Protocol):
    def aggregate(self, parent: Task, children: list[Task]) -> str: ...


def assemble(children: list[Task]) -> str:
    """Every subtask's result under its title."""
    return "\n\n".join(f"## {c.title} ({c.capability}, {c.agent})\n\n{c.result}" for c in children)


class ConcatAggregator:
    """The deterministic assembly (offline provider)."""

    def aggregate(self, parent: Task, children: list[Task]) -> str:
        return assemble(children)


class LLMAggregator:
    """Asks the model to combine the subtask results (``templates/prompts/aggregate.md``)."""

    def __init__(
        self,
        llm: LLMProvider,
        prompts: PromptLibrary,
        meter: Meter,
        *,
        model: str,
        max_tokens: int,
        temperature: float,
        max_continuations: int = 2,
    ) -> None:
        self.llm = llm
        self.prompts = prompts
        self.meter = meter
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_continuations = max_continuations

    def aggregate(self, parent: Task, children: list[Task]) -> str:
        plain = assemble(children)
        prefix, prompt = self.prompts.render_parts(
            "aggregate", title=parent.title, input=parent.input, results=plain
        )
        request = LLMRequest(
            system="You combine the work of a team of agents into one answer.",
            prompt=prompt,
            prompt_prefix=prefix,
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            purpose="aggregate",
            role="orchestrator",
        )
        try:
            metered = self.meter.wrap(self.llm, parent, agent="orchestrator")
            return complete_text(metered, request, max_continuations=self.max_continuations).text
        except LLMError as exc:
            log.warning(
                "aggregating task %s with the model failed (%s); using the plain assembly",
                parent.id,
                exc,
            )
            return plain
