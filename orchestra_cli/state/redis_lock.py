"""A token lock on Redis: ``SET NX PX`` to take, Lua compare-and-delete to release.

Used so exactly one orchestrator runs each recovery sweep and exactly one
aggregates a parent. The lock expires on its own if the holder dies; a long
holder keeps it with ``renew`` (or ``auto_renew``, a thread renewing at a
third of the TTL). Only the token's owner can release or renew it, so a
holder whose lock expired and was taken by another cannot delete the new one.
"""

from __future__ import annotations

import secrets
import threading
import time
from types import TracebackType
from typing import Any

from orchestra_cli.errors import StateError

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

POLL_SECONDS = 0.05


class LockLost(StateError):
    """The lock expired (or was taken) while its holder still worked."""


class RedisLock:
    """One named lock; ``acquire`` / ``release`` / ``renew``, or ``with lock:``."""

    def __init__(self, client: Any, key: str, ttl: float) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(1, int(ttl * 1000))
        self.token = secrets.token_hex(16)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._renewer: threading.Thread | None = None
        self._stop_renewing = threading.Event()
        self.lost = threading.Event()

    def acquire(self, *, blocking: bool = False, timeout: float = 10.0) -> bool:
        """Take the lock; with ``blocking``, wait up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
                self.lost.clear()
                return True
            if not blocking or time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)

    def renew(self) -> bool:
        """Extend the expiry to a full TTL; False when the lock is no longer ours."""
        ok = bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))
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

        self._renewer = threading.Thread(target=loop, name=f"lock-{self.key}", daemon=True)
        self._renewer.start()

    def release(self) -> bool:
        """Delete the lock if it is still ours; False when it had expired or was taken."""
        self._stop_renewing.set()
        if self._renewer is not None:
            self._renewer.join(timeout=1)
            self._renewer = None
        return bool(self._release(keys=[self.key], args=[self.token]))

    def owned(self) -> bool:
        """Whether the lock is currently held with this token."""
        return bool(self.client.get(self.key) == self.token)

    def __enter__(self) -> RedisLock:
        if not self.acquire(blocking=True):
            raise StateError(f"lock {self.key} is held by another process", "try again later")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
