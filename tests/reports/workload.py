"""A known day of work in real state and journals, for the report tests.

Six leaf tasks: four succeed (coder-1 ×3, reviewer-1), two fail with the same
error (one of them retried), one more is still queued; two model calls per
finished task on two models, and one dead letter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from orchestra_cli.backends import open_backends
from orchestra_cli.models import MSG_RUN, Envelope, Task, Usage
from orchestra_cli.settings import load_settings
from orchestra_cli.status import Status

ERROR = "tool Bash timed out after 120s"


@dataclass
class Day:
    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.succeeded) + len(self.failed) + len(self.queued)


PLAN = [  # (capability, agent, outcome, attempts, model, input tokens)
    ("code", "coder-1", Status.SUCCEEDED, 1, "claude-sonnet-4-5", 1000),
    ("code", "coder-1", Status.SUCCEEDED, 1, "claude-sonnet-4-5", 1000),
    ("code", "coder-1", Status.FAILED, 2, "claude-sonnet-4-5", 1000),
    ("review", "reviewer-1", Status.SUCCEEDED, 1, "claude-haiku-4-5", 400),
    ("review", "reviewer-1", Status.FAILED, 1, "claude-haiku-4-5", 400),
    ("code", "coder-2", Status.SUCCEEDED, 1, "claude-sonnet-4-5", 1000),
]


def make_day() -> Day:
    """Store the workload; returns the ids by outcome."""
    day = Day()
    b = open_backends(load_settings().settings)
    try:
        for i, (capability, agent, final, attempts, model, tokens) in enumerate(PLAN):
            task, _ = b.state.create_task(Task(title=f"job {i}", input="x", capability=capability))
            b.state.transition(task.id, Status.QUEUED)
            b.state.transition(task.id, Status.RUNNING, agent=agent, attempts=attempts)
            time.sleep(0.04 * (i + 1))  # durations 40-240 ms
            cost = 0.01 if model.startswith("claude-sonnet") else 0.002
            usage = Usage(
                calls=2, input_tokens=tokens, output_tokens=tokens // 10, cost_usd=2 * cost
            )
            b.state.add_usage(task.id, usage)
            b.state.transition(task.id, final, error=ERROR if final == Status.FAILED else None)
            (day.succeeded if final == Status.SUCCEEDED else day.failed).append(task.id)
            for _ in range(2):
                b.journals.metrics.write(
                    {
                        "kind": "llm_call",
                        "model": model,
                        "role": agent.split("-")[0],
                        "input_tokens": tokens // 2,
                        "output_tokens": tokens // 20,
                        "cache_read_tokens": 50,
                        "cache_write_tokens": 0,
                        "cost_usd": cost,
                    }
                )
        waiting, _ = b.state.create_task(Task(title="later", input="x", capability="code"))
        b.state.transition(waiting.id, Status.QUEUED)
        day.queued.append(waiting.id)
        b.broker.dead_letter(
            "work.code", Envelope(type=MSG_RUN, task_id=day.failed[0]), "poison message"
        )
        b.journals.decisions.write({"decision": "route", "why": "test"})
    finally:
        b.close()
    return day
