"""A deployment of real `orchestra` processes against the fake Messages API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.llm.fake_anthropic import FakeAnthropic
from tests.support import Proc, clean_env, run_orchestra, wait_until


class Deployment:
    """An embedded deployment: `orchestra run` plus one agent (of ``role``) with one slot."""

    def __init__(
        self,
        fake: FakeAnthropic,
        tmp_path: Path,
        procs: list[Proc],
        *,
        env: dict[str, str] | None = None,
        role: str = "coder",
        concurrency: int = 1,
    ) -> None:
        self.tmp = tmp_path
        self.procs = procs
        self.role = role
        self.home = tmp_path / "home"
        self.cwd = tmp_path / "cwd"
        self.cwd.mkdir()
        self.env = clean_env(
            {
                "ORCHESTRA_HOME": str(self.home),
                "ANTHROPIC_API_KEY": fake.api_key,
                "ANTHROPIC_BASE_URL": fake.url,
                "ORCHESTRA_AGENTS__HEARTBEAT_SECONDS": "0.5",
                "ORCHESTRA_LLM__RETRY_BACKOFF_SECONDS": "0.05",
                **(env or {}),
            }
        )
        procs.append(Proc(["run"], self.env, self.cwd, tmp_path / "run.log"))
        self.agent = self.start_agent("1", concurrency=concurrency)

    def start_agent(self, suffix: str, role: str | None = None, concurrency: int = 1) -> Proc:
        """One agent of the role (or ``role``) with ``concurrency`` slots, running once this
        returns."""
        role = role or self.role
        name = f"{role}-{suffix}"
        proc = Proc(
            ["agent", "start", role, "--name", name, "--concurrency", str(concurrency)],
            self.env,
            self.cwd,
            self.tmp / f"{name}.log",
        )
        self.procs.append(proc)

        def running() -> bool:
            got = self.cli("agent", "list")
            return any(a["name"] == name and a["state"] == "running" for a in got)

        wait_until(running, timeout=60, interval=0.3, what=f"agent {name}")
        return proc

    def cli(self, *args: str) -> Any:
        got = run_orchestra(["--json", *args], self.env, self.cwd)
        assert got.code in (0, 1), got
        return json.loads(got.out)

    def submit_many(self, texts: list[str], *extra: str) -> list[str]:
        """One `task submit --batch` (one process, not one a task)."""
        batch = self.tmp / f"batch-{len(texts)}.txt"
        batch.write_text("".join(f"{t}\n" for t in texts))
        got = run_orchestra(["task", "submit", "--batch", str(batch), *extra], self.env, self.cwd)
        assert got.code == 0, got
        return got.out.split()

    def submit(self, text_: str, *extra: str) -> str:
        got = run_orchestra(["task", "submit", "-q", *extra, text_], self.env, self.cwd)
        assert got.code == 0, got
        return got.out.strip()

    def task(self, task_id: str) -> dict[str, Any]:
        data = self.cli("task", "get", task_id)
        return data.get("task", data)  # type: ignore[no-any-return]

    def finished(self, task_id: str, timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            task = self.task(task_id)
            return task if task["status"] in ("succeeded", "failed", "cancelled") else None

        return wait_until(done, timeout=timeout, interval=0.3, what=f"task {task_id}")
