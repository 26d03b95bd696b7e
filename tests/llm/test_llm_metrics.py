"""Model-call metrics of an agent calling the (fake) Messages API: calls, tokens by kind
(cache reads and writes included) and cost by model and role, equal to what was billed."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.llm.fake_anthropic import FakeAnthropic
from tests.support import Proc, clean_env, processes, run_orchestra, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_write": "cache_creation_input_tokens",
}


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_agent_metrics_count_billed_tokens_by_kind_and_cost_by_model(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = clean_env(
        {
            "ORCHESTRA_HOME": str(tmp_path / "home"),
            "ANTHROPIC_API_KEY": fake.api_key,
            "ANTHROPIC_BASE_URL": fake.url,
            "ORCHESTRA_AGENTS__HEARTBEAT_SECONDS": "0.5",
        }
    )
    url = f"http://127.0.0.1:{port}/metrics"
    with processes() as procs:
        procs.append(Proc(["run"], env, tmp_path, tmp_path / "run.log"))
        procs.append(
            Proc(
                ["agent", "start", "coder", "--name", "coder-1", "--metrics-port", str(port)],
                env,
                tmp_path,
                tmp_path / "agent.log",
            )
        )
        wait_until(lambda: _up(url), timeout=60, what="the agent's metrics")
        for i in range(2):  # the second call reads the first one's cached prefix
            got = run_orchestra(
                ["task", "submit", "--wait", "--capability", "code", f"write parser {i}"],
                env,
                tmp_path,
            )
            assert got.code == 0, got
        samples = _scrape(url)

    models = {r["body"]["model"] for r in fake.requests}
    lines = [
        json.loads(line)
        for line in (tmp_path / "home" / "metrics.jsonl").read_text().splitlines()
        if '"llm_call"' in line
    ]
    calls = [(n, dict(ls)) for (n, ls), v in samples.items() if n == "orchestra_llm_calls_total"]
    assert len(calls) == 1, calls
    labels = calls[0][1]
    assert labels["role"] == "coder" and models == {labels["model"]}
    assert samples[("orchestra_llm_calls_total", frozenset(labels.items()))] == len(fake.billed)
    for kind, field in KINDS.items():
        key = ("orchestra_llm_tokens_total", frozenset({**labels, "kind": kind}.items()))
        assert samples.get(key, 0.0) == sum(u[field] for u in fake.billed), kind
    assert sum(u["cache_read_input_tokens"] for u in fake.billed) > 0
    cost = samples[("orchestra_llm_cost_usd_total", frozenset(labels.items()))]
    assert cost > 0 and cost == pytest.approx(sum(x["cost_usd"] for x in lines))
