"""The AgentRegistry contract (state/base.py): every backend passes the same tests."""

from __future__ import annotations

import pytest

from orchestra_cli.backends import Backends
from orchestra_cli.errors import NotFoundError
from orchestra_cli.models import AgentRecord, Task


def _task(**kw: object) -> Task:
    return Task(title=str(kw.pop("title", "t")), input="do it", **kw)  # type: ignore[arg-type]


def test_agent_registry_round_trip_and_stop_request(contract_backends: Backends) -> None:
    state = contract_backends.state
    rec = AgentRecord(name="coder-1", role="coder", capabilities=["code"], status="running")
    assert state.save_agent(rec) is False
    assert [a.name for a in state.list_agents()] == ["coder-1"]
    assert state.request_agent_stop("coder-1").stop_requested
    assert state.save_agent(rec) is True  # the next heartbeat learns of it
    assert state.get_agent("coder-1").status == "running"
    assert state.save_agent(rec, fresh=True) is False  # a new process under the name
    assert state.save_agent(rec) is False and not state.get_agent("coder-1").stop_requested
    state.delete_agent("coder-1")
    with pytest.raises(NotFoundError):
        state.get_agent("coder-1")
    with pytest.raises(NotFoundError):
        state.request_agent_stop("nobody")


def test_agents_are_listed_by_name_with_their_heartbeat_and_capabilities(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    for name, caps in (("zed", ["review"]), ("amy", ["code", "review"])):
        state.save_agent(AgentRecord(name=name, role="r", capabilities=caps, status="running"))
    listed = state.list_agents()
    assert [a.name for a in listed] == ["amy", "zed"]
    assert listed[0].capabilities == ["code", "review"] and listed[0].heartbeat_at > 0
    beat = listed[0].model_copy(update={"heartbeat_at": listed[0].heartbeat_at + 5})
    state.save_agent(beat)
    assert state.get_agent("amy").heartbeat_at == beat.heartbeat_at  # an upsert, not a copy
    assert len(state.list_agents()) == 2
