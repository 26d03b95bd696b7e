"""`orchestra report daily|metrics` over real state and journals."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from orchestra_cli.backends import open_backends
from orchestra_cli.models import Task, Usage
from orchestra_cli.settings import load_settings
from orchestra_cli.status import Status
from tests.conftest import CliRunner


@pytest.fixture
def history() -> None:
    """One succeeded and one failed task (retried), with model calls in metrics.jsonl."""
    b = open_backends(load_settings().settings)
    try:
        for title, final, error in (("ok", Status.SUCCEEDED, None), ("bad", Status.FAILED, "boom")):
            task, _ = b.state.create_task(Task(title=title, input="x", capability="code"))
            b.state.transition(task.id, Status.QUEUED)
            b.state.transition(task.id, Status.RUNNING, agent="coder-1", attempts=2)
            b.state.add_usage(
                task.id, Usage(calls=1, input_tokens=100, output_tokens=20, cost_usd=0.01)
            )
            b.state.transition(task.id, final, error=error)
            b.journals.metrics.write(
                {
                    "kind": "llm_call",
                    "model": "claude-x",
                    "role": "coder",
                    "input_tokens": 100,
                    "output_tokens": 20,
                    "cost_usd": 0.01,
                }
            )
        b.journals.decisions.write({"decision": "route", "why": "test"})
    finally:
        b.close()


def test_daily_report_json_counts_outcomes_errors_agents_and_spend(
    cli: CliRunner, history: None
) -> None:
    data = json.loads(cli("report", "daily", "--format", "json").out)
    assert data["date"] == dt.datetime.now(dt.UTC).date().isoformat()
    assert data["tasks"]["by_status"] == {"failed": 1, "succeeded": 1}
    assert data["success_rate"] == 0.5 and data["retried_tasks"] == 2
    assert [(e["error"], e["count"]) for e in data["top_errors"]] == [("boom", 1)]
    assert len(data["top_errors"][0]["task_ids"]) == 1 and data["failures"][0]["error"] == "boom"
    assert data["by_agent"]["coder-1"]["tasks"] == 2
    assert data["usage"]["cost_usd"] == pytest.approx(0.02)
    assert data["decisions"] == {"route": 1}
    assert data["llm"]["by_model"]["claude-x"]["calls"] == 2


def test_daily_report_renders_markdown_html_and_tables_to_files(
    cli: CliRunner, history: None
) -> None:
    md = cli("report", "daily", "--format", "markdown").out
    assert md.startswith("# orchestra daily report") and "| coder-1 |" in md
    assert "| Agent | Tasks | Succeeded |" in md and "|---|---:|---:|" in md
    assert "usage." not in md and "None" not in md
    cli("report", "daily", "-f", "html", "-o", "r.html")
    page = Path("r.html").read_text()
    assert page.startswith("<!doctype html>") and "<td>boom</td>" in page and "<svg" in page
    cli("report", "daily", "-o", "r.txt")
    text = Path("r.txt").read_text()
    assert "Success rate (top-level)" in text and "usage." not in text and "None" not in text
    empty = json.loads(cli("--json", "report", "daily", "--date", "2001-01-01").out)
    assert empty["tasks"]["total"] == 0 and empty["success_rate"] is None
    assert "cannot read date" in cli("report", "daily", "--date", "01/02/2026", expect=2).err


def test_metrics_report_summarises_latency_and_model_usage(cli: CliRunner, history: None) -> None:
    data = json.loads(cli("--json", "report", "metrics", "--since", "1h").out)
    assert data["tasks"]["finished"] == 2 and data["latency_s"]["p50"] is not None
    assert data["llm"]["by_role"]["coder"]["input_tokens"] == 200
    assert "Finished per hour" in cli("report", "metrics").out


def test_table_report_puts_section_titles_on_their_own_lines(cli: CliRunner, history: None) -> None:
    """A rich table title wraps to its table's width; a two-column table made
    'Tasks by status' three lines. Each title is one line, numbers right-aligned."""
    out = cli("report", "daily").out
    lines = out.splitlines()
    for title in ("Tasks by status", "Top errors", "Model usage by model", "Dead letters"):
        assert title in lines, title
    status = lines.index("Tasks by status")
    assert lines[status + 1].split() == ["Status", "Tasks"]
    failed = next(line for line in lines[status:] if line.startswith("failed"))
    assert failed.endswith(" 1") and len(failed) == len(lines[status + 1])
