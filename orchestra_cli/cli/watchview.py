"""The live view of `task watch` on a terminal: a header and one compact row a task.

The header says how far the tree is (subtasks done of all), how long it has
taken and what it has spent; each row a task's short id, status, agent,
attempt, time in queue or running, and tokens, its title indented under its
parent's without repeating the parent's text; below, why a task cannot move
and the command that fixes it. Every column but the title has a fixed
width, so at 80 columns no field wraps (the title is cut with an ellipsis).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from orchestra_cli.cli.render import STATUS_ICON, STATUS_STYLE
from orchestra_cli.ids import short_id
from orchestra_cli.models import Task, Usage
from orchestra_cli.status import TERMINAL, Status
from orchestra_cli.util import human_duration, now

if TYPE_CHECKING:
    from rich.console import RenderableType

    from orchestra_cli.engine.blockers import Blocker
    from orchestra_cli.models import Event

# name, width (None: the rest), right-aligned
COLUMNS = (
    ("ID", 8, False),
    ("STATUS", 11, False),
    ("AGENT", 12, False),
    ("TRY", 3, True),
    ("TIME", 6, True),
    ("TOKENS", 6, True),
    ("TITLE", None, False),
)


def compact_count(n: int) -> str:
    """1234 → 1.2k, 2_500_000 → 2.5M: a token count in at most 6 characters."""
    if n < 1000:
        return str(n)
    for size, unit in ((1_000_000_000, "G"), (1_000_000, "M"), (1000, "k")):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(n)  # pragma: no cover - the loop always returns


def own_title(title: str, parent_title: str | None) -> str:
    """A subtask's title without its parent's text (``Design: <parent>`` → ``Design``)."""
    if not parent_title or parent_title not in title:
        return title
    rest = " ".join(title.replace(parent_title, " ").split()).strip(" :-—,")
    return rest or title


def time_in_state(task: Task, at: float) -> str:
    """How long it has been queued or running, or how long it ran once ended."""
    if task.status in TERMINAL:
        return human_duration(task.duration) if task.duration is not None else "-"
    since = {
        Status.QUEUED: task.queued_at,
        Status.RUNNING: task.started_at,
    }.get(task.status, task.created_at)
    return human_duration(at - (since or task.created_at))


def ordered(tree: list[Task]) -> list[tuple[Task, int]]:
    """The tree's tasks parents first, each with its depth under the first task."""
    by_parent: dict[str | None, list[Task]] = {}
    for t in tree:
        by_parent.setdefault(t.parent_id, []).append(t)
    out: list[tuple[Task, int]] = []

    def add(task: Task, depth: int) -> None:
        out.append((task, depth))
        for child in by_parent.get(task.id, []):
            add(child, depth + 1)

    add(tree[0], 0)
    return out


def header(tree: list[Task], at: float) -> str:
    """``task 1a2b3c4d running · 2/4 subtasks done · 12s · 1.2k tok $0.0034``."""
    root, subtasks = tree[0], tree[1:]
    usage = sum((t.usage for t in tree), Usage())
    end = root.finished_at if root.status in TERMINAL and root.finished_at else at
    parts = [f"task {short_id(root.id)} {root.status.value}"]
    if subtasks:
        done = sum(t.status in TERMINAL for t in subtasks)
        parts.append(f"{done}/{len(subtasks)} subtasks done")
    parts.append(f"elapsed {human_duration(end - root.created_at)}")
    cost = f" ${usage.cost_usd:.4f}" if usage.cost_usd else ""
    parts.append(f"{compact_count(usage.total_tokens)} tok{cost}")
    return " · ".join(parts)


def rows(tree: list[Task], at: float) -> list[tuple[Task, tuple[str, ...]]]:
    """Each task's cells, in ``COLUMNS`` order (the title indented by depth)."""
    titles = {t.id: t.title for t in tree}
    out: list[tuple[Task, tuple[str, ...]]] = []
    for task, depth in ordered(tree):
        title = own_title(task.title, titles.get(task.parent_id or ""))
        out.append(
            (
                task,
                (
                    short_id(task.id),
                    f"{STATUS_ICON[task.status.value]} {task.status.value}",
                    task.agent or "-",
                    str(task.attempts) if task.attempts else "-",
                    time_in_state(task, at),
                    compact_count(task.usage.total_tokens) if task.usage.calls else "-",
                    "  " * depth + title,
                ),
            )
        )
    return out


def live_view(
    tree: list[Task],
    stuck: Mapping[str, Blocker],
    at: float | None = None,
    steps: Mapping[str, Event] | None = None,
) -> RenderableType:
    """The whole view: header, table (a running task's current step under its row), then a
    line per task that cannot move."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    at = now() if at is None else at
    table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 1), expand=True)
    for name, width, right in COLUMNS:
        table.add_column(
            name,
            width=width,
            no_wrap=True,
            overflow="ellipsis",
            justify="right" if right else "left",
            ratio=1 if width is None else None,
        )
    for task, cells in rows(tree, at):
        style = STATUS_STYLE[task.status.value]
        table.add_row(*(Text(c, style=style if i == 1 else "") for i, c in enumerate(cells)))
    parts: list[RenderableType] = [Text(header(tree, at), style="bold"), table]
    for task in tree:  # what each running task is doing now: its latest step
        step = (steps or {}).get(task.id)
        if step is not None and task.status == Status.RUNNING:
            line = f"↳ {short_id(task.id)}: {step.detail()} · {max(0.0, at - step.time):.0f}s"
            parts.append(Text(line if len(line) <= 80 else line[:79] + "…", style="dim"))
    for task_id, blocker in stuck.items():
        # two lines, so the command stays whole at 80 columns
        parts.append(Text(f"! {short_id(task_id)}: {blocker.reason}", style="yellow"))
        parts.append(Text(f"  {blocker.fix}"))
    return Group(*parts)
