"""OpenTelemetry traces of a task tree, configured by the standard ``OTEL_*`` variables.

Off unless the environment asks for traces (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER``; never with
``OTEL_SDK_DISABLED=true``): then nothing of OpenTelemetry is imported and
every hook is one cached check. Needs the ``otel`` extra
(``pip install 'orchestra-cli[otel]'``); everything else — endpoint, headers,
sampler, service name, resource attributes, batching — is the SDK's own
reading of its variables.

One task tree is one trace: ``orchestra.submit`` (CLI or API) → ``orchestra.plan``
(orchestrator) → ``invoke_agent <role>`` per subtask (agents, wherever they
run) → ``chat <model>`` per model call and ``execute_tool <tool>`` per tool
call, and ``orchestra.aggregate`` under the plan. The context travels in each
message's envelope (``Envelope.trace``, W3C ``traceparent``): a message carries
the span that sent it, and a task's result carries the context its task was
sent with, so a tree's subtasks and its aggregation are siblings under the plan.
Model-call spans follow the OpenTelemetry GenAI semantic conventions.
"""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from orchestra_cli.llm.base import LLMRequest, LLMResponse, ToolCall
    from orchestra_cli.models import Envelope, Task

P = ParamSpec("P")
R = TypeVar("R")
Attrs = dict[str, Any]

TRACER = "orchestra"
_state: dict[str, Any] = {}  # "on": bool once decided; "tracer" once set up
_origin: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "orchestra_trace_origin", default=None
)
PROCESS = os.environ.get("ORCHESTRA_PROCESS", "cli")


def wanted() -> bool:
    """Whether the environment asks for traces (read once a process)."""
    on = _state.get("on")
    if on is None:
        env = os.environ
        exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        on = not disabled and exporter != "none" and bool(exporter or endpoint)
        _state["on"] = on
    return bool(on)


def setup(process: str) -> None:
    """Name this process (``orchestrator``, ``agent-coder-1``, ``api``) before its first span."""
    _state["process"] = process


def _tracer() -> Any:
    tracer = _state.get("tracer")
    if tracer is None:
        tracer = _state["tracer"] = _make_tracer()
    return tracer


def _make_tracer() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from orchestra_cli import __version__

    attrs: Attrs = {"service.version": __version__, "orchestra.process": _process()}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = "orchestra"
    provider = TracerProvider(resource=Resource.create(attrs))
    provider.add_span_processor(BatchSpanProcessor(_exporter()))
    trace.set_tracer_provider(provider)
    return trace.get_tracer(TRACER, __version__)


def _process() -> str:
    return str(_state.get("process") or PROCESS)


def _exporter() -> Any:
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*


def flush(timeout_s: float = 5.0) -> None:
    """Export what is buffered (a process about to exit)."""
    if "tracer" in _state:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        force = getattr(provider, "force_flush", None)
        if force is not None:
            force(int(timeout_s * 1000))


# -- context in envelopes ----------------------------------------------------------------
def carrier(*, origin: bool = False) -> dict[str, str] | None:
    """The current span's context for an envelope (``origin``: the context the
    message being handled came with), or None when tracing is off."""
    if not wanted():
        return None
    if origin and (received := _origin.get()) is not None:
        return dict(received)
    from opentelemetry.propagate import inject

    out: dict[str, str] = {}
    inject(out)
    return out or None


@contextmanager
def consumed(envelope: Envelope) -> Iterator[None]:
    """Handle a message inside the context it carries."""
    if not wanted() or not envelope.trace:
        yield
        return
    from opentelemetry import context
    from opentelemetry.propagate import extract

    token = context.attach(extract(envelope.trace))
    origin = _origin.set(dict(envelope.trace))
    try:
        yield
    finally:
        _origin.reset(origin)
        context.detach(token)


# -- spans -------------------------------------------------------------------------------
def traced(
    start: Callable[..., tuple[str, Attrs]],
    end: Callable[[Any], Attrs] | None = None,
    *,
    kind: str = "INTERNAL",
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the function in a span named and described by ``start(*args)``; ``end(result)``
    adds attributes. An exception ends the span with an error status."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not wanted():
                return fn(*args, **kwargs)
            name, attrs = start(*args, **kwargs)
            with span(name, attrs, kind=kind) as s:
                result = fn(*args, **kwargs)
                if end is not None:
                    s.set_attributes(_clean(end(result)))
                return result

        return wrapper

    return decorate


def traced_async(
    start: Callable[..., tuple[str, Attrs]],
    end: Callable[[Any], Attrs] | None = None,
    *,
    kind: str = "INTERNAL",
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """``traced`` for a coroutine function (the span is current in its task's context)."""

    def decorate(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not wanted():
                return await fn(*args, **kwargs)
            name, attrs = start(*args, **kwargs)
            with span(name, attrs, kind=kind) as s:
                result = await fn(*args, **kwargs)
                if end is not None:
                    s.set_attributes(_clean(end(result)))
                return result

        return wrapper

    return decorate


class Opened:
    """A span started in one place and ended in another: a task whose call runs on the
    loop and whose outcome is written on another thread (engine/agent.py)."""

    def __init__(self, s: Any) -> None:
        self.s = s

    @contextmanager
    def current(self, *, end: bool = False) -> Iterator[None]:
        """The span is current in the block; ``end``: it ends with it (an exception
        leaving the block marks it an error, as ``traced`` does)."""
        if self.s is None:
            yield
            return
        from opentelemetry import trace

        with trace.use_span(
            self.s, end_on_exit=end, record_exception=end, set_status_on_exception=end
        ):
            yield

    def end(self, exc: BaseException | None = None) -> None:
        """End it here, without making it current (an error: recorded, and its status)."""
        if self.s is None:
            return
        if exc is not None:
            from opentelemetry.trace import Status, StatusCode

            self.s.record_exception(exc)
            self.s.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.s.end()


def opened(name: str, attrs: Attrs, *, kind: str = "INTERNAL") -> Opened:
    """A span started now, a child of the current context; made current by ``current``."""
    if not wanted():
        return Opened(None)
    from opentelemetry.trace import SpanKind

    return Opened(
        _tracer().start_span(name, kind=getattr(SpanKind, kind), attributes=_clean(attrs))
    )


def failing(fn: Callable[P, R]) -> Callable[P, R]:
    """Mark the current span an error with the message ``fn(self, task, error, …)`` is given
    (a task that fails without raising: the agent's ``_fail``)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if wanted() and len(args) >= 3:
            from opentelemetry import trace

            failed(trace.get_current_span(), str(args[2]))
        return fn(*args, **kwargs)

    return wrapper


@contextmanager
def span(name: str, attrs: Attrs | None = None, *, kind: str = "INTERNAL") -> Iterator[Any]:
    """A span around a block (a no-op object when tracing is off)."""
    if not wanted():
        yield _NOOP
        return
    from opentelemetry.trace import SpanKind

    with _tracer().start_as_current_span(
        name, kind=getattr(SpanKind, kind), attributes=_clean(attrs or {})
    ) as s:
        yield s


def failed(s: Any, message: str) -> None:
    """Mark a span's outcome an error without an exception (a tool's error result)."""
    if s is _NOOP:
        return
    from opentelemetry.trace import Status, StatusCode

    s.set_status(Status(StatusCode.ERROR, message[:200]))


class _Noop:
    def set_attributes(self, attrs: Attrs) -> None:
        pass


_NOOP = _Noop()


def _clean(attrs: Attrs) -> Attrs:
    return {k: v for k, v in attrs.items() if v is not None}


# -- what each span says -----------------------------------------------------------------
def _task(task: Task) -> Attrs:
    return {
        "orchestra.task.id": task.id,
        "orchestra.task.root_id": task.root_id,
        "orchestra.task.parent_id": task.parent_id,
        "orchestra.task.capability": task.capability,
        "orchestra.task.attempt": task.attempts,
    }


def submit_span(service: Any, req: Any, *args: Any, **kwargs: Any) -> tuple[str, Attrs]:
    return "orchestra.submit", {
        "orchestra.task.capability": getattr(req, "capability", None),
        "orchestra.process": _process(),
    }


def submitted(result: Any) -> Attrs:
    task = result[0] if isinstance(result, tuple) else result
    return {"orchestra.task.id": task.id, "orchestra.task.root_id": task.root_id}


def plan_span(orchestrator: Any, task: Task, *args: Any, **kwargs: Any) -> tuple[str, Attrs]:
    return "orchestra.plan", _task(task)


def aggregate_span(orchestrator: Any, parent: Task, children: Any) -> tuple[str, Attrs]:
    return "orchestra.aggregate", {**_task(parent), "orchestra.subtasks": len(children)}


def agent_span(agent: Any, task: Task, *args: Any, **kwargs: Any) -> tuple[str, Attrs]:
    role = getattr(getattr(agent, "role", None), "name", None) or "agent"
    return f"invoke_agent {role}", {
        **_task(task),
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": role,
        "orchestra.agent": getattr(agent, "name", None),
    }


def model_span(metered: Any, request: LLMRequest) -> tuple[str, Attrs]:
    provider = "anthropic" if metered.name == "anthropic" else str(metered.name)
    return f"chat {request.model}", {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": request.model,
        "gen_ai.request.max_tokens": request.max_tokens,
        "orchestra.task.id": metered.task.id,
        "orchestra.role": request.role,
        "orchestra.purpose": request.purpose,
    }


def model_answered(response: LLMResponse) -> Attrs:
    u = response.usage
    return {
        "gen_ai.response.model": response.model,
        "gen_ai.response.finish_reasons": [response.stop_reason],
        "gen_ai.usage.input_tokens": u.input_tokens,
        "gen_ai.usage.output_tokens": u.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": u.cache_read_tokens,
        "gen_ai.usage.cache_creation.input_tokens": u.cache_write_tokens,
        "orchestra.cost_usd": u.cost_usd,
    }


def tool_attrs(call: ToolCall) -> Attrs:
    return {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": call.name,
        "gen_ai.tool.call.id": call.id,
        "gen_ai.tool.type": "extension" if call.name.startswith("mcp__") else "function",
    }
