"""The reports' tables: human headers, formatted cells, numbers right-aligned.

``reports.py`` builds the figures as plain dicts (the JSON format shows them
as they are); this module turns them into titled tables once, so the table,
markdown and HTML renderers show the same headers and cells and none of them
prints a raw key (``usage.input_tokens``) or a ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MISSING = "–"
NUMERIC = frozenset({"int", "usd", "seconds", "pct"})


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    kind: str = "text"  # text | int | usd | seconds | pct | id

    @property
    def numeric(self) -> bool:
        return self.kind in NUMERIC


@dataclass(frozen=True)
class Table:
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""  # what the table counts, shown under its title

    def cells(self) -> list[list[str]]:
        return [[fmt(row.get(c.key), c.kind) for c in self.columns] for row in self.rows]


def fmt(value: Any, kind: str = "text") -> str:
    """One cell: thousands separated, dollars with 4 decimals, never ``None``."""
    if value is None or value == "":
        return MISSING
    if kind == "int":
        return f"{int(value):,}"
    if kind == "usd":
        return f"${float(value):,.4f}"
    if kind == "seconds":
        return seconds(float(value))
    if kind == "pct":
        return f"{float(value):.1%}"
    if kind == "id":
        return str(value)[-8:]
    if isinstance(value, list):
        return ", ".join(fmt(v, "id") for v in value) or MISSING
    return str(value)


def seconds(value: float) -> str:
    """``850 ms``, ``12.4 s``, ``3m04s``: a duration a person reads at a glance."""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, sec = divmod(int(value), 60)
    return f"{minutes}m{sec:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


USAGE_COLUMNS = [
    Column("Model calls", "calls", "int"),
    Column("Input tokens", "input_tokens", "int"),
    Column("Output tokens", "output_tokens", "int"),
    Column("Cache read", "cache_read_tokens", "int"),
    Column("Cache write", "cache_write_tokens", "int"),
    Column("Cost", "cost_usd", "usd"),
]
GROUP_COLUMNS = [
    Column("Tasks", "tasks", "int"),
    Column("Succeeded", "succeeded", "int"),
    Column("Failed", "failed", "int"),
    Column("Retried", "retried", "int"),
    Column("p50", "p50_s", "seconds"),
    Column("p95", "p95_s", "seconds"),
    Column("Tokens", "tokens", "int"),
    Column("Cost", "cost_usd", "usd"),
]


def _summary(pairs: list[tuple[str, Any, str]]) -> Table:
    return Table(
        "Summary",
        [Column("Measure", "measure"), Column("Value", "value")],
        [{"measure": k, "value": fmt(v, kind)} for k, v, kind in pairs],
    )


def _group_rows(groups: dict[str, dict[str, Any]], key: str) -> list[dict[str, Any]]:
    rows = []
    for name, g in groups.items():
        usage = g.get("usage") or {}
        tokens = sum(int(usage.get(k) or 0) for k in ("input_tokens", "output_tokens"))
        label = "(unassigned)" if name == "-" else name
        rows.append({key: label, **g, "tokens": tokens, "cost_usd": usage.get("cost_usd")})
    return rows


def _named(table: dict[str, dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [{key: name, **row} for name, row in table.items()]


def _usage_tables(llm: dict[str, Any]) -> list[Table]:
    return [
        Table(
            "Model usage by model",
            [Column("Model", "model"), *USAGE_COLUMNS],
            _named(llm["by_model"], "model"),
        ),
        Table(
            "Model usage by role",
            [Column("Role", "role"), *USAGE_COLUMNS],
            _named(llm["by_role"], "role"),
        ),
    ]


def _status_table(by_status: dict[str, int]) -> Table:
    return Table(
        "Tasks by status",
        [Column("Status", "status"), Column("Tasks", "count", "int")],
        [{"status": k, "count": v} for k, v in by_status.items()],
    )


def daily_tables(r: dict[str, Any]) -> list[Table]:
    """The daily report's tables, in reading order."""
    usage = r["usage"]
    dead = r.get("dead_letters") or {}
    summary = _summary(
        [
            ("Date", r["date"], "text"),
            ("Tasks", r["tasks"]["total"], "int"),
            ("Top-level tasks", r["tasks"]["roots"], "int"),
            ("Success rate (top-level)", r["success_rate"], "pct"),
            ("Duration p50", r["duration_s"]["p50"], "seconds"),
            ("Duration p95", r["duration_s"]["p95"], "seconds"),
            ("Retried tasks", r["retried_tasks"], "int"),
            ("Dead letters", dead.get("count"), "int"),
            ("Tokens", usage["input_tokens"] + usage["output_tokens"], "int"),
            ("Cost", usage["cost_usd"], "usd"),
        ]
    )
    return [
        summary,
        _status_table(r["tasks"]["by_status"]),
        Table(
            "By capability",
            [Column("Capability", "capability"), *GROUP_COLUMNS],
            _group_rows(r["by_capability"], "capability"),
            "leaf tasks (the ones agents ran)",
        ),
        Table(
            "By agent",
            [Column("Agent", "agent"), *GROUP_COLUMNS],
            _group_rows(r["by_agent"], "agent"),
        ),
        *_usage_tables(r["llm"]),
        Table(
            "Top errors",
            [Column("Error", "error"), Column("Tasks", "count", "int"), Column("Ids", "task_ids")],
            r["top_errors"],
        ),
        Table(
            "Failures",
            [
                Column("Time (UTC)", "time"),
                Column("Task", "task_id", "id"),
                Column("Capability", "capability"),
                Column("Agent", "agent"),
                Column("Error", "error"),
            ],
            [{**f, "time": (f["time"] or "")[11:19]} for f in r.get("failures") or []],
        ),
        Table(
            "Retried tasks",
            [
                Column("Task", "task_id", "id"),
                Column("Title", "title"),
                Column("Attempts", "attempts", "int"),
                Column("Status", "status"),
            ],
            r.get("retried") or [],
        ),
        Table(
            "Dead letters",
            [
                Column("Time (UTC)", "time"),
                Column("Queue", "queue"),
                Column("Reason", "reason"),
                Column("Task", "task_id", "id"),
            ],
            [{**x, "time": (x["time"] or "")[11:19]} for x in dead.get("letters") or []],
        ),
        Table(
            "Decisions",
            [Column("Decision", "decision"), Column("Count", "count", "int")],
            [{"decision": k, "count": v} for k, v in r["decisions"].items()],
        ),
    ]


def metrics_tables(r: dict[str, Any]) -> list[Table]:
    """The metrics summary's tables."""
    summary = _summary(
        [
            ("Since", r["since"], "text"),
            ("Until", r["until"], "text"),
            ("Created", r["tasks"]["created"], "int"),
            ("Finished", r["tasks"]["finished"], "int"),
            ("Finished per hour", r["throughput_per_hour"], "text"),
            ("Latency p50", r["latency_s"]["p50"], "seconds"),
            ("Latency p95", r["latency_s"]["p95"], "seconds"),
            ("Latency p99", r["latency_s"]["p99"], "seconds"),
        ]
    )
    return [
        summary,
        _status_table(r["tasks"]["by_status"]),
        Table(
            "Finished per hour",
            [Column("Hour (UTC)", "hour"), Column("Finished", "finished", "int")],
            [{"hour": k, "finished": v} for k, v in r["finished_per_hour"].items()],
        ),
        *_usage_tables(r["llm"]),
    ]
