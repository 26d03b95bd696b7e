"""The logs of orchestra's own processes: `orchestra logs orchestrator|NAME|--task ID`.

Every long-running process writes its own JSON-lines log in ``<home>/logs/``
(``logs.setup_logging``): ``orchestrator.log`` for `orchestra run`,
``agent-NAME.log`` for `orchestra agent start`, ``api.log``, and ``cli.log``
for one-shot commands. Here they are found by process name, read, followed,
and — for one task — merged by time with the task tree's state changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestra_cli.errors import UsageError
from orchestra_cli.util import iso, text_lines

if TYPE_CHECKING:
    from orchestra_cli.models import Event, Task

LOG_SUFFIX = ".log"
AGENT_PREFIX = "agent-"
_CORE_FIELDS = ("time", "level", "logger", "msg", "process", "pid", "exc")


def agent_log_component(name: str) -> str:
    """``agent-NAME``: the component an agent logs as (``logs/agent-NAME.log``)."""
    return AGENT_PREFIX + re.sub(r"[^A-Za-z0-9._@-]", "_", name)


def process_logs(logs_dir: Path) -> dict[str, Path]:
    """Each process log by its process name (``orchestrator``, an agent's name, ``api``…)."""
    found = {}
    for path in sorted(logs_dir.glob(f"*{LOG_SUFFIX}")):
        stem = path.name[: -len(LOG_SUFFIX)]
        found[stem.removeprefix(AGENT_PREFIX)] = path
    return found


def log_path(logs_dir: Path, name: str) -> Path:
    """The log of the process called ``name`` (an agent's name or ``agent-NAME`` too)."""
    known = process_logs(logs_dir)
    safe = agent_log_component(name).removeprefix(AGENT_PREFIX)
    path = known.get(name.removeprefix(AGENT_PREFIX)) or known.get(name) or known.get(safe)
    if path is None:
        names = ", ".join(sorted(known)) or "none yet"
        raise UsageError(
            f"unknown service or process {name!r} (no log for it in {logs_dir})",
            f"give a service (redis, rabbitmq, vault) or a process: {names}",
        )
    return path


def parse(line: str, process: str) -> dict[str, Any]:
    """One log line as a record (a line that is not JSON becomes its ``msg``)."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        record = {"msg": line}
    record.setdefault("process", process)
    return record


def records(path: Path, process: str, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.strip():
            yield parse(line, process)


def format_record(record: dict[str, Any]) -> str:
    """A record as one readable line: time, process, level, logger, message, extras."""
    extras = " ".join(f"{k}={v}" for k, v in record.items() if k not in _CORE_FIELDS)
    head = " ".join(
        str(part)
        for part in (
            record.get("time", "-"),
            record.get("process", "-"),
            str(record.get("level", "-")).upper(),
            f"{record['logger']}:" if record.get("logger") else "",
            record.get("msg", ""),
        )
        if part != ""
    )
    line = f"{head} {extras}".rstrip()
    exc = record.get("exc")
    return f"{line}\n{exc}" if exc else line


def _log_files(logs_dir: Path) -> list[tuple[str, Path]]:
    """Every process log with its rotated backups (``orchestrator.log.1``…)."""
    out = []
    for path in sorted(logs_dir.glob(f"*{LOG_SUFFIX}*")):
        stem = path.name.split(LOG_SUFFIX)[0]
        out.append((stem.removeprefix(AGENT_PREFIX), path))
    return out


def mentions(line: str, ids: Iterable[str]) -> bool:
    return any(i in line for i in ids)


def task_timeline(
    subtree: list[Task], events: Iterable[Event], logs_dir: Path
) -> list[dict[str, Any]]:
    """Every process's log lines about a task or its subtasks (``subtree``: the task
    first), and their state changes (process ``events``, from its tree's log), merged
    by time."""
    ids = [t.id for t in subtree]
    found: list[dict[str, Any]] = []
    for process, path in _log_files(logs_dir):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        found += [parse(ln, process) for ln in text_lines(text) if mentions(ln, ids)]
    wanted = set(ids)
    for event in events:
        if event.task_id in wanted:
            found.append(
                {
                    "time": iso(event.time),
                    "process": "events",
                    "level": "info",
                    "msg": f"{event.type} {event.task_id} {event.detail()}".rstrip(),
                    "task_id": event.task_id,
                }
            )
    return sorted(found, key=lambda r: str(r.get("time", "")))
