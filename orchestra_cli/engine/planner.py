"""The decision engine's planners: decide whether and how to split a task.

``RuleBasedPlanner`` is deterministic and offline. The LLM planner plugs into
the same ``Planner`` protocol and falls back to the rule-based one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestra_cli.models import Task


@dataclass
class PlannedSubtask:
    title: str
    capability: str
    input: str
    depends_on: list[int] = field(default_factory=list)  # indexes into Plan.subtasks


@dataclass
class Plan:
    """A leaf (``capability`` set, no subtasks) or a decomposition."""

    planner: str
    reason: str
    capability: str | None = None
    subtasks: list[PlannedSubtask] = field(default_factory=list)
    alternatives: list[str] = field(default_factory=list)

    @property
    def decomposed(self) -> bool:
        return bool(self.subtasks)

    def why(self) -> dict[str, str]:
        """Who decided and why: the data a route puts on the queued event."""
        return {"planner": self.planner, "why": self.reason}

    def record(self, task: Task) -> dict[str, Any]:
        """The ``decisions.jsonl`` line for this plan of ``task``."""
        return {
            "decision": "decompose" if self.decomposed else "route",
            "task_id": task.id,
            "root_id": task.root_id,
            "title": task.title,
            "planner": self.planner,
            "why": self.reason,
            "alternatives": self.alternatives,
            "capability": self.capability,
            "subtasks": [
                {"title": s.title, "capability": s.capability, "depends_on": s.depends_on}
                for s in self.subtasks
            ],
        }


class Planner(Protocol):
    name: str

    def plan(self, task: Task, capabilities: set[str]) -> Plan: ...


# capability → words that signal it, in the order the steps run
_SIGNALS: list[tuple[str, tuple[str, ...]]] = [
    ("architecture", ("design", "architect", "architecture", "schema", "interface", "api")),
    (
        "code",
        (
            "implement",
            "code",
            "build",
            "write",
            "fix",
            "function",
            "endpoint",
            "refactor",
            "test",
            "script",
            "program",
            "feature",
        ),
    ),
    (
        "infrastructure",
        (
            "deploy",
            "docker",
            "kubernetes",
            "k8s",
            "terraform",
            "infrastructure",
            "pipeline",
            "ci/cd",
            "monitoring",
            "server",
            "cluster",
            "helm",
        ),
    ),
    ("review", ("review", "audit", "assess", "critique")),
]

_STEP_TITLES = {
    "architecture": "Design: {title}",
    "code": "Implement: {title}",
    "infrastructure": "Infrastructure: {title}",
    "review": "Review: {title}",
}


def _matches(text: str) -> list[str]:
    words = set(re.findall(r"[a-z0-9/]+", text.lower()))
    found = []
    for capability, signals in _SIGNALS:
        if any(s in words or (len(s) > 4 and any(w.startswith(s) for w in words)) for s in signals):
            found.append(capability)
    return found


class RuleBasedPlanner:
    """Keyword rules: one kind of work → a leaf; several → design, build, review."""

    name = "rules"

    def __init__(self, default_capability: str = "code") -> None:
        self.default_capability = default_capability

    def plan(self, task: Task, capabilities: set[str]) -> Plan:
        if task.capability:
            return Plan(self.name, "capability given by the submitter", capability=task.capability)
        found = [c for c in _matches(f"{task.title}\n{task.input}") if c in capabilities]
        if not found:
            return Plan(
                self.name,
                f"no kind of work recognised; default capability {self.default_capability!r}",
                capability=self.default_capability,
                alternatives=sorted(capabilities),
            )
        if len(found) == 1:
            return Plan(
                self.name,
                f"one kind of work recognised: {found[0]}",
                capability=found[0],
                alternatives=["decompose"],
            )
        return self._decompose(task, found, capabilities)

    def _decompose(self, task: Task, found: list[str], capabilities: set[str]) -> Plan:
        steps = [c for c in found if c != "review"]
        if "review" in capabilities:
            steps.append("review")
        subtasks: list[PlannedSubtask] = []
        design_idx: int | None = None
        for cap in steps:
            if cap == "architecture":
                deps: list[int] = []
            elif cap == "review":
                deps = list(range(len(subtasks)))
            else:
                deps = [design_idx] if design_idx is not None else []
            subtasks.append(
                PlannedSubtask(
                    title=_STEP_TITLES.get(cap, f"{cap}: {{title}}").format(title=task.title),
                    capability=cap,
                    input=task.input,
                    depends_on=deps,
                )
            )
            if cap == "architecture":
                design_idx = len(subtasks) - 1
        return Plan(
            self.name,
            f"several kinds of work recognised ({', '.join(found)}): "
            "design first, build in parallel, review last",
            subtasks=subtasks,
            alternatives=[f"single {c} task" for c in found],
        )
