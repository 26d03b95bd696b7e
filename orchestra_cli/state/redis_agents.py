"""The Redis store's agent registry and its locks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestra_cli.errors import NotFoundError
from orchestra_cli.models import AgentRecord
from orchestra_cli.state.redis_conn import RedisConnection
from orchestra_cli.state.redis_lock import RedisLockOps
from orchestra_cli.util import dumps

if TYPE_CHECKING:  # a one-shot command never takes a lock
    from orchestra_cli.state.locks import TokenLock


class RedisAgents(RedisConnection):
    """``AgentRegistry`` and ``Locks`` on Redis (state/base.py)."""

    # -- agents ------------------------------------------------------------
    def save_agent(self, agent: AgentRecord, *, fresh: bool = False) -> bool:
        """Upsert the registry record; returns whether a stop was requested."""
        payload = {
            "fresh": fresh,
            "name": agent.name,
            "data": agent.model_dump_json(),
            "caps": dumps(agent.capabilities),
            "hb": repr(agent.heartbeat_at),
        }
        stop = bool(self._run("save_agent", payload) == "1")
        agent.stop_requested = stop
        return stop

    def list_agents(self) -> list[AgentRecord]:
        """Every registered agent, by name."""
        names = self._call("list agents", lambda: self.r.zrange(self.key("agents"), 0, -1))

        def fetch() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for name in names:
                pipe.hmget(self.key("agent", name), "data", "stop")
            return list(pipe.execute())

        records = []
        for data, stop in self._call("read agents", fetch) if names else []:
            if data is None:
                continue  # deleted meanwhile
            rec = AgentRecord.model_validate_json(data)
            rec.stop_requested = stop == "1"
            records.append(rec)
        return sorted(records, key=lambda r: r.name)

    def agents_with(self, capability: str) -> list[str]:
        """Names of registered agents offering ``capability`` (the per-capability index)."""
        names = self._call("agents", lambda: self.r.smembers(self.key("cap", capability)))
        return sorted(names)

    def get_agent(self, name: str) -> AgentRecord:
        """One registry record; NotFoundError when unknown."""
        data, stop = self._call(
            "get agent", lambda: self.r.hmget(self.key("agent", name), "data", "stop")
        )
        if data is None:
            raise NotFoundError(f"agent {name!r} not found", "`orchestra agent list` shows agents")
        rec = AgentRecord.model_validate_json(data)
        rec.stop_requested = stop == "1"
        return rec

    def request_agent_stop(self, name: str) -> AgentRecord:
        """Flag the agent; its next heartbeat learns of it and it drains."""
        if not self._run("stop_agent", {"name": name}):
            raise NotFoundError(f"agent {name!r} not found", "`orchestra agent list` shows agents")
        return self.get_agent(name)

    def delete_agent(self, name: str) -> None:
        """Remove the agent from the registry and its capability indexes."""
        self._run("delete_agent", {"name": name})

    # -- locks, health, lifecycle ------------------------------------------
    def lock(self, name: str, ttl: float) -> TokenLock:
        """A token lock (``P:lock:<name>``) with expiry; see ``locks.TokenLock``."""
        from orchestra_cli.state.locks import TokenLock

        return TokenLock(RedisLockOps(self.r, self.prefix), name, ttl)
