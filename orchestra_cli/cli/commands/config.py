"""`orchestra init` and `orchestra config show|validate`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestra_cli.cli.context import AppContext

config_app = typer.Typer(help="Show and check the effective configuration.", no_args_is_help=True)


def init(
    ctx: typer.Context,
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to write the files.", file_okay=False)
    ] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write orchestra.yaml and .env (mode 600) from the templates."""
    from orchestra_cli.errors import UsageError
    from orchestra_cli.templates import templates_dir

    app: AppContext = ctx.obj
    src = templates_dir()
    targets = [
        (src / "orchestra.yaml", directory / "orchestra.yaml", 0o644),
        (src / "env.template", directory / ".env", 0o600),
    ]
    existing = [str(dst) for _, dst, _ in targets if dst.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exist(s)", "pass --force to overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for source, dst, mode in targets:
        dst.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
        dst.chmod(mode)
        written.append(str(dst))
    if app.json:
        app.print_json({"written": written})
    else:
        for path in written:
            app.info(f"wrote {path}")
        app.info("next: `orchestra config show`, then `orchestra run` or `orchestra demo`")


@config_app.command("show")
def show(
    ctx: typer.Context,
    sources: Annotated[
        bool, typer.Option("--sources", help="Show where each value came from.")
    ] = False,
) -> None:
    """Print the effective settings (secrets masked)."""
    from orchestra_cli.backends import open_secrets
    from orchestra_cli.engine.applied import for_roles
    from orchestra_cli.llm.pricing import BUILTIN_PRICES, PRICES_AS_OF, PRICES_SOURCE
    from orchestra_cli.secrets.base import KNOWN_SECRETS
    from orchestra_cli.settings import settings_rows

    app: AppContext = ctx.obj
    loaded = app.loaded
    rows = settings_rows(loaded)
    agents = for_roles(app.roles, loaded.settings, loaded.sources)
    chain = open_secrets(loaded.settings)
    secrets = {}
    for name in KNOWN_SECRETS:
        value, provider = chain.lookup(name)
        secrets[name] = {"set": bool(value), "source": provider, "value": "***" if value else None}
    if app.json:
        app.print_json(
            {
                "config_file": str(loaded.config_file) if loaded.config_file else None,
                "settings": {k: ({"value": v, "source": s} if sources else v) for k, v, s in rows},
                "secrets": secrets,
                "price_table": {
                    "as_of": PRICES_AS_OF,
                    "source": PRICES_SOURCE,
                    "usd_per_million_tokens": {
                        k: v.model_dump() for k, v in BUILTIN_PRICES.items()
                    },
                },
                "agents": {  # what an agent of each role runs with (engine/applied.py)
                    role: {
                        k: {"value": a.value, "source": a.source, "note": a.note}
                        for k, a in v.items()
                    }
                    for role, v in agents.items()
                },
            }
        )
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("KEY")
    table.add_column("VALUE", overflow="fold")
    if sources:
        table.add_column("SOURCE")
    for key, value, source in rows:
        cells = [key, "-" if value is None else str(value)]
        table.add_row(*([*cells, source] if sources else cells))
    table_of = f"built-in table of {PRICES_AS_OF} ({len(BUILTIN_PRICES)} models; llm.prices adds)"
    table.add_row(
        *(["price table", table_of, PRICES_SOURCE] if sources else ["price table", table_of])
    )
    for role, values in agents.items():  # as applied, whatever the settings above say
        for what, a in values.items():
            cells = [f"agent {role} {what.replace('_', ' ')}", f"{a.value:g}"]
            source = a.source + (f"; {a.note}" if a.note else "")
            table.add_row(*([*cells, source] if sources else cells))
    for name, info in secrets.items():
        cells = [f"secret {name}", "*** (set)" if info["set"] else "(not set)"]
        table.add_row(*([*cells, info["source"] or "-"] if sources else cells))
    app.info(f"config file: {loaded.config_file or '(none; defaults and environment)'}")
    app.console.print(table, markup=False)


@config_app.command("validate")
def validate(
    ctx: typer.Context,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too (exit 1).")] = False,
) -> int:
    """Check the configuration and agent definitions; exit 2 with the problem if invalid.

    In the production environment it also warns about settings that are fine on
    a laptop but not in a deployment (embedded state, secrets in .env, offline model).
    """
    from orchestra_cli.backends import mode_of, open_secrets
    from orchestra_cli.llm.prompts import PromptLibrary

    app: AppContext = ctx.obj
    loaded = app.loaded
    roles = app.roles
    prompts = PromptLibrary(loaded.settings.prompts_dir)
    for role in roles.values():
        prompts.get(role.prompt)
    s = loaded.settings
    mode = mode_of(s)
    warnings = environment_warnings(s.environment, mode, s, open_secrets(s))
    result: dict[str, object] = {
        "valid": True,
        "config_file": str(loaded.config_file) if loaded.config_file else None,
        "environment": s.environment,
        "mode": mode,
        "roles": sorted(roles),
        "warnings": warnings,
    }
    if app.json:
        app.print_json(result)
    else:
        app.info(
            f"configuration is valid ({result['config_file'] or 'defaults'}; "
            f"environment {s.environment}; {mode} mode; roles: {', '.join(sorted(roles))})"
        )
        for warning in warnings:
            app.err_console.print(f"warning: {warning}", markup=False, style="yellow")
        if strict and warnings:
            from orchestra_cli.cli.main import error_line

            noun = "warning" if len(warnings) == 1 else "warnings"
            print(
                error_line(f"{len(warnings)} {noun}, and --strict fails on them"), file=sys.stderr
            )
    return 1 if strict and warnings else 0


def environment_warnings(environment: str, mode: str, settings: Any, secrets: Any) -> list[str]:
    """What a production deployment should not run with."""
    if environment != "production":
        return []
    warnings = []
    if mode == "embedded":
        warnings.append(
            "production on the embedded SQLite file: agents cannot run on other machines — "
            "set ORCHESTRA_STATE_URL (redis://) and ORCHESTRA_BROKER_URL (amqp://)"
        )
    _, source = secrets.lookup("ANTHROPIC_API_KEY")
    if settings.llm.provider == "offline" or (settings.llm.provider == "auto" and not source):
        warnings.append("production with the offline model provider — set ANTHROPIC_API_KEY")
    elif source == ".env":
        warnings.append(
            "ANTHROPIC_API_KEY comes from ./.env — keep production secrets in Vault "
            "(secrets_url: vault://…)"
        )
    if settings.log.level == "DEBUG":
        warnings.append("log.level DEBUG in production — use INFO")
    return warnings


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.add_typer(config_app, name="config")
