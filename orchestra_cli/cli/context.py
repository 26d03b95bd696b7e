"""Per-invocation state shared by commands: global flags, settings, clients."""

from __future__ import annotations

import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from orchestra_cli.backends import Backends
    from orchestra_cli.engine.roles import RoleDefinition
    from orchestra_cli.engine.service import TaskService
    from orchestra_cli.settings import LoadedSettings, Settings


class AppContext:
    def __init__(
        self, *, config: str | None, json: bool, quiet: bool, verbose: bool, no_color: bool
    ) -> None:
        self.config = config
        self.json = json
        self.quiet = quiet
        self.verbose = verbose
        self.no_color = no_color
        self._backends: Backends | None = None
        self._logging = False
        self._long_running = False  # run, agent start, api serve: set by setup_logging

    @cached_property
    def loaded(self) -> LoadedSettings:
        from orchestra_cli.settings import load_settings

        return load_settings(self.config)

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    @cached_property
    def roles(self) -> dict[str, RoleDefinition]:
        from orchestra_cli.engine.roles import load_roles

        return load_roles(self.settings.agents.definitions_dir)

    def backends(self) -> Backends:
        if self._backends is None:
            self.setup_logging("cli")
            from orchestra_cli.backends import open_backends

            # a one-shot command gives up on an unreachable Redis within its connect
            # timeout; a long-running process retries as it always does
            self._backends = open_backends(self.settings, patient=self._long_running)
        return self._backends

    def service(self) -> TaskService:
        from orchestra_cli.engine.service import TaskService

        return TaskService(self.backends(), lambda: self.roles)  # loaded only if needed

    def setup_logging(self, component: str, *, foreground: bool = False) -> None:
        """Once per process: JSON logs to ``logs/<component>.log``.

        Long-running foreground commands (run, agent start) also show warnings on
        stderr; one-shot commands only with -v.
        """
        if self._logging:
            return
        self._logging = True
        self._long_running = foreground
        from orchestra_cli import tracing

        tracing.setup(component)  # the process a span came from, when traces are on
        from orchestra_cli.logs import setup_logging

        s = self.settings
        setup_logging(
            s.logs_dir,
            component,
            level=s.log.level,
            max_bytes=s.log.max_bytes,
            backups=s.log.backups,
            stderr_level="INFO" if self.verbose else ("WARNING" if foreground else None),
        )

    @cached_property
    def console(self) -> Console:
        from rich.console import Console

        # off a terminal, rich would crop trees at 80 columns
        width = None if sys.stdout.isatty() else 200
        return Console(highlight=False, width=width, **self._colour())

    @cached_property
    def err_console(self) -> Console:
        from rich.console import Console

        # messages are never wrapped: ids and commands in them stay whole for copying
        return Console(stderr=True, highlight=False, soft_wrap=True, **self._colour())

    def _colour(self) -> dict[str, Any]:
        """--no-color: no ANSI styling at all; otherwise rich's own choice, which
        honours NO_COLOR and the terminal."""
        return {"color_system": None} if self.no_color else {}

    def print_json(self, data: Any) -> None:
        from orchestra_cli.util import dumps

        sys.stdout.write(dumps(data, indent=2) + "\n")
        sys.stdout.flush()

    def info(self, message: str) -> None:
        """A progress or status line on stderr (silent with -q)."""
        if not self.quiet:
            self.err_console.print(message, markup=False)

    def close(self) -> None:
        if self._backends is not None:
            self._backends.close()
            self._backends = None
