"""Redis state store: every part of the state seam on one Redis (see ``redis_conn``
for the key layout), plus snapshots, health and namespace cleanup."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from orchestra_cli.state.redis_agents import RedisAgents
from orchestra_cli.state.redis_events import RedisEvents
from orchestra_cli.state.redis_records import RedisRecords
from orchestra_cli.state.redis_tasks import RedisTasks


class RedisStateStore(RedisTasks, RedisEvents, RedisRecords, RedisAgents):
    """StateStore on Redis; one connection pool per process, shared by threads."""

    def export_snapshot(self, path: Path) -> int:
        """Every key of this namespace (DUMP), to a JSON-lines file; returns the key count."""
        from orchestra_cli.state import redis_snapshot

        return redis_snapshot.export(self.r, self.prefix, path)

    def import_snapshot(self, path: Path) -> int:
        """Replace this namespace with the snapshot's keys (RESTORE)."""
        from orchestra_cli.state import redis_snapshot

        return redis_snapshot.restore(self.r, self.prefix, path)

    def health(self) -> dict[str, Any]:
        """Ping round trip: ``{"ok", "url", "latency_ms", "version"|"error"}``."""
        started = time.perf_counter()
        client = self.r  # imports redis-py: its errors are known below
        try:
            client.ping()
            info = client.info("server")
            persistence = self._persistence()
        except sys.modules["redis"].RedisError as exc:
            return {"ok": False, "url": self._masked, "error": f"{type(exc).__name__}: {exc}"}
        return {
            "ok": True,
            "url": self._masked,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "version": info.get("redis_version"),
            "persistence": persistence,
        }

    def _persistence(self) -> dict[str, bool | None]:
        """Whether Redis keeps the data across a restart: AOF on, RDB save points set
        (None when CONFIG is not allowed, as on some managed services: unknown)."""
        aof = bool(self.r.info("persistence").get("aof_enabled"))
        try:
            save = self.r.config_get("save").get("save")
        except sys.modules["redis"].ResponseError:
            return {"aof": aof, "rdb": None}
        return {"aof": aof, "rdb": bool(save and str(save).strip())}

    def purge_namespace(self) -> int:
        """Delete every key under this store's prefix (tests and tools; never FLUSHDB)."""
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix) + ":*"
        deleted = 0
        batch: list[str] = []
        for key in self.r.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(self.r.unlink(*batch))
                batch = []
        if batch:
            deleted += int(self.r.unlink(*batch))
        return deleted
