"""`orchestra up|down|ps|logs`: Redis, RabbitMQ and Vault for services mode."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestra_cli.cli import complete
from orchestra_cli.cli.context import AppContext

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live

    from orchestra_cli.services.base import ServiceRuntime, ServiceStatus, UpReport


class Runtime(StrEnum):
    auto = "auto"
    docker = "docker"
    native = "native"


RuntimeOption = Annotated[
    Runtime | None,
    typer.Option(
        "--runtime",
        help="docker (compose.yaml) or native (local processes); auto: docker when its "
        "engine answers, else native. Default: services.runtime.",
        case_sensitive=False,
    ),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=1,
        max=86_400,
        help="Seconds to wait, per service for down (default: services.timeout).",
    ),
]
SERVICE_NAMES = ("redis", "rabbitmq", "vault")
BUSY_PHASES = {"starting", "started", "waiting", "stopping"}
STYLES = {
    "healthy": "green",
    "already running": "green",
    "failed": "bold red",
    "stopped": "dim",
    "not running": "dim",
}


class ProgressView:
    """Progress of up/down: a live table on a terminal, plain lines on stderr otherwise."""

    def __init__(self, app: AppContext) -> None:
        self.app = app
        self.rows: dict[str, tuple[str, str]] = {}
        self.live: Live | None = None
        self.tty = app.err_console.is_terminal and not app.quiet

    def __enter__(self) -> ProgressView:
        if self.tty:
            from rich.live import Live

            self.live = Live(
                self._render(), console=self.app.err_console, refresh_per_second=10
            ).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._render(final=True))
            self.live.__exit__(None, None, None)

    def __call__(self, service: str, phase: str, detail: str) -> None:
        self.rows[service] = (phase, detail)
        if self.live is not None:
            self.live.update(self._render())
        else:
            self.app.info(f"{service}: {phase}" + (f" ({detail})" if detail else ""))

    def _render(self, final: bool = False) -> RenderableType:
        from rich.markup import escape
        from rich.spinner import Spinner
        from rich.table import Table

        table = Table(box=None, show_header=False, pad_edge=False)
        for name, (phase, detail) in self.rows.items():
            busy = phase in BUSY_PHASES and not final
            mark: RenderableType = Spinner("dots") if busy else "•"
            style = STYLES.get(phase, "")
            label = f"[{style}]{phase}[/]" if style else phase
            table.add_row(mark, name, label, escape(detail))
        return table


def _runtime(app: AppContext, runtime: Runtime | None, *, for_up: bool) -> ServiceRuntime:
    from orchestra_cli.services import select_runtime

    return select_runtime(app.settings, runtime.value if runtime else None, for_up=for_up)


def up(
    ctx: typer.Context,
    runtime: RuntimeOption = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait until every service passes its health check.")
    ] = False,
    timeout: TimeoutOption = None,
    env_file: Annotated[
        Path | None,
        typer.Option("--env-file", help="Also write the variables to export to this file (0600)."),
    ] = None,
    services: Annotated[
        str | None,
        typer.Option(
            "--services",
            "-s",
            metavar="NAME,…",
            help=f"Only these: {','.join(SERVICE_NAMES)} (default: all; Vault is optional).",
            autocompletion=complete.comma_list(complete.services),
        ),
    ] = None,
) -> None:
    """Start Redis, RabbitMQ and Vault (idempotent) and print the variables to export.

    stdout is `export KEY=value` lines, so `eval "$(orchestra up --wait -q)"` works.
    Exit 3 when a service cannot be started or does not become healthy.
    """
    from orchestra_cli.services.definitions import select_services, write_selected

    app: AppContext = ctx.obj
    chosen = select_services(services)
    if env_file is not None:
        _check_writable(env_file)  # before anything starts, not after
    rt = _runtime(app, runtime, for_up=True)
    with ProgressView(app) as view:
        wait_for = timeout or app.settings.services.timeout
        report = rt.up(wait=wait, timeout=wait_for, progress=view, services=chosen)
    write_selected(app.settings, chosen)
    if env_file is not None:
        from orchestra_cli.services.definitions import write_env_file

        write_env_file(env_file, report.env)
    _render_up(app, report, env_file)


def _check_writable(path: Path) -> None:
    from orchestra_cli.errors import UsageError

    folder = path.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        what = "is a directory" if path.is_dir() else f"cannot be written in {folder}"
        raise UsageError(f"--env-file {path} {what}", "give a file path in a writable folder")


def _render_up(app: AppContext, report: UpReport, env_file: Path | None) -> None:
    if app.json:
        app.print_json(
            {
                "runtime": report.runtime,
                "started": report.started,
                "already_running": report.already_running,
                "services": [s.to_json() for s in report.statuses],
                "env": report.env,
                "env_file": str(env_file) if env_file else None,
            }
        )
        return
    if report.already_running and not report.started:
        app.info(f"already running ({report.runtime}): {', '.join(report.already_running)}")
    elif report.started:
        app.info(f"started ({report.runtime}): {', '.join(report.started)}")
    where = f"; also written to {env_file}" if env_file else ""
    app.info(f'use the services in this shell with `eval "$(orchestra up --wait -q)"`{where}:')
    import shlex

    for key, value in report.env.items():
        print(f"export {key}={shlex.quote(value)}")


def down(
    ctx: typer.Context,
    runtime: RuntimeOption = None,
    volumes: Annotated[
        bool, typer.Option("--volumes", help="Also delete the services' data.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds before SIGKILL.")
    ] = 30.0,
) -> None:
    """Stop the services gracefully (SIGTERM, then SIGKILL after --timeout)."""
    app: AppContext = ctx.obj
    rt = _runtime(app, runtime, for_up=False)
    with ProgressView(app) as view:
        stopped = rt.down(volumes=volumes, timeout=timeout, progress=view)
    if app.json:
        app.print_json({"runtime": rt.name, "stopped": stopped, "volumes_removed": volumes})
    else:
        app.info(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def ps(ctx: typer.Context, runtime: RuntimeOption = None) -> int:
    """Each service: state, pid, port, health, uptime. Exit 1 when any is down or unhealthy
    (of those the last `up --services` started)."""
    app: AppContext = ctx.obj
    from orchestra_cli.services.definitions import read_selected

    rt = _runtime(app, runtime, for_up=False)
    statuses = rt.status()
    wanted = read_selected(app.settings)  # one left out of `up --services` may be down
    healthy = all(s.running and s.healthy for s in statuses if s.running or s.name in wanted)
    if app.json:
        app.print_json(
            {"runtime": rt.name, "healthy": healthy, "services": [s.to_json() for s in statuses]}
        )
    else:
        app.console.print(_ps_table(statuses))
    return 0 if healthy else 1


def _ps_table(statuses: list[ServiceStatus]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    from orchestra_cli.util import human_duration

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("SERVICE", "STATE", "PID", "PORT", "HEALTH", "UPTIME"):
        table.add_column(col, overflow="fold")
    now = time.time()
    for s in statuses:
        state = "[green]running[/]" if s.running else "[bold red]down[/]"
        if not s.running:
            health = "-"
        elif s.healthy:
            health = "[green]healthy[/]"
        else:
            health = f"[yellow]unhealthy[/] {escape(s.detail)}"
        uptime = s.uptime(now)
        table.add_row(
            s.name,
            state,
            str(s.pid or "-"),
            str(s.port),
            health,
            human_duration(uptime) if uptime is not None else "-",
        )
    return table


def logs(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(
            help=f"A service ({', '.join(SERVICE_NAMES)}; default: all of them), or an "
            "orchestra process: orchestrator, an agent's name, api, cli.",
            metavar="[SERVICE|PROCESS]",
            autocompletion=complete.log_names,
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", min=0, help="Only the last N lines.")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            "-t",
            metavar="ID",
            autocompletion=complete.task_ids,
            help="Every process's lines about this task (and its subtasks) and its state "
            "changes, merged by time.",
        ),
    ] = None,
    runtime: RuntimeOption = None,
) -> int:
    """Print (or follow) the logs of a service or an orchestra process."""
    import sys

    from orchestra_cli.errors import UsageError

    app: AppContext = ctx.obj
    if task is not None:
        if name is not None or follow:
            raise UsageError("--task reads every log at once", "drop the name and -f")
        return _print_lines(app, _task_lines(app, task, tail))
    if name is not None and name not in SERVICE_NAMES:
        return _print_lines(app, _process_lines(app, name, follow=follow, tail=tail), follow)
    rt = _runtime(app, runtime, for_up=False)
    try:
        for line in rt.log_lines(name, follow=follow, tail=tail):
            sys.stdout.write(line + "\n")
            if follow:
                sys.stdout.flush()
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how one stops following
    return 0


def _process_lines(
    app: AppContext, name: str, *, follow: bool, tail: int | None
) -> Iterator[dict[str, Any]]:
    from orchestra_cli import proclogs
    from orchestra_cli.services.logtail import follow_files, tail_lines

    path = proclogs.log_path(app.settings.logs_dir, name)
    process = name.removeprefix(proclogs.AGENT_PREFIX)
    following = follow_files({process: path}) if follow else None  # from the end as of now
    yield from proclogs.records(path, process, tail_lines(path, tail))
    for _, line in following or ():
        yield from proclogs.records(path, process, [line])


def _task_lines(app: AppContext, task_id: str, tail: int | None) -> list[dict[str, Any]]:
    from orchestra_cli import proclogs

    service = app.service()
    subtree = service.subtree(task_id)
    events = service.events(subtree[0].root_id, limit=100_000)
    found = proclogs.task_timeline(subtree, events, app.settings.logs_dir)
    return found if tail is None else found[-tail:] if tail else []


def _print_lines(app: AppContext, lines: Iterable[dict[str, Any]], follow: bool = False) -> int:
    """Records as JSON lines with --json, else as readable text."""
    import sys

    from orchestra_cli.proclogs import format_record
    from orchestra_cli.util import dumps

    try:
        for record in lines:
            sys.stdout.write((dumps(record) if app.json else format_record(record)) + "\n")
            if follow:
                sys.stdout.flush()
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how one stops following
    return 0


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("ps")(ps)
    app.command("logs")(logs)
