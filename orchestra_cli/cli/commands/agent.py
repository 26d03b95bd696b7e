"""`orchestra agent start|list|status|stop`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from orchestra_cli.cli import complete
from orchestra_cli.cli.context import AppContext
from orchestra_cli.cli.metrics_option import MetricsHost, MetricsPort, serve_metrics

AgentName = Annotated[
    str,
    typer.Argument(
        help="Agent name from `orchestra agent list`.", autocompletion=complete.agent_names
    ),
]

agent_app = typer.Typer(help="Run agents and inspect the agent registry.", no_args_is_help=True)

# one process's tasks at once: each in-flight tool loop may hold a thread of the step
# pool, and at its bound (blocking.MAX_THREADS, 4096) loops waiting on their own
# delegated children could wait for each other; below it, room is left for the pool's
# other steps; an operator's typo (-n 40000) gets a clear error
MAX_CONCURRENCY = 4000


@agent_app.command("start")
def start(
    ctx: typer.Context,
    role: Annotated[
        str,
        typer.Argument(
            help="Role from templates/agents (e.g. coder).", autocompletion=complete.roles
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="Registry name (default: role-host-pid).")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-n",
            min=1,
            max=MAX_CONCURRENCY,
            help=f"Tasks at once (at most {MAX_CONCURRENCY}: beyond, run more agents).",
        ),
    ] = None,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
) -> int:
    """Run one agent worker in the foreground until stopped (Ctrl-C drains)."""
    import threading

    from orchestra_cli.engine.agent import default_agent_name
    from orchestra_cli.engine.runtime import Runtime, install_stop_signals, run_until_stopped
    from orchestra_cli.proclogs import agent_log_component

    app: AppContext = ctx.obj
    name = name or default_agent_name(role)
    app.setup_logging(agent_log_component(name), foreground=True)  # `orchestra logs NAME`
    runtime = Runtime(app.backends(), app.roles, sources=app.loaded.sources)
    agent = runtime.add_agent(role, name=name, concurrency=concurrency)
    if metrics_port is not None:
        serve_metrics(app, runtime.backends, metrics_port, metrics_host, state=False)
    stop = threading.Event()
    install_stop_signals(stop, app.info)
    app.info(
        f"agent {agent.name} ({role}: {', '.join(agent.role.capabilities)}) consuming; "
        f"{agent.record.applied['concurrency']} at a time; Ctrl-C to stop"
    )
    run_until_stopped(runtime, stop)
    app.info(f"agent {agent.name} stopped")
    return 0  # drained cleanly, Ctrl-C or not (a second Ctrl-C exits 130 at once)


def _ttl(app: AppContext) -> float:
    return app.settings.agents.ttl_seconds


@agent_app.command("list")
def list_agents(
    ctx: typer.Context,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Include dead and stopped agents.")
    ] = False,
) -> None:
    """Agents in the registry: capabilities, state, load, last heartbeat (as the API's
    GET /v1/agents: dead and stopped ones with --all)."""
    from orchestra_cli.cli.render import LISTED_BY_DEFAULT, agent_json, agent_state, agents_table

    app: AppContext = ctx.obj
    everyone = app.service().agents()
    agents = [a for a in everyone if all_ or agent_state(a, _ttl(app)) in LISTED_BY_DEFAULT]
    dead = sum(1 for a in everyone if a not in agents and agent_state(a, _ttl(app)) == "dead")
    if dead and not app.json:
        app.info(f"{dead} dead agent(s) not shown; --all lists them")
    if app.json:
        app.print_json([agent_json(a, _ttl(app)) for a in agents])
    elif app.quiet:  # names only, for scripts
        sys.stdout.write("".join(f"{a.name}\n" for a in agents))
    elif not agents:
        app.info("no agents registered; start one with `orchestra agent start coder`")
    else:
        app.console.print(agents_table(agents, _ttl(app)))


@agent_app.command("status")
def status(
    ctx: typer.Context,
    name: AgentName,
) -> int:
    """One agent's registry record; exit 1 when it is dead or stopped."""
    from orchestra_cli.cli.render import agent_json

    app: AppContext = ctx.obj
    agent = app.service().agent(name)
    data = agent_json(agent, _ttl(app))
    if app.json:
        app.print_json(data)
    else:
        for key in (
            "name",
            "role",
            "capabilities",
            "state",
            "load",
            "concurrency",
            "processed",
            "failed",
            "current",
            "host",
            "pid",
            "version",
            "started_at",
            "heartbeat_at",
            "heartbeat_age_s",
        ):
            value = agent.applied.get(key, data[key])  # with why, when the agent said
            if isinstance(value, list):
                value = ", ".join(map(str, value)) or "-"
            print(f"{key:<16} {value}")
        from orchestra_cli.cli.render import usage_text

        print(f"{'usage':<16} {usage_text(agent.usage)}")
        if "task_timeout" in agent.applied:
            print(f"{'task_timeout':<16} {agent.applied['task_timeout']}")
    return 0 if data["state"] in ("running", "starting", "draining", "stopping") else 1


@agent_app.command("stop")
def stop(
    ctx: typer.Context,
    name: AgentName,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it has drained.")] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait with --wait.")] = 60.0,
) -> int:
    """Ask an agent to drain and stop (it finishes the tasks in hand)."""
    import time

    from orchestra_cli.errors import ExitStatus

    app: AppContext = ctx.obj
    service = app.service()
    service.stop_agent(name)
    app.info(f"asked agent {name} to stop")
    if not wait:
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent = service.agent(name)
        if agent.status == "stopped" or not agent.is_alive(_ttl(app)):
            app.info(f"agent {name} stopped")
            return 0
        time.sleep(0.2)
    app.info(f"agent {name} still {service.agent(name).status} after {timeout:g}s")
    return ExitStatus.FAILURE


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
