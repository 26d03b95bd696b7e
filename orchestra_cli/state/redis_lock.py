"""The Redis store's lock primitives (``locks.LockOps``): ``SET NX PX`` to take,
Lua compare-and-delete / compare-and-expire to release and renew."""

from __future__ import annotations

import functools
from typing import Any

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


class RedisLockOps:
    """Locks as ``<prefix>:lock:<name>`` keys holding the owner's token."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    @functools.cached_property
    def _scripts(self) -> tuple[Any, Any]:
        return self.client.register_script(_RELEASE), self.client.register_script(_RENEW)

    def _key(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    def take(self, name: str, token: str, ttl_ms: int) -> bool:
        return bool(self.client.set(self._key(name), token, nx=True, px=ttl_ms))

    def extend(self, name: str, token: str, ttl_ms: int) -> bool:
        return bool(self._scripts[1](keys=[self._key(name)], args=[token, ttl_ms]))

    def drop(self, name: str, token: str) -> bool:
        return bool(self._scripts[0](keys=[self._key(name)], args=[token]))

    def holder(self, name: str) -> str | None:
        value = self.client.get(self._key(name))
        return None if value is None else str(value)
