"""The request an agent sends for one step: the tree's goal first (the same for every
step of a tree: a cached prefix), then this step with its dependencies' results and
what the role did recently in the tree."""

from __future__ import annotations

import threading

from orchestra_cli.backends import Backends
from orchestra_cli.engine.roles import RoleDefinition
from orchestra_cli.llm.base import LLMRequest
from orchestra_cli.llm.prompts import PromptLibrary
from orchestra_cli.models import Task

MEMORY_LINES = 200
MEMORY_ITEMS = 5


def context(backends: Backends, task: Task) -> str:
    """The results of the steps ``task`` depends on."""
    parts = []
    for dep_id in task.depends_on:
        dep = backends.state.get_task(dep_id)
        parts.append(f"## {dep.title}\n{dep.result}")
    return "\n\n".join(parts) or "(none)"


def memory(backends: Backends, role: RoleDefinition, task: Task) -> str:
    """What agents of ``role`` did recently in ``task``'s tree."""
    if task.is_root:  # memory is shared within a tree: a lone task has nobody to hear it
        return "(none)"
    items = [
        m
        for m in backends.journals.memory(role.name).tail(MEMORY_LINES)
        if m.get("root_id") == task.root_id and m.get("task_id") != task.id
    ]
    return (
        "\n".join(f"- {m.get('title')}: {m.get('summary')}" for m in items[-MEMORY_ITEMS:])
        or "(none)"
    )


def step_request(
    backends: Backends,
    role: RoleDefinition,
    prompts: PromptLibrary,
    task: Task,
    cancel: threading.Event,
) -> LLMRequest:
    root = task if task.is_root else backends.state.get_task(task.root_id)
    step_title, step_input = (
        ("the whole task above", "Do the whole task.") if task.is_root else (task.title, task.input)
    )
    prefix, prompt = prompts.render_parts(
        role.prompt,
        tree_title=root.title,
        tree_input=root.input,
        title=step_title,
        input=step_input,
        context=context(backends, task),
        memory=memory(backends, role, task),
    )
    return LLMRequest(
        system=role.description,
        prompt=prompt,
        prompt_prefix=prefix,
        model=role.model,
        max_tokens=role.max_tokens,
        temperature=role.temperature,
        purpose="execute",
        role=role.name,
        cancel=cancel,
        effort=role.effort,
    )
