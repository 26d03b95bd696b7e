"""`orchestra report daily|metrics`: table, markdown, JSON or HTML, to stdout or a file."""

from __future__ import annotations

import html
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestra_cli.cli.context import AppContext

report_app = typer.Typer(help="Daily report and metrics summary.", no_args_is_help=True)

Section = tuple[str, list[dict[str, Any]]]


class Format(StrEnum):
    table = "table"
    markdown = "markdown"
    json = "json"
    html = "html"


def _kv(pairs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"metric": k, "value": "-" if v is None else v} for k, v in pairs.items()]


def _rows(table: dict[str, dict[str, Any]], key: str) -> list[dict[str, Any]]:
    out = []
    for name, row in table.items():
        flat = {key: name}
        for k, v in row.items():
            if isinstance(v, dict):
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items() if kk != "calls"})
            else:
                flat[k] = v
        out.append(flat)
    return out


def daily_sections(r: dict[str, Any]) -> list[Section]:
    usage = r["usage"]
    summary = {
        "date": r["date"],
        "tasks": r["tasks"]["total"],
        "top-level tasks": r["tasks"]["roots"],
        "success rate": f"{r['success_rate']:.1%}" if r["success_rate"] is not None else None,
        "duration p50 (s)": r["duration_s"]["p50"],
        "duration p95 (s)": r["duration_s"]["p95"],
        "retried tasks": r["retried_tasks"],
        "tokens": usage["input_tokens"] + usage["output_tokens"],
        "cost (USD)": f"{usage['cost_usd']:.4f}",
    }
    return [
        ("Summary", _kv(summary)),
        (
            "Tasks by status",
            [{"status": k, "count": v} for k, v in r["tasks"]["by_status"].items()],
        ),
        ("By capability", _rows(r["by_capability"], "capability")),
        ("By agent", _rows(r["by_agent"], "agent")),
        ("Top errors", r["top_errors"]),
        ("Decisions", [{"decision": k, "count": v} for k, v in r["decisions"].items()]),
        ("Model calls by model", _rows(r["llm"]["by_model"], "model")),
    ]


def metrics_sections(r: dict[str, Any]) -> list[Section]:
    summary = {
        "since": r["since"],
        "until": r["until"],
        "created": r["tasks"]["created"],
        "finished": r["tasks"]["finished"],
        "finished per hour": r["throughput_per_hour"],
        "latency p50 (s)": r["latency_s"]["p50"],
        "latency p95 (s)": r["latency_s"]["p95"],
        "latency p99 (s)": r["latency_s"]["p99"],
    }
    return [
        ("Summary", _kv(summary)),
        (
            "Tasks by status",
            [{"status": k, "count": v} for k, v in r["tasks"]["by_status"].items()],
        ),
        (
            "Finished per hour",
            [{"hour": k, "finished": v} for k, v in r["finished_per_hour"].items()],
        ),
        ("Model calls by model", _rows(r["llm"]["by_model"], "model")),
        ("Model calls by role", _rows(r["llm"]["by_role"], "role")),
    ]


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    return cols


def to_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for name, rows in sections:
        out += [f"## {name}", ""]
        if not rows:
            out += ["_none_", ""]
            continue
        cols = _columns(rows)
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        for row in rows:
            cells = [str(row.get(c, "")).replace("|", "\\|") for c in cols]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def to_html(title: str, sections: list[Section]) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for name, rows in sections:
        parts.append(f"<h2>{e(name)}</h2>")
        if not rows:
            parts.append("<p><em>none</em></p>")
            continue
        cols = _columns(rows)
        parts.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
        for row in rows:
            parts.append(
                "<tr>" + "".join(f"<td>{e(str(row.get(c, '')))}</td>" for c in cols) + "</tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _print_tables(app: AppContext, title: str, sections: list[Section], file: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = (
        Console(file=file, no_color=app.no_color or file is not None, width=120, highlight=False)
        if file is not None
        else app.console
    )
    console.print(title, style="bold", markup=False)
    for name, rows in sections:
        table = Table(
            title=name, title_justify="left", box=None, header_style="bold", pad_edge=False
        )
        cols = _columns(rows) or ["(none)"]
        for col in cols:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*(str(row.get(c, "")) for c in cols))
        console.print(table, markup=False)
        console.print()


def emit(
    app: AppContext,
    title: str,
    data: dict[str, Any],
    sections: list[Section],
    fmt: Format,
    output: Path | None,
) -> None:
    from orchestra_cli.util import dumps

    if app.json and fmt not in (Format.json, Format.table):
        from orchestra_cli.errors import UsageError

        raise UsageError(f"--json and --format {fmt.value} disagree", "give one of them")
    if app.json or fmt == Format.json:
        text = dumps(data, indent=2) + "\n"
    elif fmt == Format.markdown:
        text = to_markdown(title, sections) + "\n"
    elif fmt == Format.html:
        text = to_html(title, sections) + "\n"
    else:
        if output is None:
            _print_tables(app, title, sections, None)
            return
        with open(output, "w", encoding="utf-8") as fh:
            _print_tables(app, title, sections, fh)
        app.info(f"wrote {output}")
        return
    if output is None:
        print(text, end="")
    else:
        output.write_text(text, encoding="utf-8")
        app.info(f"wrote {output}")


@report_app.command("daily")
def daily(
    ctx: typer.Context,
    date: Annotated[str | None, typer.Option(help="YYYY-MM-DD (UTC); default today.")] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
) -> None:
    """Tasks, outcomes, durations, agents, errors, decisions and spend of one day."""
    import datetime as dt

    from orchestra_cli.errors import UsageError
    from orchestra_cli.reports import daily_report

    app: AppContext = ctx.obj
    try:
        day = dt.date.fromisoformat(date) if date else dt.datetime.now(dt.UTC).date()
    except ValueError:
        raise UsageError(f"cannot read date {date!r}", "use YYYY-MM-DD") from None
    data = daily_report(app.backends(), day)
    emit(
        app, f"orchestra daily report {day.isoformat()}", data, daily_sections(data), format, output
    )


@report_app.command("metrics")
def metrics(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="Window start: 30m, 24h, 7d or ISO time.")] = "24h",
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
) -> None:
    """Throughput, latency and model usage since a time."""
    from orchestra_cli.reports import metrics_report
    from orchestra_cli.util import now, parse_since

    app: AppContext = ctx.obj
    data = metrics_report(app.backends(), parse_since(since), now())
    emit(app, f"orchestra metrics since {since}", data, metrics_sections(data), format, output)


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
