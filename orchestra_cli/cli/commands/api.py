"""`orchestra api serve`: the REST + WebSocket API under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestra_cli.cli.context import AppContext

api_app = typer.Typer(help="Serve the REST + WebSocket API.", no_args_is_help=True)


@api_app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")
    ] = 8000,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Serve without a token (only on 127.0.0.1) when none is set."
        ),
    ] = False,
) -> int:
    """Serve the API until SIGINT/SIGTERM; needs the ORCHESTRA_API_TOKEN secret.

    Clients send `Authorization: Bearer <token>` (a WebSocket may pass ?token=).
    Prints the URL on stdout once listening.
    """
    # fastapi and uvicorn are imported here only: `orchestra --help` must not load them
    from orchestra_cli.api.app import create_app
    from orchestra_cli.api.auth import check_serving_allowed, resolve_token
    from orchestra_cli.api.server import bind, serve, url_of

    app: AppContext = ctx.obj
    token = resolve_token(app.settings)
    check_serving_allowed(token, host, insecure)
    app.setup_logging("api", foreground=True)
    backends = app.backends()
    backends.start_background()  # a long-running process: its upkeep threads too
    api = create_app(backends, app.roles, token=token)
    sock = bind(host, port)
    url = url_of(sock)

    def listening() -> None:
        print(url, flush=True)
        auth = "token required" if token else "NO AUTH: --insecure"
        app.info(f"API on {url}/v1 ({auth}); Ctrl-C stops it")

    code = serve(api, sock, verbose=app.verbose, on_listening=listening)
    app.info("API stopped")
    return code


def register(app: typer.Typer) -> None:
    app.add_typer(api_app, name="api")
