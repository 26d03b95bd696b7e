"""Make sure the services the integration tests need are reachable.

Uses running servers; starts missing ones from Debian's packages where it
can (redis-server, rabbitmq-server); otherwise fails with a clear message.
Also installs Debian's bubblewrap (`bwrap`), the sandbox of the Bash tool, when
it is missing (the sandbox tests fail without it when CI is set), and Debian's
``chromium`` for the daily report's browser test (likewise).
Run by `make test` before pytest.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

REDIS = ("127.0.0.1", int(os.environ.get("ORCHESTRA_TEST_REDIS_PORT", "6379")))
RABBIT = ("127.0.0.1", int(os.environ.get("ORCHESTRA_TEST_AMQP_PORT", "5672")))


def reachable(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=1):
            return True
    except OSError:
        return False


def wait_for(addr: tuple[str, int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if reachable(addr):
            return True
        time.sleep(0.5)
    return False


def apt_install(package: str) -> None:
    """Install a Debian package as root; refresh the package lists only if that fails."""
    if not (shutil.which("apt-get") and os.geteuid() == 0):
        return
    print(f"ensure_services: installing {package} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", package]
    if subprocess.run(install, check=False, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(install, check=False, env=env)


def ensure_bwrap() -> None:
    """The Bash tool's sandbox; a warning only (its tests skip, or fail in CI)."""
    if not shutil.which("bwrap"):
        apt_install("bubblewrap")
    if not shutil.which("bwrap"):
        print(
            "ensure_services: warning: bwrap (Debian's bubblewrap) is not installed — "
            "the Bash sandbox tests will skip (fail with CI set); apt-get install bubblewrap",
            file=sys.stderr,
        )


def ensure_chromium() -> None:
    """The daily report's browser test; a warning only (the test skips, or fails in CI)."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        apt_install("chromium")
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        print(
            "ensure_services: warning: chromium is not installed — the report's browser "
            "test will skip (fail with CI set); apt-get install chromium",
            file=sys.stderr,
        )


def ensure_redis() -> str | None:
    if reachable(REDIS):
        return None
    if not shutil.which("redis-server"):
        apt_install("redis-server")
    if shutil.which("redis-server"):
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                str(REDIS[1]),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            check=False,
        )
        if wait_for(REDIS, 15):
            return None
    return (
        f"Redis is not reachable at {REDIS[0]}:{REDIS[1]} and could not be started — "
        "install redis-server or start Redis there"
    )


def ensure_rabbitmq() -> str | None:
    if reachable(RABBIT):
        return None
    if not shutil.which("rabbitmq-server"):
        apt_install("rabbitmq-server")
    if shutil.which("rabbitmq-server"):
        subprocess.run(["rabbitmq-server", "-detached"], check=False)
        if wait_for(RABBIT, 90):
            return None
    return (
        f"RabbitMQ is not reachable at {RABBIT[0]}:{RABBIT[1]} and could not be started — "
        "install rabbitmq-server or start RabbitMQ there"
    )


def main() -> int:
    ensure_bwrap()
    ensure_chromium()
    problems = [p for p in (ensure_redis(), ensure_rabbitmq()) if p]
    for problem in problems:
        print(f"ensure_services: error: {problem}", file=sys.stderr)
    if not problems:
        print("ensure_services: Redis and RabbitMQ reachable", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
