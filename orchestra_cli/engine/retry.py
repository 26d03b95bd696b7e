"""The retry policy: after a failed attempt, run the task again or fail it for good.

Applied by the agent the moment an attempt fails (so the task never sits in
``running`` with nobody working on it), and by the orchestrator for failure
notices from older agents. Retries back off exponentially; the last failure
dead-letters the task and records the decision.
"""

from __future__ import annotations

from orchestra_cli.backends import Backends
from orchestra_cli.backoff import Backoff, Jitter
from orchestra_cli.broker.base import publish_run
from orchestra_cli.errors import TransitionRejected
from orchestra_cli.models import MSG_RUN, Envelope, Task, work_queue
from orchestra_cli.status import Status

MAX_RETRY_DELAY_SECONDS = 60.0


def backoff(backends: Backends, attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: doubling from tasks.retry_backoff_seconds.

    Without jitter: the delay is the task's ``retry_in`` event a person reads, and
    RabbitMQ holds the message in a delay queue per distinct delay.
    """
    first = backends.settings.tasks.retry_backoff_seconds
    policy = Backoff(first=first, cap=MAX_RETRY_DELAY_SECONDS, jitter=Jitter.NONE)
    return policy.next_delay(attempts)


def retry_or_fail(backends: Backends, task: Task, error: str, *, retryable: bool = True) -> Task:
    """``running → queued`` (published after a backoff) or ``running → failed``.

    ``task`` is the running task as its attempt saw it; a task that changed
    meanwhile (cancelled, taken over) is returned as it now stands.
    """
    state = backends.state
    try:
        if retryable and task.attempts < task.max_attempts:
            delay = backoff(backends, task.attempts)
            task = state.transition(
                task.id,
                Status.QUEUED,
                expect_version=task.version,
                error=error,
                event_data={"retry_in": delay, "reason": error},
            )
            publish_run(backends.broker, task, delay=delay)
            return task
        why = "not retryable" if not retryable else f"after {task.attempts} attempts"
        task = state.transition(
            task.id, Status.FAILED, expect_version=task.version, error=f"{error} ({why})"
        )
    except TransitionRejected as exc:
        current = exc.current
        return current if isinstance(current, Task) else state.get_task(task.id)
    backends.broker.dead_letter(
        work_queue(task.capability or ""),
        Envelope(type=MSG_RUN, task_id=task.id, attempt=task.attempts),
        f"exhausted retries: {task.error}",
    )
    backends.journals.decisions.write(
        {
            "decision": "dead-letter",
            "task_id": task.id,
            "root_id": task.root_id,
            "why": f"failed {task.attempts} of {task.max_attempts} attempts: {error}",
            "alternatives": ["retry with `orchestra task retry`"],
        }
    )
    return task
