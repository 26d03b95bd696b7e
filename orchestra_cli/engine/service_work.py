"""``TaskService``'s half for the agent loop's work and for people: transcripts, files,
the inbox, approvals, plan review, pause and resume (one entry point for the CLI and
the API; this module keeps service.py short)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestra_cli.errors import ConflictError
from orchestra_cli.models import Task

if TYPE_CHECKING:
    from orchestra_cli.backends import Backends
    from orchestra_cli.engine.approvals import Waiting
    from orchestra_cli.engine.workspace import FileEntry
    from orchestra_cli.state.base import StateStore


class WorkAndPeople:
    """Mixed into ``TaskService`` (which provides ``b``, ``state``, ``get``, ``capabilities``)."""

    b: Backends
    state: StateStore

    def get(self, task_id: str) -> Task:
        raise NotImplementedError

    def capabilities(self) -> set[str]:
        raise NotImplementedError

    def steps(self, task_id: str) -> tuple[Task, list[dict[str, Any]]]:
        """A task and its steps (``task transcript``), secrets redacted."""
        from orchestra_cli.engine.steps import redacted

        task = self.get(task_id)
        return task, [redacted(step) for step in self.state.steps(task.id)]

    def inbox(self) -> list[Waiting]:
        """Everything waiting for a person (``orchestra inbox``)."""
        from orchestra_cli.engine.approvals import inbox

        return inbox(self.state)

    def waiting(self, task: Task) -> list[Waiting]:
        """What a blocked task waits for."""
        from orchestra_cli.engine.approvals import waiting

        return waiting(self.state, task)

    def answer(
        self,
        task_id: str,
        *,
        approve: bool,
        reason: str = "",
        step: int | None = None,
        always: bool = False,
    ) -> Task:
        """Approve or reject a blocked task's waiting call(s) (``task approve|reject``)."""
        from orchestra_cli.engine.approvals import answer

        task = self.get(task_id)
        return answer(
            self.state,
            self.b.broker,
            task,
            approve=approve,
            reason=reason,
            step=step,
            always=always,
        )

    def plan(
        self, task_id: str, replace_with: Path | dict[str, Any] | None = None
    ) -> tuple[Task, dict[str, Any]]:
        """The plan a root waits on review with (``task plan``); ``replace_with``: a person's
        plan file, checked like a model's, recorded as the plan to approve."""
        from orchestra_cli.engine import plan_review

        task = self.get(task_id)
        recorded = plan_review.under_review(self.state, task)
        if recorded is None:
            latest, status = plan_review.latest(self.state, task.id)
            if replace_with is not None or latest is None:
                raise ConflictError(
                    f"task {task.id} has no plan waiting for review ({task.status})",
                    "submit with --review-plan (or set tasks.review_plans) to review plans",
                    api_hint="set tasks.review_plans to review plans before they run",
                )
            return task, {**plan_review.plan_shown(latest), "status": status}
        if replace_with is not None:
            caps = self.capabilities()
            plan = (
                plan_review.read_plan_file(replace_with, caps)
                if isinstance(replace_with, Path)
                else plan_review.check_plan(replace_with, caps)
            )
            plan_review.record(self.state, task, "plan", plan=plan, by="operator")
            recorded = plan_review.under_review(self.state, task) or recorded
        return task, {**plan_review.plan_shown(recorded), "status": "review"}

    def pause(self, task_id: str) -> Task:
        """Stop a tree taking new steps (``task pause``); returns its root."""
        from orchestra_cli.engine.approvals import pause

        return pause(self.state, self.get(task_id))

    def resume(self, task_id: str) -> list[Task]:
        """Let a paused tree go on (``task resume``); returns the tasks put back."""
        from orchestra_cli.engine.approvals import resume

        return resume(self.state, self.b.broker, self.get(task_id))

    def conflicts(self, task: Task) -> list[str]:
        """Files two branches of ``task``'s tree changed differently (the later one kept)."""
        found = self.state.events(root_id=task.root_id, limit=10_000)
        return [
            f"{e.data.get('path')}: {' and '.join(e.data.get('tasks') or [])} "
            f"(kept {e.data.get('kept')})"
            for e in found
            if e.type == "artifact_conflict"
        ]

    def files(self, task_id: str) -> tuple[Task, list[FileEntry]]:
        """A root's tree's final files, or a subtask's own changes (``task files``)."""
        from orchestra_cli.engine.workspace import task_files, tree_files

        task = self.get(task_id)
        if task.is_root:
            return task, list(tree_files(self.state, task.id).values())
        return task, task_files(self.state, task.id)

    def export(self, task_id: str, directory: Path) -> tuple[Task, list[FileEntry]]:
        """Write the final files of ``task_id``'s tree to ``directory`` (``task export``)."""
        from orchestra_cli.engine.workspace import export

        task = self.get(task_id)
        return task, export(self.state, task.root_id, directory)
