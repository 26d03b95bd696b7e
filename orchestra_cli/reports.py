"""Reports: the daily report and the metrics summary (`orchestra report …`).

Built from the state store (tasks of the period), ``metrics.jsonl`` (model
calls, tokens, cost) and ``decisions.jsonl`` (what the engine decided). The
functions return plain dicts; rendering (table, markdown, JSON, HTML) is the
CLI's job, in ``cli/commands/report.py``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any

from orchestra_cli.backends import Backends
from orchestra_cli.errors import OrchestraError
from orchestra_cli.models import Task, Usage
from orchestra_cli.status import TERMINAL, Status
from orchestra_cli.util import iso

SCAN_LIMIT = 200_000
TOP_ERRORS = 5
ERROR_TASK_IDS = 5  # the ids shown beside each top error
DURATION_BINS = 12
TIMELINE_LIMIT = 200  # failures on the day's timeline
LIST_LIMIT = 20  # retried tasks and dead letters listed
TOKEN_KINDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
OUTCOMES = ("succeeded", "failed", "cancelled", "open")


def _pct(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(pct / 100 * len(ordered)))], 3)


def _in_window(line: dict[str, Any], start: float, end: float) -> bool:
    try:
        ts = dt.datetime.fromisoformat(str(line.get("time"))).timestamp()
    except ValueError:
        return False
    return start <= ts < end


def _usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "calls": usage.calls,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cost_usd": round(usage.cost_usd, 6),
    }


def _outcome(task: Task) -> str:
    return task.status.value if task.status in TERMINAL else "open"


def per_hour(tasks: list[Task], start: float) -> list[dict[str, Any]]:
    """24 rows, one an hour (UTC): tasks by outcome in the hour they ended (open
    ones in the hour they were created)."""
    hours = [{"hour": h, **dict.fromkeys(OUTCOMES, 0)} for h in range(24)]
    for task in tasks:
        at = task.finished_at if task.status in TERMINAL and task.finished_at else task.created_at
        hours[min(23, max(0, int((at - start) // 3600)))][_outcome(task)] += 1
    return hours


def duration_histogram(durations: list[float]) -> list[dict[str, Any]]:
    """Equal-width bins from 0 to the longest duration."""
    if not durations:
        return []
    width = max(durations) / DURATION_BINS or 1.0
    bins = [
        {"from_s": round(i * width, 6), "to_s": round((i + 1) * width, 6), "count": 0}
        for i in range(DURATION_BINS)
    ]
    for d in durations:
        bins[min(DURATION_BINS - 1, int(d / width))]["count"] += 1
    return bins


def _failures(tasks: list[Task]) -> list[dict[str, Any]]:
    failed = sorted(
        (t for t in tasks if t.status == Status.FAILED), key=lambda t: t.finished_at or 0
    )
    return [
        {
            "time": iso(t.finished_at),
            "task_id": t.id,
            "title": t.title,
            "capability": t.capability,
            "agent": t.agent,
            "error": (t.error or "(no detail)")[:200],
        }
        for t in failed[:TIMELINE_LIMIT]
    ]


def _top_errors(tasks: list[Task]) -> list[dict[str, Any]]:
    ids: dict[str, list[str]] = {}
    for t in tasks:
        if t.status == Status.FAILED:
            ids.setdefault((t.error or "")[:100] or "(no detail)", []).append(t.id)
    ranked = sorted(ids.items(), key=lambda kv: -len(kv[1]))[:TOP_ERRORS]
    return [
        {"error": e, "count": len(task_ids), "task_ids": task_ids[:ERROR_TASK_IDS]}
        for e, task_ids in ranked
    ]


def _retried(tasks: list[Task]) -> list[dict[str, Any]]:
    retried = sorted((t for t in tasks if t.attempts > 1), key=lambda t: -t.attempts)
    return [
        {"task_id": t.id, "title": t.title, "attempts": t.attempts, "status": t.status.value}
        for t in retried[:LIST_LIMIT]
    ]


def dead_letters(backends: Backends, start: float, end: float) -> dict[str, Any]:
    """The day's letters on the dead-letter queue (what the broker still holds)."""
    try:
        letters = backends.broker.dead_letters(SCAN_LIMIT)
    except OrchestraError as exc:
        return {"count": None, "by_reason": {}, "letters": [], "error": str(exc)}
    day = [x for x in letters if start <= float(x.get("enqueued_at") or 0) < end]
    reasons = Counter(str(x.get("reason") or "-")[:80] for x in day)
    return {
        "count": len(day),
        "by_reason": dict(reasons.most_common()),
        "letters": [
            {
                "time": iso(float(x["enqueued_at"])),
                "queue": x.get("queue"),
                "reason": x.get("reason"),
                "task_id": _letter_task(str(x.get("body") or "")),
            }
            for x in day[:LIST_LIMIT]
        ],
    }


def _letter_task(body: str) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    task_id = doc.get("task_id") if isinstance(doc, dict) else None
    return task_id if isinstance(task_id, str) else None


def _group(tasks: list[Task], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for task in tasks:
        name = getattr(task, key) or "-"
        g = groups.setdefault(
            name,
            {
                "tasks": 0,
                "succeeded": 0,
                "failed": 0,
                "retried": 0,
                "durations": [],
                "usage": Usage(),
            },
        )
        g["tasks"] += 1
        g["succeeded"] += task.status == Status.SUCCEEDED
        g["failed"] += task.status == Status.FAILED
        g["retried"] += task.attempts > 1
        if task.finished_at and task.started_at:
            g["durations"].append(task.finished_at - task.started_at)
        g["usage"] = g["usage"] + task.usage
    for g in groups.values():
        durations = g.pop("durations")
        g["p50_s"] = _pct(durations, 50)
        g["p95_s"] = _pct(durations, 95)
        g["usage"] = _usage_dict(g["usage"])
    return dict(sorted(groups.items()))


def tasks_between(backends: Backends, start: float, end: float) -> list[Task]:
    tasks = backends.state.list_tasks(since=start, limit=SCAN_LIMIT)
    return [t for t in tasks if t.created_at < end]


def daily_report(backends: Backends, day: dt.date) -> dict[str, Any]:
    """Everything that happened to tasks created on ``day`` (UTC)."""
    start = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
    end = start + 86400
    tasks = tasks_between(backends, start, end)
    roots = [t for t in tasks if t.parent_id is None]
    parents = {t.parent_id for t in tasks}
    leaves = [t for t in tasks if t.capability and t.id not in parents]
    finished_roots = [t for t in roots if t.status in (Status.SUCCEEDED, Status.FAILED)]
    succeeded_roots = [t for t in finished_roots if t.status == Status.SUCCEEDED]
    durations = [t.finished_at - t.started_at for t in leaves if t.finished_at and t.started_at]
    total = Usage()
    for task in tasks:
        total = total + task.usage
    journals = backends.journals
    decisions = Counter(
        str(d.get("decision")) for d in journals.decisions.read() if _in_window(d, start, end)
    )
    return {
        "date": day.isoformat(),
        "generated_at": iso(dt.datetime.now(dt.UTC).timestamp()),
        "tasks": {
            "total": len(tasks),
            "roots": len(roots),
            "by_status": dict(sorted(Counter(t.status.value for t in tasks).items())),
        },
        "success_rate": round(len(succeeded_roots) / len(finished_roots), 4)
        if finished_roots
        else None,
        "duration_s": {"p50": _pct(durations, 50), "p95": _pct(durations, 95)},
        "duration_histogram": duration_histogram(durations),
        "per_hour": per_hour(tasks, start),
        "retried_tasks": sum(1 for t in tasks if t.attempts > 1),
        "retried": _retried(tasks),
        "by_capability": _group(leaves, "capability"),
        "by_agent": _group(leaves, "agent"),
        "top_errors": _top_errors(tasks),
        "failures": _failures(tasks),
        "dead_letters": dead_letters(backends, start, end),
        "usage": _usage_dict(total),
        "decisions": dict(sorted(decisions.items())),
        "llm": llm_summary(backends, start, end),
    }


def llm_summary(backends: Backends, start: float, end: float) -> dict[str, Any]:
    """Model calls in the window from ``metrics.jsonl``, by model and by role."""
    by_model: dict[str, dict[str, Any]] = {}
    by_role: dict[str, dict[str, Any]] = {}
    for line in backends.journals.metrics.read():
        if line.get("kind") != "llm_call" or not _in_window(line, start, end):
            continue
        for key, table in ((line.get("model"), by_model), (line.get("role"), by_role)):
            row = table.setdefault(
                str(key or "-"), {"calls": 0, **dict.fromkeys(TOKEN_KINDS, 0), "cost_usd": 0.0}
            )
            row["calls"] += 1
            for kind in TOKEN_KINDS:
                row[kind] += int(line.get(kind) or 0)
            row["cost_usd"] = round(row["cost_usd"] + float(line.get("cost_usd") or 0), 6)
    return {"by_model": by_model, "by_role": by_role}


def metrics_report(backends: Backends, since: float, until: float) -> dict[str, Any]:
    """Throughput, latency and model usage over a window."""
    tasks = tasks_between(backends, since, until)
    finished = [t for t in tasks if t.finished_at]
    latencies = [t.finished_at - t.created_at for t in finished if t.finished_at]
    per_hour = Counter(
        dt.datetime.fromtimestamp(t.finished_at, dt.UTC).strftime("%Y-%m-%dT%H:00Z")
        for t in finished
        if t.finished_at
    )
    hours = max(1.0, (until - since) / 3600)
    return {
        "since": iso(since),
        "until": iso(until),
        "tasks": {
            "created": len(tasks),
            "finished": len(finished),
            "by_status": dict(sorted(Counter(t.status.value for t in tasks).items())),
        },
        "throughput_per_hour": round(len(finished) / hours, 2),
        "finished_per_hour": dict(sorted(per_hour.items())),
        "latency_s": {
            "p50": _pct(latencies, 50),
            "p95": _pct(latencies, 95),
            "p99": _pct(latencies, 99),
        },
        "llm": llm_summary(backends, since, until),
    }
