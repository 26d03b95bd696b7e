"""`orchestra dlq list|purge` on the embedded broker (the same Broker calls as RabbitMQ's)."""

from __future__ import annotations

import json

from tests.conftest import CliRunner


def _dead_letters() -> str:
    """Two letters: a task's run message after its retries, and bytes that never parsed."""
    from orchestra_cli.backends import open_backends
    from orchestra_cli.models import MSG_RUN, Q_DEAD, Envelope, Task
    from orchestra_cli.settings import load_settings

    backends = open_backends(load_settings().settings)
    try:
        task, _ = backends.state.create_task(Task(title="t", input="x", capability="code"))
        env = Envelope(type=MSG_RUN, task_id=task.id)
        backends.broker.dead_letter("work.code", env, "attempts exhausted")
        backends.broker.publish_raw(Q_DEAD, b"\xff not an envelope")
        return task.id
    finally:
        backends.close()


def test_dead_letters_are_listed_with_their_tasks_status_and_purged_on_request(
    cli: CliRunner,
) -> None:
    task_id = _dead_letters()
    letters = json.loads(cli("--json", "dlq", "list").out)
    assert [x["task_id"] for x in letters] == [None, task_id]  # newest first
    assert letters[1]["task_status"] == "pending" and letters[1]["queue"] == "work.code"
    assert letters[1]["reason"] == "attempts exhausted" and letters[1]["enqueued_at"]
    assert cli("dlq", "list", "-q").out == f"{task_id}\n"  # task ids, for scripts
    plain = cli("dlq", "list").out.splitlines()  # piped: plain columns, one line each
    assert plain[0].split() == ["AGE", "QUEUE", "TASK", "NOW", "TRIES", "REASON"]
    assert task_id in plain[2] and plain[2].endswith("attempts exhausted")
    assert json.loads(cli("--json", "dlq", "list", "--limit", "1").out)[0]["task_id"] is None
    health = json.loads(cli("--json", "health", "--check", "queues").out)["checks"][0]
    assert "2 dead-lettered (`orchestra dlq list` shows them)" in health["summary"]

    refused = cli("dlq", "purge", expect=2)  # not a terminal: nothing is asked or deleted
    assert "pass --yes to confirm" in refused.err
    assert len(json.loads(cli("--json", "dlq", "list").out)) == 2
    assert json.loads(cli("--json", "dlq", "purge", "--yes").out) == {"purged": 2}
    assert "the dead-letter queue is empty" in cli("dlq", "list").err
    assert cli("dlq", "list", "--limit", "0", expect=2).err
