"""End-to-end fixtures: real `orchestra` processes sharing one embedded SQLite file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestra_cli.backends import Backends, open_backends
from orchestra_cli.models import Task
from orchestra_cli.settings import Settings
from tests.support import Proc, Result, clean_env, processes, run_orchestra, wait_until


@dataclass
class Deployment:
    """One embedded deployment: its env, its processes, and a state reader."""

    tmp: Path
    env: dict[str, str]
    procs: list[Proc]
    backends: Backends
    _n: int = field(default=0)

    def start(self, *args: str) -> Proc:
        self._n += 1
        proc = Proc(list(args), self.env, self.tmp, self.tmp / f"proc-{self._n}.log")
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, expect: int | None = 0, timeout: float = 60) -> Result:
        result = run_orchestra(list(args), self.env, self.tmp, timeout=timeout)
        if expect is not None and result.code != expect:
            logs = "\n".join(f"--- {p.args} ---\n{p.output()[-3000:]}" for p in self.procs)
            pytest.fail(f"`orchestra {' '.join(args)}` expected {expect}\n{result}\n{logs}")
        return result

    def submit(self, *args: str) -> str:
        return self.cli("task", "submit", "-q", *args).out.strip()

    def task(self, task_id: str) -> Task:
        return self.backends.state.get_task(task_id)

    def wait_status(self, task_id: str, *statuses: str, timeout: float = 60) -> Task:
        def check() -> Task | None:
            task = self.task(task_id)
            return task if task.status in statuses else None

        try:
            return wait_until(check, timeout=timeout, what=f"{task_id} to be {statuses}")  # type: ignore[no-any-return]
        except BaseException:
            for p in self.procs:
                print(f"--- {p.args} ---\n{p.output()[-4000:]}")
            raise

    def get_json(self, task_id: str) -> dict[str, object]:
        return json.loads(self.cli("--json", "task", "get", task_id).out)  # type: ignore[no-any-return]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    home = tmp_path / "home"
    env = clean_env(
        {
            "ORCHESTRA_HOME": str(home),
            "ORCHESTRA_AGENTS__HEARTBEAT_SECONDS": "0.3",
            "ORCHESTRA_AGENTS__TTL_SECONDS": "1.5",
            "ORCHESTRA_BROKER__LEASE_SECONDS": "1.5",
            "ORCHESTRA_TASKS__RETRY_BACKOFF_SECONDS": "0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    backends = open_backends(Settings(home=home))
    with processes() as procs:
        yield Deployment(tmp_path, env, procs, backends)
    backends.close()
