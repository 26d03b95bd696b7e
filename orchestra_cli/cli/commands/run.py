"""`orchestra run` (the orchestrator loop) and `orchestra demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestra_cli.cli import complete
from orchestra_cli.cli.context import AppContext
from orchestra_cli.cli.metrics_option import MetricsHost, MetricsPort, serve_metrics

DEMO_TASK = (
    "Design, implement and deploy a small REST API for a todo list with persistence, "
    "then review the code and the deployment."
)


def run(
    ctx: typer.Context,
    agents: Annotated[
        str | None,
        typer.Option(
            help="Also run these built-in agents here: ROLE,ROLE… or 'all'.",
            autocompletion=complete.comma_list(complete.roles),
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-n", min=1, help="Orchestrator handler threads.")
    ] = 1,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
) -> int:
    """Run the orchestrator loop in the foreground (Ctrl-C drains, twice forces)."""
    import threading

    from orchestra_cli.engine.runtime import Runtime, install_stop_signals, run_until_stopped

    app: AppContext = ctx.obj
    app.setup_logging("orchestrator", foreground=True)
    runtime = Runtime(app.backends(), app.roles, sources=app.loaded.sources)
    runtime.add_orchestrator(concurrency)
    roles = _parse_roles(agents, app)
    for role in roles:
        runtime.add_agent(role)
    if metrics_port is not None:
        serve_metrics(app, runtime.backends, metrics_port, metrics_host, state=True)
    stop = threading.Event()
    install_stop_signals(stop, app.info)
    app.info(
        f"orchestrator running on {runtime.backends.broker.url}"
        + (f" with agents {', '.join(roles)}" if roles else "")
        + "; Ctrl-C to stop"
    )
    run_until_stopped(runtime, stop)
    app.info("orchestrator stopped")
    return 0  # drained cleanly, Ctrl-C or not (a second Ctrl-C exits 130 at once)


def _parse_roles(spec: str | None, app: AppContext) -> list[str]:
    if not spec:
        return []
    if spec.strip() == "all":
        return sorted(app.roles)
    return [r.strip() for r in spec.split(",") if r.strip()]


def demo(
    ctx: typer.Context,
    latency_ms: Annotated[int, typer.Option(min=0, help="Simulated model think time.")] = 600,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the demo's data dir.")] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Export the tree's files here (default ./orchestra-demo-output)."
        ),
    ] = None,
) -> int:
    """Run the sample workload: an orchestrator and the built-in agents on a multi-step task."""
    import shutil
    import tempfile
    import threading

    from orchestra_cli.backends import open_backends
    from orchestra_cli.cli.render import task_tree
    from orchestra_cli.cli.watch import watch_task
    from orchestra_cli.engine.runtime import Runtime
    from orchestra_cli.engine.service import TaskService
    from orchestra_cli.engine.submission import SubmitRequest
    from orchestra_cli.logs import setup_logging

    app: AppContext = ctx.obj
    home = Path(tempfile.mkdtemp(prefix="orchestra-demo-"))
    base = app.settings
    settings = base.model_copy(
        update={
            "home": home,
            "state_url": None,
            "broker_url": None,
            "llm": base.llm.model_copy(
                update={
                    "provider": "offline",
                    "offline": base.llm.offline.model_copy(update={"latency_ms": latency_ms}),
                }
            ),
            "agents": base.agents.model_copy(update={"heartbeat_seconds": 0.5}),
        }
    )
    setup_logging(settings.logs_dir, "demo")
    backends = open_backends(settings)
    app._backends = backends
    runtime = Runtime(backends, app.roles)
    runtime.add_orchestrator()
    for role in sorted(app.roles):
        runtime.add_agent(role, name=f"{role}-1")
    stop = threading.Event()
    threads = runtime.start(stop)
    try:
        app.info(
            f"demo: orchestrator + agents {', '.join(sorted(app.roles))} on {home} "
            "(offline provider, no services, no API key)"
        )
        task, _ = TaskService(backends, app.roles).submit(
            SubmitRequest(text=DEMO_TASK, title="Todo API: design, build, deploy, review")
        )
        app.info(f"submitted {task.id}: {DEMO_TASK}")
        code = watch_task(app, task.id, timeout=120)
        service = TaskService(backends, app.roles)
        if not app.json:
            app.console.print()
            app.console.print(task_tree(service.subtree(task.id)))
        # what the agents made: the coder's module and its test, the design note
        target = output or Path("orchestra-demo-output")
        _, written = service.export(task.id, target)
        app.info(
            f"the agents' files ({', '.join(e.path for e in written) or 'none'}) are in "
            f"{target}/ — the same as `orchestra task export {task.id} {target}`"
        )
        return code
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        if keep:
            app.info(f"demo data kept in {home}")
        else:
            backends.close()
            shutil.rmtree(home, ignore_errors=True)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
