"""The trace context in message envelopes."""

from __future__ import annotations

import json
import subprocess
import sys

from orchestra_cli.models import MSG_RUN, Envelope

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_an_untraced_envelope_keeps_the_wire_form_older_consumers_read() -> None:
    body = json.loads(Envelope(type=MSG_RUN, task_id="t").encode())
    assert "trace" not in body
    assert Envelope.model_validate(body).trace is None


def test_a_traced_envelope_carries_its_context_through_encoding() -> None:
    env = Envelope(type=MSG_RUN, task_id="t", trace={"traceparent": PARENT})
    assert Envelope.model_validate_json(env.encode()).trace == {"traceparent": PARENT}


def test_with_otel_variables_a_new_envelope_carries_the_current_span() -> None:
    code = (
        "from orchestra_cli import tracing\n"
        "from orchestra_cli.models import Envelope\n"
        "with tracing.span('outer') as s:\n"
        "    env = Envelope(type='task.run', task_id='t')\n"
        "    ctx = s.get_span_context()\n"
        "print(env.trace['traceparent'].split('-')[1:3] == "
        "[format(ctx.trace_id, '032x'), format(ctx.span_id, '016x')])\n"
    )
    env = {"OTEL_TRACES_EXPORTER": "console", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.splitlines()[0] == "True"


def test_a_task_that_fails_without_raising_marks_its_span_an_error() -> None:
    code = (
        "from orchestra_cli import tracing\n"
        "class Agent:\n"
        "    @tracing.failing\n"
        "    def _fail(self, task, error):\n"
        "        return 'ack'\n"
        "with tracing.span('invoke_agent coder') as s:\n"
        "    Agent()._fail(None, 'timed out after 5s')\n"
        "print(s.status.status_code.name, s.status.description)\n"
    )
    env = {"OTEL_TRACES_EXPORTER": "console", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.splitlines()[0] == "ERROR timed out after 5s"


def test_an_opened_span_ended_with_an_error_says_so() -> None:
    """``Opened.end``: the span of a call that never started (engine/agent.py)."""
    code = (
        "from orchestra_cli import tracing\n"
        "s = tracing.opened('orchestra.task', {'task.id': 't'})\n"
        "s.end(RuntimeError('the loop is closed'))\n"
        "tracing.opened('orchestra.other', {}).end()\n"
        "from opentelemetry import trace\n"
        "trace.get_tracer_provider().force_flush()\n"
    )
    env = {"OTEL_TRACES_EXPORTER": "console", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    spans = [json.loads(x) for x in out.stdout.replace("}\n{", "}\x00{").split("\x00")]
    first, second = spans
    assert first["name"] == "orchestra.task" and first["status"]["status_code"] == "ERROR"
    assert "RuntimeError: the loop is closed" in first["status"]["description"]
    assert first["events"][0]["name"] == "exception" and first["end_time"]
    assert second["name"] == "orchestra.other" and second["status"]["status_code"] == "UNSET"
