"""One lock implementation for every state store: a named token lock with expiry.

Used so exactly one orchestrator runs each recovery sweep and exactly one
aggregates a parent. The lock expires on its own if the holder dies; a long
holder keeps it with ``renew`` (or ``auto_renew``, a thread renewing at a
third of the TTL). Only the token's owner can release or renew it, so a
holder whose lock expired and was taken by another cannot delete the new one.

A store supplies the four primitives (``LockOps``) atomically on its own
medium — Redis: ``SET NX PX`` and compare-and-delete scripts; SQLite: one row
per lock in a write transaction — and ``TokenLock`` does the rest the same way
on both.
"""

from __future__ import annotations

import secrets
import threading
import time
from types import TracebackType
from typing import Protocol

from orchestra_cli.errors import StateError

POLL_SECONDS = 0.05


class LockLost(StateError):
    """The lock expired (or was taken) while its holder still worked."""


class LockOps(Protocol):
    """A store's atomic lock primitives, keyed by the lock's name."""

    def take(self, name: str, token: str, ttl_ms: int) -> bool:
        """Hold ``name`` with ``token`` for ``ttl_ms`` unless someone else holds it."""
        ...

    def extend(self, name: str, token: str, ttl_ms: int) -> bool:
        """A full TTL again, if ``token`` still holds it."""
        ...

    def drop(self, name: str, token: str) -> bool:
        """Free it, if ``token`` still holds it."""
        ...

    def holder(self, name: str) -> str | None:
        """The token holding it now (None: free or expired)."""
        ...


class TokenLock:
    """One named lock; ``acquire`` / ``release`` / ``renew``, or ``with lock:``."""

    def __init__(self, ops: LockOps, name: str, ttl: float) -> None:
        self.ops = ops
        self.name = name
        self.ttl_ms = max(1, int(ttl * 1000))
        self.token = secrets.token_hex(16)
        self._renewer: threading.Thread | None = None
        self._stop_renewing = threading.Event()
        self.lost = threading.Event()

    def acquire(self, *, blocking: bool = False, timeout: float = 10.0) -> bool:
        """Take the lock; with ``blocking``, wait up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.ops.take(self.name, self.token, self.ttl_ms):
                self.lost.clear()
                return True
            if not blocking or time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)

    def renew(self) -> bool:
        """Extend the expiry to a full TTL; False when the lock is no longer ours."""
        ok = self.ops.extend(self.name, self.token, self.ttl_ms)
        if not ok:
            self.lost.set()
        return ok

    def auto_renew(self) -> None:
        """Renew from a daemon thread every TTL/3 until released; sets ``lost`` if it slips."""
        self._stop_renewing.clear()

        def loop() -> None:
            while not self._stop_renewing.wait(self.ttl_ms / 3000):
                try:
                    if not self.renew():
                        return
                except Exception:  # a missed renewal is retried next tick; expiry is the bound
                    continue

        self._renewer = threading.Thread(target=loop, name=f"lock-{self.name}", daemon=True)
        self._renewer.start()

    def release(self) -> bool:
        """Free the lock if it is still ours; False when it had expired or was taken."""
        self._stop_renewing.set()
        if self._renewer is not None:
            self._renewer.join(timeout=1)
            self._renewer = None
        return self.ops.drop(self.name, self.token)

    def owned(self) -> bool:
        """Whether the lock is currently held with this token."""
        return self.ops.holder(self.name) == self.token

    def __enter__(self) -> TokenLock:
        if not self.acquire(blocking=True):
            raise StateError(f"lock {self.name} is held by another process", "try again later")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
