"""A Redis without persistence: health says so, and tasks it loses in a restart are
reported by recover and dlq, and come back with `dlq resubmit`."""

from __future__ import annotations

import json

import pytest

from orchestra_cli.status import Status
from tests.e2e.test_services_e2e import Env, _start
from tests.e2e.test_services_e2e import svc_env as svc_env
from tests.faults.conftest import PrivateRedis
from tests.support import processes, run_orchestra, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _on(env: Env, redis: PrivateRedis) -> Env:
    return Env(env.with_(ORCHESTRA_STATE_URL=redis.url), env.cwd, env.prefix)


def test_health_warns_in_development_and_fails_in_production_on_redis_without_persistence(
    svc_env: Env, private_redis: PrivateRedis
) -> None:
    env = _on(svc_env, private_redis)
    dev = run_orchestra(["--json", "health", "--check", "state"], env.vars, env.cwd)
    assert dev.code == 0, str(dev)
    check = json.loads(dev.out)["checks"][0]
    assert check["level"] == "warn" and "neither AOF nor RDB" in check["summary"]
    prod_env = env.with_(ORCHESTRA_ENV="production")
    prod = run_orchestra(["--json", "health", "--check", "state"], prod_env, env.cwd)
    assert prod.code == 1 and json.loads(prod.out)["checks"][0]["level"] == "fail"


def test_tasks_lost_in_a_redis_restart_are_reported_and_resubmitted_under_their_ids(
    svc_env: Env, private_redis: PrivateRedis
) -> None:
    env = _on(svc_env, private_redis)

    def cli(*args: str, expect: int = 0) -> str:
        result = run_orchestra(list(args), env.vars, env.cwd)
        assert result.code == expect, str(result)
        return result.out

    ids = [cli("task", "submit", "-q", f"lost work {i}").strip() for i in range(3)]
    private_redis.restart()  # no orchestrator ran: the tasks were only in Redis's memory
    with processes() as procs:
        system = _start(env, procs, ["run", "--agents", "all"], "system")
        b = env.backends()
        try:

            def dead() -> list[dict[str, object]] | None:
                found = json.loads(cli("--json", "dlq", "list"))
                return found if len(found) == 3 else None

            letters = wait_until(dead, timeout=60, interval=0.3, what="3 dead letters")
            assert {x["task_id"] for x in letters} == set(ids)
            assert all(x["task_status"] == "missing" and x["resubmittable"] for x in letters)
            assert "does not exist" in str(letters[0]["reason"])
            assert sorted(json.loads(cli("--json", "recover"))["lost_tasks"]) == sorted(ids)

            assert sorted(cli("dlq", "resubmit").split()) == sorted(ids)
            for task_id in ids:
                wait_until(
                    lambda t=task_id: b.state.get_task(t).status == Status.SUCCEEDED,
                    timeout=60,
                    what=f"{task_id} to succeed",
                )
            again = json.loads(cli("--json", "dlq", "resubmit"))
            assert again["resubmitted"] == []  # their tasks exist again: nothing is lost
        finally:
            b.close()
        assert system.popen.poll() is None
