"""`orchestra report daily|metrics`: table, markdown, JSON or HTML, to stdout or a file."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestra_cli.cli.context import AppContext
from orchestra_cli.report_tables import Table

BAD = frozenset({"Top errors", "Failures", "Dead letters"})

report_app = typer.Typer(help="Daily report and metrics summary.", no_args_is_help=True)


class Format(StrEnum):
    table = "table"
    markdown = "markdown"
    json = "json"
    html = "html"


def to_markdown(title: str, tables: list[Table]) -> str:
    """GitHub markdown: a heading per table, numbers right-aligned."""
    out = [f"# {title}", ""]
    for table in tables:
        out += [f"## {table.title}", ""]
        if table.note:
            out += [f"_{table.note}_", ""]
        if not table.rows:
            out += ["_none_", ""]
            continue
        out.append("| " + " | ".join(c.header for c in table.columns) + " |")
        out.append("|" + "".join("---:|" if c.numeric else "---|" for c in table.columns))
        for cells in table.cells():
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        out.append("")
    return "\n".join(out)


def _print_tables(app: AppContext, title: str, tables: list[Table], file: Any) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

    console = (
        Console(file=file, no_color=app.no_color or file is not None, width=120, highlight=False)
        if file is not None
        else app.console
    )
    console.print(Text(title, style="bold"))
    for table in tables:
        # the title on a line of its own: a rich table title wraps to the table's width
        console.print(Text(table.title, style="bold underline"))
        if not table.rows:
            console.print(Text("none", style="dim"))
            console.print()
            continue
        out = RichTable(box=None, header_style="bold", pad_edge=False)
        for col in table.columns:
            out.add_column(col.header, justify="right" if col.numeric else "left")
        for row, cells in zip(table.rows, table.cells(), strict=True):
            style = "red" if row.get("status") == "failed" or table.title in BAD else None
            out.add_row(*cells, style=style)
        console.print(out)
        console.print()


def emit(
    app: AppContext,
    title: str,
    data: dict[str, Any],
    tables: list[Table],
    fmt: Format,
    output: Path | None,
    html: Callable[[], str],
) -> None:
    from orchestra_cli.util import dumps

    if app.json and fmt not in (Format.json, Format.table):
        from orchestra_cli.errors import UsageError

        raise UsageError(f"--json and --format {fmt.value} disagree", "give one of them")
    if app.json or fmt == Format.json:
        text = dumps(data, indent=2) + "\n"
    elif fmt == Format.markdown:
        text = to_markdown(title, tables) + "\n"
    elif fmt == Format.html:
        text = html() + "\n"
    else:
        if output is None:
            _print_tables(app, title, tables, None)
            return
        with open(output, "w", encoding="utf-8") as fh:
            _print_tables(app, title, tables, fh)
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
    from orchestra_cli.report_tables import daily_tables
    from orchestra_cli.reports_html import daily_html

    data = daily_report(app.backends(), day)
    title = f"orchestra daily report {day.isoformat()}"
    emit(app, title, data, daily_tables(data), format, output, lambda: daily_html(title, data))


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
    from orchestra_cli.report_tables import metrics_tables
    from orchestra_cli.reports_html import tables_html

    data = metrics_report(app.backends(), parse_since(since), now())
    title = f"orchestra metrics since {since}"
    tables = metrics_tables(data)
    emit(app, title, data, tables, format, output, lambda: tables_html(title, tables))


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
