"""Rendering of tasks, trees, events and agents for people (tables) and scripts (JSON)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from orchestra_cli.ids import SHORT_LENGTH, short_id
from orchestra_cli.shapes import LISTED_BY_DEFAULT, agent_json, agent_state, event_json, task_json
from orchestra_cli.util import human_duration, iso, now

__all__ = [
    "LISTED_BY_DEFAULT",
    "agent_json",
    "agent_state",
    "event_json",
    "task_json",
]  # the shapes, for the CLI

if TYPE_CHECKING:
    from rich.table import Table
    from rich.tree import Tree

    from orchestra_cli.models import AgentRecord, Event, Task, Usage

STATUS_STYLE = {
    "pending": "dim",
    "waiting": "cyan",
    "queued": "yellow",
    "running": "bold blue",
    "blocked": "bold yellow",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "magenta",
}
STATUS_ICON = {
    "pending": "·",
    "waiting": "◌",
    "queued": "…",
    "running": "▶",
    "blocked": "⏸",
    "succeeded": "✔",
    "failed": "✘",
    "cancelled": "⊘",
}


def usage_text(usage: Usage) -> str:
    if not usage.calls:
        return "-"
    cost = f" ${usage.cost_usd:.4f}" if usage.cost_usd else ""
    if usage.unpriced_calls:  # some calls went to a model without a price
        cost = f" ≥${usage.cost_usd:.4f} (cost of {usage.unpriced_calls} call(s) unknown)"
    return f"{usage.total_tokens:,} tok{cost}"


TASK_COLUMNS = ("ID", "STATUS", "CAPABILITY", "AGENT", "TRIES", "AGE", "TITLE")


def _task_row(t: Task) -> tuple[str, ...]:
    return (
        short_id(t.id),
        t.status.value,
        t.capability or "-",
        t.agent or "-",
        f"{t.attempts}/{t.max_attempts}",
        human_duration(now() - t.created_at),
        t.title,
    )


MIN_WIDTHS = {"ID": SHORT_LENGTH, "STATUS": 9}


MIN_TITLE = 16
OPTIONAL_COLUMNS = ("AGENT", "CAPABILITY", "TRIES", "AGE")  # left out first to last


def _fitting(rows: list[tuple[str, ...]], width: int | None) -> list[str]:
    """The columns to show in ``width``: every one if they fit with ``MIN_TITLE`` of
    title; else without the optional ones, in order, until they do."""
    columns = list(TASK_COLUMNS)
    if width is None:
        return columns
    natural = {
        col: max(len(col), MIN_WIDTHS.get(col, 0), *(len(r[i]) for r in rows))
        for i, col in enumerate(TASK_COLUMNS)
    }
    natural["TITLE"] = MIN_TITLE

    def needed() -> int:
        return sum(natural[c] for c in columns) + 2 * (len(columns) - 1)

    for col in OPTIONAL_COLUMNS:
        if needed() <= width:
            break
        columns.remove(col)
    return columns


def tasks_table(tasks: list[Task], width: int | None = None) -> Table:
    """`task list` on a terminal (``tasks_text`` elsewhere); in ``width`` columns
    the agent, capability, tries and age give way before the title does."""
    from rich.table import Table

    rows = [_task_row(t) for t in tasks]
    shown = _fitting(rows, width)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in shown:
        table.add_column(
            col,
            overflow="fold" if col == "TITLE" else "ellipsis",
            no_wrap=col != "TITLE",
            min_width=MIN_WIDTHS.get(col),  # ids and statuses are never cut short
        )
    for t, row in zip(tasks, rows, strict=True):
        cells = dict(zip(TASK_COLUMNS, row, strict=True))
        cells["STATUS"] = f"[{STATUS_STYLE[t.status]}]{cells['STATUS']}[/]"
        cells["TITLE"] = _escape(cells["TITLE"])
        table.add_row(*(cells[col] for col in shown))
    return table


def tasks_text(tasks: list[Task]) -> str:
    """The same columns as plain text, one line per task: `task list` into a pipe or
    file, where scripts read it (and rich's import and layout would be ~80 ms of it)."""
    return columns_text(TASK_COLUMNS, [_task_row(t) for t in tasks], MIN_WIDTHS)


def columns_text(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    min_widths: Mapping[str, int] | None = None,
) -> str:
    """Aligned plain-text columns, one line per row, never wrapped (for pipes and
    files, where scripts read them): the last column is free text, whitespace
    folded to single spaces."""
    rows = [header, *rows]
    least = min_widths or {}
    widths = [
        max(least.get(header[i], 0), *(len(r[i]) for r in rows)) for i in range(len(header) - 1)
    ]
    lines = (
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True))
        + "  "
        + " ".join(r[-1].split())
        for r in rows
    )
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _label_parts(task: Task) -> list[tuple[str, str]]:
    """A task's one-line label as (text, rich style) parts."""
    status = task.status.value
    parts = [
        (f"{STATUS_ICON[status]} {status}", STATUS_STYLE[status]),
        (task.title, "bold"),
        (short_id(task.id), "dim"),
    ]
    if task.capability:
        parts.append((f"cap={task.capability}", ""))
    if task.agent:
        parts.append((f"agent={task.agent}", ""))
    if task.attempts:
        parts.append((f"try {task.attempts}/{task.max_attempts}", ""))
    if task.duration is not None:
        parts.append((human_duration(task.duration), ""))
    if task.usage.calls:
        parts.append((usage_text(task.usage), ""))
    if task.error and status in ("failed", "cancelled"):
        parts.append((task.error[:160], "red"))
    return parts


def _label(task: Task) -> str:
    return "  ".join(
        f"[{style}]{_escape(text)}[/]" if style else _escape(text)
        for text, style in _label_parts(task)
    )


def _children(tasks: list[Task]) -> tuple[Task, dict[str | None, list[Task]]]:
    by_parent: dict[str | None, list[Task]] = {}
    for t in tasks:
        by_parent.setdefault(t.parent_id, []).append(t)
    root = next(t for t in tasks if t.parent_id is None or t.id == t.root_id)
    return root, by_parent


def task_tree(tasks: list[Task]) -> Tree:
    """A rich tree of a task and its descendants (``tasks`` from StateStore.tree)."""
    from rich.tree import Tree

    root, by_parent = _children(tasks)
    tree = Tree(_label(root))

    def add(node: Tree, parent_id: str) -> None:
        for child in by_parent.get(parent_id, []):
            add(node.add(_label(child)), child.id)

    add(tree, root.id)
    return tree


def task_tree_text(tasks: list[Task]) -> str:
    """The same tree as plain text (off a terminal, without rich)."""
    root, by_parent = _children(tasks)

    def label(task: Task) -> str:
        return "  ".join(" ".join(text.split()) for text, _ in _label_parts(task))

    lines = [label(root)]

    def add(parent_id: str, indent: str) -> None:
        children = by_parent.get(parent_id, [])
        for i, child in enumerate(children):
            last = i == len(children) - 1
            lines.append(f"{indent}{'└── ' if last else '├── '}{label(child)}")
            add(child.id, indent + ("    " if last else "│   "))

    add(root.id, "")
    return "\n".join(lines) + "\n"


def event_line(event: Event, titles: dict[str, str] | None = None) -> str:
    """One plain line per event, for logs and non-TTY output."""
    title = (titles or {}).get(event.task_id)
    where = f"{event.task_id}" + (f" ({title})" if title else "")
    return f"{iso(event.time)} {event.type:<10} {where} {event.detail()}".rstrip()


def agents_table(agents: list[AgentRecord], ttl: float) -> Table:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in (
        "NAME",
        "ROLE",
        "CAPABILITIES",
        "STATE",
        "LOAD",
        "DONE",
        "FAILED",
        "USAGE",
        "HEARTBEAT",
        "HOST/PID",
    ):
        table.add_column(col, no_wrap=True)
    for a in agents:
        state = agent_state(a, ttl)
        style = {"running": "green", "dead": "red", "stopped": "dim"}.get(state, "yellow")
        table.add_row(
            a.name,
            a.role,
            ",".join(a.capabilities),
            f"[{style}]{state}[/]",
            f"{a.load}/{a.concurrency}",
            str(a.processed),
            str(a.failed),
            usage_text(a.usage),
            f"{human_duration(now() - a.heartbeat_at)} ago",
            f"{a.host}/{a.pid}",
        )
    return table
