"""Plan review: a tree whose plan a person approves before any of it runs.

With ``task submit --review-plan`` (the root's ``review_plan`` label) or the
``tasks.review_plans`` setting, the orchestrator plans the task, records the plan
as a ``plan`` step of the root and parks it as ``blocked``: nothing of the plan
runs, nothing more is spent. ``task plan ROOT`` shows the plan (``--set FILE``
replaces it, validated like a model's plan); ``task approve ROOT`` lets the
orchestrator carry it out as it stands; ``task reject ROOT --reason`` has it
plan again with the reason added (at most ``MAX_PLAN_REJECTIONS`` times, then the
tree fails).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orchestra_cli.engine.planner import Plan, PlannedSubtask
from orchestra_cli.engine.steps import append_step
from orchestra_cli.errors import UsageError
from orchestra_cli.models import Task
from orchestra_cli.state.base import StateStore
from orchestra_cli.status import Status

LABEL = "review_plan"
MAX_PLAN_REJECTIONS = 3
PLAN_KINDS = ("plan", "plan_approved", "plan_rejected")


def wants_review(task: Task, setting: bool) -> bool:
    value = task.labels.get(LABEL)
    return task.is_root and (setting if value is None else value.lower() in ("1", "true", "yes"))


def plan_json(plan: Plan) -> dict[str, Any]:
    return asdict(plan)


def plan_from(data: dict[str, Any]) -> Plan:
    subtasks = [PlannedSubtask(**s) for s in data.get("subtasks") or []]
    return Plan(
        data.get("planner", "operator"),
        data.get("reason", ""),
        capability=data.get("capability"),
        subtasks=subtasks,
        alternatives=list(data.get("alternatives") or []),
    )


def history(state: StateStore, root_id: str) -> list[dict[str, Any]]:
    return [s for s in state.steps(root_id) if s.get("kind") in PLAN_KINDS]


def latest(state: StateStore, root_id: str) -> tuple[dict[str, Any] | None, str]:
    """The latest plan and where it stands: ``review``, ``approved``, ``rejected``, ``none``."""
    steps = history(state, root_id)
    plans = [s for s in steps if s["kind"] == "plan"]
    if not plans:
        return None, "none"
    last = steps[-1]["kind"]
    status = {"plan": "review", "plan_approved": "approved", "plan_rejected": "rejected"}[last]
    return plans[-1], status


def rejections(state: StateStore, root_id: str) -> list[str]:
    return [
        str(s.get("reason") or "") for s in history(state, root_id) if s["kind"] == "plan_rejected"
    ]


def record(state: StateStore, root: Task, kind: str, **data: Any) -> None:
    append_step(state, root.id, root.id, {"kind": kind, **data}, {"kind": kind})


def under_review(state: StateStore, task: Task) -> dict[str, Any] | None:
    """The plan a blocked root waits on a person for, if that is what it waits for."""
    if task.status != Status.BLOCKED or not task.is_root:
        return None
    plan, status = latest(state, task.id)
    return plan if status == "review" else None


def read_plan_file(path: Path, capabilities: set[str]) -> dict[str, Any]:
    """A plan written by a person (``task plan --set FILE``), checked like a model's."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", "give a JSON file") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON ({exc})", "see `task plan ROOT --json`") from None
    return check_plan(data, capabilities, where=str(path))


def check_plan(data: Any, capabilities: set[str], *, where: str = "the plan") -> dict[str, Any]:
    """A person's plan (the shape `task plan --json` prints), checked like a model's."""
    from pydantic import ValidationError

    from orchestra_cli.engine.llm_planner import PlanOutput
    from orchestra_cli.llm.structured import describe_errors

    try:
        checked = PlanOutput.model_validate(data, context={"capabilities": capabilities})
    except ValidationError as exc:
        raise UsageError(
            f"{where}: {describe_errors(exc)}", "fix the plan and set it again"
        ) from None
    return plan_json(checked.to_plan("operator"))


def plan_shown(plan: dict[str, Any]) -> dict[str, Any]:
    """A recorded plan in the shape ``--set`` takes (titles for dependencies)."""
    body = plan["plan"]
    subtasks = body.get("subtasks") or []
    if not subtasks:
        return {
            "decompose": False,
            "reason": body.get("reason"),
            "capability": body.get("capability"),
        }
    return {
        "decompose": True,
        "reason": body.get("reason"),
        "subtasks": [
            {
                "title": s["title"],
                "capability": s["capability"],
                "input": s["input"],
                "depends_on": [subtasks[i]["title"] for i in s.get("depends_on") or []],
            }
            for s in subtasks
        ],
    }
