"""The LLM planner: asks the model for a plan, validates it, falls back to rules.

The plan comes back as JSON output (``output_config.format``, never a forced
tool call, which current models refuse) whose schema lists the capabilities
registered right now as an enum, so constrained decoding can only produce a
routable plan; pydantic validates it again (unknown capabilities, dangling
or circular dependencies are validation errors, so the model is re-asked
with them). A plan that is still unusable, or any
model failure, falls back to ``RuleBasedPlanner`` and the plan's reason
says why, so ``decisions.jsonl`` records it.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Self

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from orchestra_cli.engine.budget import Meter
from orchestra_cli.engine.planner import Plan, PlannedSubtask, Planner
from orchestra_cli.errors import LLMError, LLMOutputInvalid
from orchestra_cli.llm.base import LLMProvider, LLMRequest
from orchestra_cli.llm.prompts import PromptLibrary
from orchestra_cli.llm.structured import complete_structured
from orchestra_cli.logs import redact
from orchestra_cli.models import Task

log = logging.getLogger(__name__)

PLAN_PROMPT = "plan"
MAX_SUBTASKS = 12
SYSTEM = (
    "You plan work for a team of software agents. Answer with the plan as JSON. "
    "Split the task only when it needs several kinds of work; otherwise route it whole."
)


def _capabilities(info: ValidationInfo) -> set[str] | None:
    context = info.context if isinstance(info.context, dict) else None
    caps = context.get("capabilities") if context else None
    return set(caps) if caps is not None else None


class PlanStep(BaseModel):
    title: str = Field(min_length=1, max_length=200, description="short, unique")
    capability: str = Field(description="one of the available capabilities")
    input: str = Field(min_length=1, description="what this subtask must do")
    depends_on: list[str] = Field(
        default_factory=list, description="titles of earlier subtasks this one needs"
    )

    @field_validator("capability")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        caps = _capabilities(info)
        if caps is not None and value not in caps:
            raise ValueError(f"unknown capability {value!r}; choose from {sorted(caps)}")
        return value


class PlanOutput(BaseModel):
    """What the model returns: route the task whole, or split it."""

    decompose: bool = Field(description="true to split into subtasks")
    reason: str = Field(min_length=1, description="why, in one sentence")
    capability: str | None = Field(None, description="when not splitting: the capability")
    subtasks: list[PlanStep] = Field(default_factory=list, max_length=MAX_SUBTASKS)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Self:
        if not self.decompose:
            caps = _capabilities(info)
            if not self.capability:
                raise ValueError("capability is required when decompose is false")
            if caps is not None and self.capability not in caps:
                raise ValueError(
                    f"unknown capability {self.capability!r}; choose from {sorted(caps)}"
                )
            return self
        if len(self.subtasks) < 2:
            raise ValueError("a decomposition needs at least 2 subtasks")
        seen: set[str] = set()
        for step in self.subtasks:
            if step.title in seen:
                raise ValueError(f"duplicate subtask title {step.title!r}")
            missing = [d for d in step.depends_on if d not in seen]
            if missing:
                raise ValueError(
                    f"subtask {step.title!r} depends on {missing[0]!r}, which is not an "
                    "earlier subtask (list subtasks in dependency order)"
                )
            seen.add(step.title)
        return self

    def to_plan(self, planner: str) -> Plan:
        if not self.decompose:
            return Plan(planner, self.reason, capability=self.capability)
        index = {s.title: i for i, s in enumerate(self.subtasks)}
        steps = [
            PlannedSubtask(
                title=s.title,
                capability=s.capability,
                input=s.input,
                depends_on=[index[d] for d in s.depends_on],
            )
            for s in self.subtasks
        ]
        return Plan(planner, self.reason, subtasks=steps, alternatives=["route whole"])


def plan_schema(capabilities: set[str]) -> dict[str, Any]:
    """``PlanOutput``'s JSON schema with ``capabilities`` as the enum of every capability."""
    schema = copy.deepcopy(_BASE_SCHEMA)
    options = sorted(capabilities)
    step = schema["$defs"]["PlanStep"]["properties"]["capability"]
    step["enum"] = options
    top = schema["properties"]["capability"]
    top["anyOf"] = [{"type": "string", "enum": options}, {"type": "null"}]
    return schema


_BASE_SCHEMA = PlanOutput.model_json_schema()


class LLMPlanner:
    """``Planner`` backed by the model, with ``fallback`` when the plan is unusable."""

    name = "llm"

    def __init__(
        self,
        llm: LLMProvider,
        prompts: PromptLibrary,
        fallback: Planner,
        meter: Meter,
        *,
        model: str,
        max_tokens: int = 2048,
        temperature: float = 0.2,
        max_reasks: int = 2,
    ) -> None:
        self.llm = llm
        self.prompts = prompts
        self.fallback = fallback
        self.meter = meter
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_reasks = max_reasks

    def plan(self, task: Task, capabilities: set[str]) -> Plan:
        if task.capability:
            return self.fallback.plan(task, capabilities)  # the submitter chose; no call
        try:
            return self._ask(task, capabilities)
        except LLMError as exc:
            return self._fall_back(task, capabilities, exc)

    def _ask(self, task: Task, capabilities: set[str]) -> Plan:
        prompt = self.prompts.render(
            PLAN_PROMPT,
            title=task.title,
            input=task.input,
            capabilities=", ".join(sorted(capabilities)),
        )
        request = LLMRequest(
            system=SYSTEM,
            prompt=prompt,
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            purpose="plan",
            role="planner",
        )
        result = complete_structured(
            self.meter.wrap(self.llm, task, agent="orchestrator"),
            request,
            PlanOutput,
            schema=plan_schema(capabilities),
            max_reasks=self.max_reasks,
            context={"capabilities": capabilities},
        )
        plan = result.value.to_plan(self.name)
        if result.attempts > 1:
            plan.reason += f" (valid on attempt {result.attempts})"
        return plan

    def _fall_back(self, task: Task, capabilities: set[str], exc: LLMError) -> Plan:
        raw: Any = exc.raw_output if isinstance(exc, LLMOutputInvalid) else ""
        log.warning(
            "task %s: LLM plan unusable (%s); using the rule-based planner%s",
            task.id,
            exc.message,
            f"; raw output: {redact(str(raw))[:500]}" if raw else "",
        )
        plan = self.fallback.plan(task, capabilities)
        plan.reason = f"LLM plan unusable ({exc.message}); rule-based: {plan.reason}"
        plan.alternatives = [*plan.alternatives, "llm plan (rejected)"]
        return plan
