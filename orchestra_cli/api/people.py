"""API routes for what agents did and what waits for a person: transcripts, files, the
inbox, approvals, plan review, pause and resume — the `orchestra task …` commands'
JSON, through the same ``TaskService``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict, Field

from orchestra_cli.api import docs
from orchestra_cli.engine.service import TaskService
from orchestra_cli.shapes import task_json
from orchestra_cli.util import NOT_BLANK


class ApproveBody(BaseModel):
    """``POST /v1/tasks/{id}/approve``: the call(s) a blocked task waits on run."""

    model_config = ConfigDict(extra="forbid")

    step: int | None = Field(default=None, ge=0, description="only the call at this step")
    always: bool = Field(default=False, description="allow the tool for the rest of the tree")


class RejectBody(BaseModel):
    """``POST /v1/tasks/{id}/reject``: the call (or plan) does not run; the model is told why."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, pattern=NOT_BLANK, max_length=10_000)
    step: int | None = Field(default=None, ge=0)


def people_routes(router: APIRouter, service: TaskService) -> None:
    """Add the routes to ``router`` (the token-guarded /v1 one)."""

    @router.get("/inbox")
    def inbox() -> list[dict[str, Any]]:
        """What waits for a person: calls to approve, plans to review, paused trees."""
        return [w.to_json() for w in service.inbox()]

    @router.post("/tasks/{task_id}/approve", responses=docs.CHANGES_WITH_BODY)
    def approve(task_id: str, body: ApproveBody | None = None) -> dict[str, Any]:
        """Approve what a blocked task waits on (a call, or its tree's plan)."""
        body = body or ApproveBody()
        return task_json(service.answer(task_id, approve=True, step=body.step, always=body.always))

    @router.post("/tasks/{task_id}/reject", responses=docs.CHANGES_WITH_BODY)
    def reject(task_id: str, body: RejectBody) -> dict[str, Any]:
        """Reject it, with the reason the model (or the planner) reads."""
        return task_json(service.answer(task_id, approve=False, reason=body.reason, step=body.step))

    @router.get("/tasks/{task_id}/plan", responses=docs.BY_ID)
    def get_plan(task_id: str) -> dict[str, Any]:
        """The plan a root waits on review with (or its latest plan)."""
        task, shown = service.plan(task_id)
        return {"task_id": task.id, **shown}

    @router.put("/tasks/{task_id}/plan", responses=docs.CHANGES_WITH_BODY)
    def set_plan(
        task_id: str, plan: Annotated[dict[str, Any], Body(description="as GET returns")]
    ) -> dict[str, Any]:
        """Replace the plan under review (checked like a model's plan)."""
        task, shown = service.plan(task_id, plan)
        return {"task_id": task.id, **shown}

    @router.post("/tasks/{task_id}/pause", responses=docs.CHANGES)
    def pause(task_id: str) -> dict[str, Any]:
        """Stop the tree taking new steps."""
        return {"root_id": service.pause(task_id).id, "paused": True}

    @router.post("/tasks/{task_id}/resume", responses=docs.CHANGES)
    def resume(task_id: str) -> dict[str, Any]:
        """Let a paused tree go on."""
        return {"resumed": [t.id for t in service.resume(task_id)]}

    @router.get("/tasks/{task_id}/transcript", responses=docs.BY_ID)
    def transcript(task_id: str) -> dict[str, Any]:
        """Every step of a task, secrets masked (`task transcript --json`)."""
        task, steps = service.steps(task_id)
        return {"task_id": task.id, "status": task.status.value, "steps": steps}

    @router.get("/tasks/{task_id}/files", responses=docs.BY_ID)
    def files(task_id: str) -> dict[str, Any]:
        """A subtask's changed files, or a root's tree's final files (`task files`)."""
        task, entries = service.files(task_id)
        return {
            "task_id": task.id,
            "files": [
                {"path": e.path, "size": e.size, "sha256": e.sha, "task_id": e.task_id}
                for e in entries
            ],
        }

    @router.post("/tasks/{task_id}/retry", responses=docs.CHANGES)
    def retry(
        task_id: str,
        note: Annotated[
            str | None,
            Query(min_length=1, pattern=NOT_BLANK, description="feedback: re-run a finished step"),
        ] = None,
    ) -> dict[str, Any]:
        """Run a failed or cancelled task again; with ``note``, any finished step."""
        return task_json(service.retry(task_id, note=note))
