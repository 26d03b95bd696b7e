"""`--metrics-port` / `--metrics-host` of the long-running commands (run, agent start)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from orchestra_cli.backends import Backends
    from orchestra_cli.cli.context import AppContext

MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve Prometheus metrics on this port (/metrics; 0 picks a free one).",
    ),
]
MetricsHost = Annotated[
    str,
    typer.Option("--metrics-host", help="Address for --metrics-port (0.0.0.0: every interface)."),
]


def serve_metrics(
    app: AppContext, backends: Backends, port: int, host: str, *, state: bool
) -> None:
    """Start the metrics endpoint; ``state``: with the deployment's gauges (orchestrator)."""
    from orchestra_cli import metrics
    from orchestra_cli.errors import UsageError

    metrics.enable(backends, state=state)
    try:
        server = metrics.serve(port, host)
    except OSError as exc:
        raise UsageError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
            "choose another --metrics-port",
        ) from exc
    app.info(f"metrics on http://{host}:{server.server_port}/metrics")
