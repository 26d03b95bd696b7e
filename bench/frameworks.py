"""Tool-loop tasks in other systems, one process per run, for bench/tool_rows.py.

``python -m bench.frameworks SYSTEM --url URL --n N`` runs N tasks at once
against the bench endpoint (each: the model calls ``lookup`` five times, then
answers), then prints one JSON line: wall seconds, CPU seconds of this
process over the run, its peak RSS, and how many tasks answered. SYSTEM:

- ``raw``: a hand-written loop on ``anthropic.AsyncAnthropic`` (its aiohttp client),
  streamed like orchestra's calls, asyncio; nothing persisted — the floor.
- ``raw-single``: single calls on the same client, ``--slots`` in flight until
  ``--n`` are done — the floor of the LLM-bound rows (bench/llm_rows.py).
- ``langgraph``: LangGraph's prebuilt ReAct agent (``create_react_agent``) on
  langchain-anthropic's ``ChatAnthropic``, asyncio; no checkpointer.
- ``langgraph-sqlite``: the same with ``AsyncSqliteSaver`` (every super-step's
  checkpoint written to a SQLite file: durable).
- ``crewai``: one CrewAI crew (one agent, one task, the tool) per task, run with
  ``akickoff`` (native async); its native Anthropic client (CrewAI imports only what the
  system uses: it runs in its own virtualenv, see tool_rows.crewai_python).

Each system's imports happen before the clock starts and are not in its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MODEL = "claude-sonnet-5-5"
API_KEY = "sk-ant-bench-000000"
TOOL = {
    "name": "lookup",
    "description": "Look a key up; returns its value.",
    "input_schema": {
        "type": "object",
        "properties": {"key": {"type": "string", "description": "the key"}},
        "required": ["key"],
    },
}
PROMPT = "Task {i}: look up the keys one by one with the lookup tool, then say you are done."


def lookup(key: str) -> str:
    """The tool every system runs: cheap and identical."""
    return f"value of {key}: 42"


Runner = Callable[[int], Awaitable[str]]


def raw_client(url: str) -> Any:
    """The SDK as a hand-written program at high concurrency would use it: its aiohttp
    client (the SDK's advice for many calls at once), no connection limit to queue on."""
    import anthropic
    import httpx2

    limits = httpx2.Limits(max_connections=65_536, max_keepalive_connections=None)
    http = anthropic.DefaultAioHttpClient(limits=limits)
    return anthropic.AsyncAnthropic(api_key=API_KEY, base_url=url, max_retries=0, http_client=http)


async def raw(url: str) -> Runner:
    client = raw_client(url)

    async def one(i: int) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": PROMPT.format(i=i)}]
        while True:
            async with client.messages.stream(
                model=MODEL, max_tokens=1024, messages=messages, tools=[TOOL]
            ) as stream:
                message = await stream.get_final_message()
            content = [b.model_dump(mode="json", exclude_none=True) for b in message.content]
            for block in content:
                block.pop("parsed_output", None)
            messages.append({"role": "assistant", "content": content})
            calls = [b for b in message.content if b.type == "tool_use"]
            if message.stop_reason != "tool_use" or not calls:
                return "".join(b.text for b in message.content if b.type == "text")
            results = [
                {"type": "tool_result", "tool_use_id": c.id, "content": lookup(**c.input)}
                for c in calls
            ]
            messages.append({"role": "user", "content": results})

    return one


async def langgraph(url: str, checkpointer: Any = None) -> Runner:
    from langchain_anthropic import ChatAnthropic
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent

    model = ChatAnthropic(
        model=MODEL, base_url=url, api_key=API_KEY, max_tokens=1024, max_retries=0
    )
    agent = create_react_agent(model, [tool(lookup)], checkpointer=checkpointer)

    async def one(i: int) -> str:
        config = {"configurable": {"thread_id": f"task-{i}"}, "recursion_limit": 50}
        state = await agent.ainvoke(
            {"messages": [("user", PROMPT.format(i=i))]},
            config=config,  # type: ignore[arg-type]
        )
        return str(state["messages"][-1].content)

    return one


async def crewai(url: str) -> Runner:
    from crewai import LLM, Agent, Crew, Task
    from crewai.tools import tool

    llm = LLM(model=f"anthropic/{MODEL}", base_url=url, api_key=API_KEY, max_tokens=1024)
    looked_up = tool("lookup")(lookup)

    async def one(i: int) -> str:
        agent = Agent(
            role="looker",
            goal="Look keys up",
            backstory="Looks things up.",
            llm=llm,
            tools=[looked_up],
            verbose=False,
            max_iter=10,
        )
        task = Task(description=PROMPT.format(i=i), expected_output="done", agent=agent)
        crew = Crew(agents=[agent], tasks=[task], verbose=False)
        result = await crew.akickoff()  # native async (kickoff_async: a thread each)
        return str(result)

    return one


async def single(url: str, n: int, slots: int, delay: float) -> dict[str, Any]:
    """Single-call tasks on the raw SDK, ``slots`` in flight until ``n`` are done: the
    floor of the LLM-bound rows. The slots start ``delay / slots`` apart, as the
    orchestra rows' first round is submitted; figures from the ``slots``-th answer on."""
    client = raw_client(url)
    marks: list[tuple[float, float]] = []  # (time, CPU) at each answer
    work = iter(range(n))

    async def call(i: int) -> None:
        content = f"bench call {i}"
        async with client.messages.stream(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": content}]
        ) as stream:
            await stream.get_final_message()

    async def slot(k: int) -> None:
        await asyncio.sleep(delay * k / slots)
        for i in work:
            await call(i)
            marks.append((time.perf_counter(), _cpu()))

    await call(-1)  # warm-up
    await asyncio.gather(*(slot(k) for k in range(slots)))
    (t0, c0), (t1, c1) = marks[slots - 1], marks[-1]
    tasks = len(marks) - slots
    return {
        "system": "raw-single",
        "n": n,
        "tasks_per_s": tasks / (t1 - t0),
        "cpu_ms_per_task": (c1 - c0) / tasks * 1000,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "done": len(marks),
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(system: str, url: str, n: int) -> dict[str, Any]:
    from contextlib import AsyncExitStack

    # a thread for each task in flight: CrewAI runs a step of every model call in the
    # loop's default executor (its context-window check) and LangChain a sync tool, and
    # asyncio's default of min(32, cores + 4) threads would cap CrewAI at 6 tasks at once
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(n + 4))
    async with AsyncExitStack() as stack:
        if system == "langgraph-sqlite":
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            db = Path(tempfile.mkdtemp(prefix="bench-langgraph-")) / "checkpoints.db"
            saver = await stack.enter_async_context(AsyncSqliteSaver.from_conn_string(str(db)))
            one = await langgraph(url, saver)
        elif system == "langgraph":
            one = await langgraph(url)
        elif system == "raw":
            one = await raw(url)
        elif system == "crewai":
            one = await crewai(url)
        else:
            raise SystemExit(f"unknown system {system!r}")
        await one(-1)  # warm-up: first connection, lazy imports, caches
        cpu, start = _cpu(), time.perf_counter()
        answers = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        wall, cpu = time.perf_counter() - start, _cpu() - cpu
    errors = [a for a in answers if isinstance(a, BaseException)]
    return {
        "system": system,
        "n": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "done": n - len(errors),
        "error": repr(errors[0])[:300] if errors else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system")
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--slots", type=int, default=64, help="raw-single: calls in flight")
    parser.add_argument("--delay", type=float, default=1.0, help="raw-single: the endpoint's")
    args = parser.parse_args()
    if args.system == "raw-single":
        result = asyncio.run(single(args.url, args.n, args.slots, args.delay))
    else:
        result = asyncio.run(measure(args.system, args.url, args.n))
    print(json.dumps(result), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
