"""Agent steps through the worker: policy fail-closed, engine labels, tools, usage budget, feedback."""

from __future__ import annotations

from collections import Counter
from typing import Any

import jsonschema
import pytest

from baton.agents.base import OutputInvalid, StepRequest, StepResult
from baton.agents.tools import TOOLS
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import open_runtime
from baton.store.events import events_after

CALLS: Counter[str] = Counter()
SEEN_FEEDBACK: list[str | None] = []


def spending_agent(request: StepRequest, ctx: Any) -> StepResult:
    CALLS[request.agent] += 1
    return StepResult(
        output=f"done by {request.agent}", engine="python", usage={"input_tokens": 60, "output_tokens": 50}
    )


def picky_agent(request: StepRequest, ctx: Any) -> StepResult:
    SEEN_FEEDBACK.append(request.feedback)
    if request.attempt == 1:
        raise OutputInvalid("output.score: 7 is greater than the maximum of 1")
    return StepResult(output={"score": 0.5}, engine="python")


def echo_agent(request: StepRequest, ctx: Any) -> str:
    CALLS["echo"] += 1
    return f"echo {request.prompt}"


def write_note(text: str) -> str:
    """Write a note (not read-only)."""
    return text


def peek(name: str) -> str:
    """Read something (read-only)."""
    return name


TOOLS.register("test_write_note", write_note, read_only=False)
TOOLS.register("test_peek", peek, read_only=True)

SCORE = {
    "type": "object",
    "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}, "feedback": {"type": "string"}},
    "required": ["score", "feedback"],
}


def make_flows() -> Catalog:
    guarded = Flow("guarded")
    guarded.agent(
        "python_agent", engine="python:tests.integration.test_agent_steps:spending_agent", max_attempts=1
    )

    offline = Flow("offline-tools")
    offline.agent("reader", engine="offline", tools=["test_write_note", "test_peek"], output_schema=SCORE)

    spend = Flow("spend")
    spend.agent("first", engine="python:tests.integration.test_agent_steps:spending_agent")
    spend.agent("second", engine="python:tests.integration.test_agent_steps:spending_agent", needs=["first"])

    picky = Flow("picky")
    picky.agent(
        "judge", engine="python:tests.integration.test_agent_steps:picky_agent", max_attempts=3, backoff_s=0
    )

    default = Flow("default-engine")
    default.agent("echo", prompt="hello")
    return Catalog([guarded, offline, spend, picky, default])


async def _run(url: str, request: RunRequest) -> tuple[dict[str, Any], list[Any]]:
    async with open_runtime(url, catalog=make_flows(), upgrade=False) as rt:
        run = await rt.lifecycle.create_run(request)
        await rt.worker(WorkerSettings(lease_s=5, poll_s=0.05)).run(until_idle=True)
        snapshot = await rt.lifecycle.get_run(run["id"])
        events = await rt.db.read(events_after, run["id"], 0, 10_000)
        return snapshot, events


async def test_read_only_policy_refuses_an_engine_that_cannot_prove_it(database_url: str) -> None:
    CALLS.clear()
    run, events = await _run(database_url, RunRequest(flow="guarded", policy={"read_only": True}))
    assert run["status"] == "failed"
    assert "read-only" in run["status_reason"]
    denied = [e for e in events if e.type == "policy.denied"]
    assert denied and denied[0].payload["rule"] == "read_only"
    assert CALLS["python_agent"] == 0  # refused before it started: no fallback, no run


async def test_offline_engine_is_labelled_and_offers_only_read_only_tools(database_url: str) -> None:
    run, events = await _run(
        database_url, RunRequest(flow="offline-tools", inputs={}, policy={"read_only": True})
    )
    assert run["status"] == "succeeded"
    engine = next(e for e in events if e.type == "step.engine")
    assert engine.payload["engine"] == "offline" and engine.payload["offline"] is True
    assert engine.payload["mode"] == "read-only"
    assert engine.payload["tools"] == ["test_peek"]
    denied = [e.payload for e in events if e.type == "policy.denied"]
    assert [d["tool"] for d in denied] == ["test_write_note"]
    output = run["steps"][0]["output"]
    jsonschema.validate(output, SCORE)  # offline structured output satisfies the schema
    assert run["steps"][0]["engine"].startswith("offline")


async def test_usage_is_summed_and_the_token_budget_stops_the_run(database_url: str) -> None:
    CALLS.clear()
    run, events = await _run(database_url, RunRequest(flow="spend", policy={"max_tokens": 150}))
    assert run["status"] == "failed"
    assert "token budget exceeded: 220 tokens used, the policy allows 150" in run["status_reason"]
    assert run["usage"] == {"input_tokens": 120, "output_tokens": 100}
    assert [s["usage"] for s in run["steps"]] == [{"input_tokens": 60, "output_tokens": 50}] * 2
    assert events[-1].type == "run.failed"


async def test_validation_errors_are_given_back_on_the_next_attempt(database_url: str) -> None:
    SEEN_FEEDBACK.clear()
    run, events = await _run(database_url, RunRequest(flow="picky"))
    assert run["status"] == "succeeded"
    assert SEEN_FEEDBACK[0] is None
    assert "greater than the maximum" in (SEEN_FEEDBACK[1] or "")
    assert [e.type for e in events].count("step.retrying") == 1


async def test_default_engine_comes_from_the_environment(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    CALLS.clear()
    monkeypatch.setenv("BATON_DEFAULT_ENGINE", "python:tests.integration.test_agent_steps:echo_agent")
    run, _ = await _run(database_url, RunRequest(flow="default-engine"))
    assert run["status"] == "succeeded"
    assert run["steps"][0]["output"] == "echo hello"
    assert CALLS["echo"] == 1


async def test_an_unknown_cli_engine_fails_without_fallback(database_url: str) -> None:
    flows = make_flows()
    broken = Flow("broken-cli")
    broken.agent("coder", engine="cli:nope", max_attempts=1)
    flows.add(broken)
    async with open_runtime(database_url, catalog=flows, upgrade=False) as rt:
        run = await rt.lifecycle.create_run(RunRequest(flow="broken-cli"))
        await rt.worker(WorkerSettings(lease_s=5, poll_s=0.05)).run(until_idle=True)
        snapshot = await rt.lifecycle.get_run(run["id"])
    assert snapshot["status"] == "failed"
    assert "cli engine 'nope' is not configured" in snapshot["status_reason"]
