"""Test helpers: in-process CLI runs, real subprocesses, waiting, service checks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def service_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip on a laptop without the service; fail in CI, where it must run."""
    if service_reachable(host, port):
        return
    message = f"{name} not reachable at {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must run integration tests; see tests/ensure_services.py)")
    pytest.skip(message)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment without any ORCHESTRA_/ANTHROPIC_/VAULT_ settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORCHESTRA_", "ANTHROPIC_", "VAULT_"))
    }
    env.update(extra or {})
    return env


class Proc:
    """A real `orchestra` subprocess with its output captured to a file."""

    def __init__(self, args: list[str], env: Mapping[str, str], cwd: Path, log: Path) -> None:
        self.args = args
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "orchestra_cli", *args],
            env=dict(env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        if not self._log.closed:
            self._log.close()
        return self.popen.returncode


@contextmanager
def processes() -> Iterator[list[Proc]]:
    """Collects Procs and makes sure every one is stopped at the end."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.stop(signal.SIGKILL if p.popen.poll() is None else signal.SIGTERM, timeout=5)


def run_orchestra(
    args: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 60, input: bytes = b""
) -> Result:
    """Run one `orchestra` command as a subprocess and return its result."""
    proc = subprocess.run(
        [sys.executable, "-m", "orchestra_cli", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
        input=input,
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


class StallingProxy:
    """A TCP proxy to ``upstream`` that can stall: bytes stop flowing both ways while
    every connection stays open — a broker that hangs, as seen from its clients.
    ``down()`` cuts every connection and refuses new ones until ``up()``: an outage
    of the service as its clients see it, while the service itself runs on."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.flowing = threading.Event()
        self.flowing.set()
        self.refusing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._sockets: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing.is_set():
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.flowing.wait()  # stalled: held, not dropped, until the proxy closes
            if self._closed:
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def down(self) -> None:
        self.refusing.set()
        self._cut()

    def up(self) -> None:
        self.refusing.clear()

    def _cut(self) -> None:
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self.flowing.set()
        self._listener.close()
        self._cut()
