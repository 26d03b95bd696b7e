"""Health checks for `orchestra health`: services, agents, queues, secrets, dependencies, parity.

Each check returns a ``Check`` with a level (ok / warn / fail); the command
renders them and turns them into a cron-friendly exit code. A check never
raises: an unreachable service is a failed check, not a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestra_cli.backends import Backends
from orchestra_cli.engine.orchestrator import ORCHESTRATOR_ROLE
from orchestra_cli.engine.roles import RoleDefinition, known_capabilities
from orchestra_cli.errors import ConfigError, ExitStatus, OrchestraError
from orchestra_cli.logs import Journals
from orchestra_cli.models import Q_DEAD, Q_INTAKE, Q_RESULTS, work_queue
from orchestra_cli.settings import Settings
from orchestra_cli.status import Status

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    name: str
    level: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    unavailable: bool = False  # a required service could not be reached


@dataclass
class HealthContext:
    """What the checks share: settings, roles, and lazily opened clients."""

    settings: Settings
    roles: dict[str, RoleDefinition]
    _state: Any = None
    _broker: Any = None
    _broker_health: dict[str, Any] | None = None

    def capabilities(self) -> set[str]:
        return known_capabilities(self.roles)

    def state(self) -> Any:
        if self._state is None:
            from orchestra_cli.backends import open_state

            self._state = open_state(self.settings)
        return self._state

    def broker(self) -> Any:
        if self._broker is None:
            from orchestra_cli.backends import open_broker

            self._broker = open_broker(self.settings)
        return self._broker

    def broker_health(self) -> dict[str, Any]:
        if self._broker_health is None:
            queues = [Q_INTAKE, Q_RESULTS, Q_DEAD]
            queues += [work_queue(c) for c in sorted(self.capabilities())]
            self._broker_health = self.broker().health(queues)
        return self._broker_health

    def backends(self) -> Backends:
        """The clients as one ``Backends``, for the engine's own checks."""
        return Backends(self.settings, self.state(), self.broker(), Journals(self.settings.home))

    def close(self) -> None:
        for client in (self._state, self._broker):
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing is best effort
                    pass


def check_state(ctx: HealthContext) -> Check:
    info = ctx.state().health()
    if not info.get("ok"):
        return Check(
            "state",
            FAIL,
            f"cannot reach {info.get('url')}: {info.get('error')}",
            info,
            unavailable=True,
        )
    summary = f"{info['url']} ({info.get('latency_ms')} ms)"
    kept = info.get("persistence")
    if kept is not None and not kept.get("aof") and kept.get("rdb") is False:
        # a restart loses every task while their messages wait in RabbitMQ (they end
        # dead-lettered as 'task does not exist'): nothing to recover from
        level = WARN if ctx.settings.environment == "development" else FAIL
        return Check(
            "state",
            level,
            f"{summary}: Redis keeps nothing across a restart (neither AOF nor RDB "
            "snapshots) — set appendonly yes (or save points) in its config",
            info,
        )
    return Check("state", OK, summary, info)


def check_broker(ctx: HealthContext) -> Check:
    info = ctx.broker_health()
    if not info.get("ok"):
        return Check(
            "broker",
            FAIL,
            f"cannot reach {info.get('url')}: {info.get('error')}",
            info,
            unavailable=True,
        )
    return Check(
        "broker",
        OK,
        f"{info['url']} ({info.get('latency_ms')} ms)",
        {k: v for k, v in info.items() if k != "queues"},
    )


def check_orchestrator(ctx: HealthContext) -> Check:
    """At least one live orchestrator; without one, waiting work is a failure."""
    ttl = ctx.settings.agents.ttl_seconds
    records = [a for a in ctx.state().list_agents() if a.role == ORCHESTRATOR_ROLE]
    live = [a.name for a in records if a.is_alive(ttl)]
    if live:
        return Check(
            "orchestrator", OK, f"{len(live)} running ({', '.join(live[:3])})", {"live": live}
        )
    # queued tasks need only agents; unplanned tasks and parents need an orchestrator
    counts = ctx.state().status_counts()
    waiting = counts.get(Status.PENDING.value, 0) + counts.get(Status.WAITING.value, 0)
    if waiting:
        return Check(
            "orchestrator",
            FAIL,
            f"no orchestrator running and {waiting} task(s) waiting for one — "
            "start `orchestra run`",
            {"waiting": waiting},
        )
    return Check("orchestrator", WARN, "no orchestrator running — start `orchestra run`")


MAX_NAMED = 3  # names a summary shows; the count covers them all
MAX_RUNNING_SCAN = 10_000


def check_agents(ctx: HealthContext) -> Check:
    ttl = ctx.settings.agents.ttl_seconds
    everyone = ctx.state().list_agents()
    agents = [a for a in everyone if a.role != ORCHESTRATOR_ROLE]
    live = [a for a in agents if a.is_alive(ttl)]
    dead = [a.name for a in agents if a.status != "stopped" and not a.is_alive(ttl)]
    covered = {c for a in live for c in a.capabilities}
    missing = sorted(ctx.capabilities() - covered)
    orphaned = _orphaned(ctx, {a.name for a in everyone if a.is_alive(ttl)})
    details = {
        "live": len(live),
        "dead": dead,
        "capabilities_without_agent": missing,
        "by_role": _count_by_role(live),
        "running_on_dead_agents": orphaned,
    }
    parts = [f"{len(live)} live" if live else "no live agents"]
    if dead:
        parts[0] += f", {len(dead)} dead ({_named(dead)})"
    if orphaned:
        parts.append(
            f"{len(orphaned)} running task(s) on dead agents ({_named(orphaned)}) — "
            "taken over within agents.ttl_seconds while `orchestra run` runs; "
            "`orchestra recover` does it now"
        )
    if not live:
        parts.append("start one with `orchestra agent start coder`")
    elif missing:
        parts.append(f"no agent for {', '.join(missing)}")
    level = WARN if dead or missing or orphaned or not live else OK
    return Check("agents", level, "; ".join(parts), details)


def _orphaned(ctx: HealthContext, alive: set[str]) -> list[str]:
    """Short ids of running tasks whose agent is dead or gone from the registry."""
    from orchestra_cli.ids import short_id

    running = ctx.state().list_tasks(status=[Status.RUNNING.value], limit=MAX_RUNNING_SCAN)
    return [short_id(t.id) for t in running if t.agent and t.agent not in alive]


def _named(names: list[str]) -> str:
    """Up to MAX_NAMED names, then how many more (so the names agree with the count)."""
    shown = ", ".join(names[:MAX_NAMED])
    more = len(names) - MAX_NAMED
    return f"{shown}, +{more} more" if more > 0 else shown


def _count_by_role(agents: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for agent in agents:
        out[agent.role] = out.get(agent.role, 0) + 1
    return out


def check_queues(ctx: HealthContext) -> Check:
    info = ctx.broker_health()
    if not info.get("ok"):
        return Check("queues", FAIL, "broker unreachable", unavailable=True)
    queues: dict[str, dict[str, int]] = info.get("queues", {})
    dead = queues.get(Q_DEAD, {}).get("messages", 0)
    stranded = [
        q
        for q, v in queues.items()
        if q.startswith("work.") and v["messages"] and not v["consumers"]
    ]
    total = sum(v["messages"] for q, v in queues.items() if q != Q_DEAD)
    summary = f"{total} waiting, {dead} dead-lettered"
    level = OK
    if dead:
        level = WARN
        summary += " (`orchestra dlq list` shows them)"
    if stranded:
        level = WARN
        summary += f"; nobody consuming {', '.join(stranded)}"
    return Check("queues", level, summary, {"queues": queues})


def check_secrets(ctx: HealthContext) -> Check:
    from orchestra_cli.backends import open_secrets

    chain = open_secrets(ctx.settings)
    details: dict[str, Any] = {}
    for provider in chain.providers:
        report = provider.health()
        if provider.name == "vault":
            keys = ("sealed", "initialized", "version")
            details["vault"] = {"address": report["url"], **{k: report[k] for k in keys}}
        if not report["ok"]:
            # Vault is a service (exit 3 when it cannot serve); env and .env are local
            unavailable = provider.name == "vault"
            return Check("secrets", FAIL, report["error"], details, unavailable=unavailable)
    _, source = chain.lookup("ANTHROPIC_API_KEY")
    details["ANTHROPIC_API_KEY"] = source or "not set"
    if source is None:
        level = FAIL if ctx.settings.llm.provider == "anthropic" else WARN
        return Check(
            "secrets", level, "ANTHROPIC_API_KEY not set: agents use the offline provider", details
        )
    return Check("secrets", OK, f"ANTHROPIC_API_KEY from {source}", details)


def check_dependencies(ctx: HealthContext) -> Check:
    import importlib.metadata as md

    try:
        requirements = md.requires("orchestra-cli") or []
    except md.PackageNotFoundError:
        return Check("dependencies", WARN, "orchestra-cli metadata not found (not installed?)")
    problems, versions = [], {}
    for req in requirements:
        if "extra ==" in req:
            continue
        name = req.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            problems.append(f"{name} missing")
            continue
        if not _satisfies(req, versions[name]):
            problems.append(f"{name} {versions[name]} does not satisfy {req}")
    level = FAIL if problems else OK
    summary = "; ".join(problems) if problems else f"{len(versions)} runtime packages satisfied"
    return Check("dependencies", level, summary, {"versions": versions})


def _satisfies(requirement: str, version: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # packaging absent: presence is all we can check
        return True
    return Requirement(requirement).specifier.contains(version, prereleases=True)


def check_parity(ctx: HealthContext) -> Check:
    """Queued tasks in state against messages on their queues (the recovery sweep's test)."""
    from orchestra_cli.engine.recovery import Recovery

    if not ctx.broker_health().get("ok"):
        return Check("parity", FAIL, "broker unreachable", unavailable=True)
    lost = Recovery(ctx.backends()).queued_without_message()
    if lost:
        return Check(
            "parity",
            WARN,
            f"{len(lost)} queued task(s) have no message on their queue — "
            "`orchestra recover` republishes them",
            {"tasks": [f.task_id for f in lost]},
        )
    return Check("parity", OK, "every stale queued task has a message")


def check_llm(ctx: HealthContext) -> Check:
    """The model API the agents call, asked for every model in use (``GET
    /v1/models/{id}``, not billed: llm.model for planning, each role's own): the key, the
    network, a proxy, TLS and the role files' model names at once. Only when named
    (``--check llm``): a cron line every minute should not call out unasked."""
    from orchestra_cli.backends import open_llm, open_secrets
    from orchestra_cli.errors import LLMAuthError, LLMError

    secrets = open_secrets(ctx.settings)
    try:
        llm: Any = open_llm(ctx.settings, secrets)
    except ConfigError as exc:  # llm.provider anthropic and no key: a finding, not a usage error
        return Check("llm", FAIL, str(exc), {"provider": ctx.settings.llm.provider})
    if getattr(llm, "name", "") != "anthropic":
        if ctx.settings.llm.provider == "offline":
            return Check(
                "llm", OK, "the offline provider: no model API to reach", {"provider": "offline"}
            )
        return Check(  # auto: the key was what the check was asked to try
            "llm",
            WARN,
            "ANTHROPIC_API_KEY does not resolve: agents use the offline provider",
            {"provider": "offline (auto)"},
        )
    users: dict[str, list[str]] = {ctx.settings.llm.model: ["llm.model"]}
    for role in sorted(ctx.roles.values(), key=lambda r: r.name):
        users.setdefault(role.model, []).append(f"role {role.name}")
    details: dict[str, Any] = {"provider": "anthropic", "base_url": llm.base_url, "models": {}}
    answered: list[str] = []
    failed: list[tuple[str, LLMError]] = []
    try:
        for model, used_by in users.items():
            try:
                info = llm.check(model)
            except LLMError as exc:
                details["models"][model] = {"used_by": used_by, "error": str(exc)}
                failed.append((f"{model} ({', '.join(used_by)})", exc))
                if exc.exit_status == ExitStatus.UNAVAILABLE or isinstance(exc, LLMAuthError):
                    break  # the API or the key: every other model would say the same
                continue
            details["models"][model] = {"used_by": used_by, "display_name": info["display_name"]}
            answered.append(f"{model} ({info['display_name']})")
    finally:
        llm.close()
    if failed:
        which, error = failed[0]
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        unavailable = error.exit_status == ExitStatus.UNAVAILABLE
        return Check("llm", FAIL, f"{which}: {error}{more}", details, unavailable=unavailable)
    return Check("llm", OK, f"{', '.join(answered)} answered at {llm.base_url}", details)


CHECKS: dict[str, Callable[[HealthContext], Check]] = {
    "state": check_state,
    "broker": check_broker,
    "orchestrator": check_orchestrator,
    "agents": check_agents,
    "queues": check_queues,
    "secrets": check_secrets,
    "dependencies": check_dependencies,
    "parity": check_parity,
    "llm": check_llm,
}
ONLY_WHEN_NAMED = frozenset({"llm"})  # calls out of the deployment: not in the default run


NEEDS_STATE = frozenset({"orchestrator", "agents", "parity"})


def run_checks(
    ctx: HealthContext, names: list[str] | None = None, *, raise_config: bool = False
) -> list[Check]:
    """Run the named checks (all by default); a crashing check becomes a failed one.

    ``raise_config``: a bad configuration is raised (the CLI's exit 2) rather than
    reported as failed checks (the API's health report)."""
    results: list[Check] = []
    for name in names or [n for n in CHECKS if n not in ONLY_WHEN_NAMED]:
        state_down = any(c.name == "state" and c.unavailable for c in results)
        if name in NEEDS_STATE and state_down:
            results.append(Check(name, FAIL, "skipped: state store unreachable", unavailable=True))
            continue
        try:
            results.append(CHECKS[name](ctx))
        except ConfigError as exc:
            if raise_config:  # not a finding about the system: the command cannot run
                raise
            results.append(Check(name, FAIL, str(exc)))
        except OrchestraError as exc:
            unavailable = exc.exit_status == ExitStatus.UNAVAILABLE
            results.append(Check(name, FAIL, str(exc), unavailable=unavailable))
        except Exception as exc:
            results.append(Check(name, FAIL, f"{type(exc).__name__}: {exc}"))
    return results


def exit_status(checks: list[Check], strict: bool) -> int:
    """3 when a required service is unreachable, 1 on failures (or warnings if strict)."""
    if any(c.unavailable for c in checks):
        return ExitStatus.UNAVAILABLE
    if any(c.level == FAIL for c in checks) or (strict and any(c.level == WARN for c in checks)):
        return ExitStatus.FAILURE
    return ExitStatus.OK
