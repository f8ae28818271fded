"""Loop flows (produce → evaluate → revise) run by a real worker on SQLite and PostgreSQL.

Scripted agents (callables on the flow) give each attempt's score, so the pass and fail paths are
exact: one `score.updated` per attempt in order, the stage the run shows while each step runs, the
artifacts of every attempt, the verdict and its reason; cancel stops the loop between stages and
mid-stage; `draft-critique` runs to completion offline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.examples.draft_critique import draft_critique
from baton.flows.catalog import Catalog
from baton.flows.loop import loop_flow, parse_key
from baton.runtime import Runtime, open_runtime
from baton.store import artifacts as artifact_store
from baton.store.events import events_after

#: Scores the scripted evaluator gives, attempt by attempt.
SCORES: list[float] = []
#: How many times each role ran.
EXECUTIONS: Counter[str] = Counter()
#: (step key, the run's progress stage while it ran)
STAGES_SEEN: list[tuple[str, str | None]] = []
#: What each reviser saw as its upstream.
REVISER_SAW: list[dict[str, Any]] = []
#: Test switches: the runtime, a reviser that fails once, a reviser that hangs.
CONTROL: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _fresh_script() -> Iterator[None]:
    for state in (SCORES, STAGES_SEEN, REVISER_SAW):
        state.clear()
    EXECUTIONS.clear()
    CONTROL.clear()
    yield
    CONTROL.clear()


async def _stage(ctx: Any, *, wait: bool = False) -> None:
    """Record the stage the run shows while this step runs (the producer waits for `start`)."""
    rt: Runtime = CONTROL["rt"]
    deadline = time.monotonic() + 5
    while True:
        run = await rt.lifecycle.get_run(ctx.run_id)
        stage = (run["progress"] or {}).get("stage")
        if stage is not None or not wait or time.monotonic() > deadline:
            STAGES_SEEN.append((ctx.step_key, stage))
            return
        await asyncio.sleep(0.01)


async def write(request: Any, ctx: Any) -> str:
    EXECUTIONS["producer"] += 1
    await _stage(ctx, wait=True)
    return f"# Draft 1\n\nAbout {request.inputs['topic']}."


async def evaluate(request: Any, ctx: Any) -> dict[str, Any]:
    EXECUTIONS["evaluator"] += 1
    await _stage(ctx)
    _, attempt = parse_key(ctx.step_key)
    (draft,) = request.upstream.values()
    return {"score": SCORES[attempt - 1], "feedback": f"feedback {attempt} on {draft.splitlines()[0]}"}


async def revise(request: Any, ctx: Any) -> str:
    EXECUTIONS["reviser"] += 1
    await _stage(ctx)
    REVISER_SAW.append(dict(request.upstream))
    if CONTROL.pop("fail_reviser_once", False):
        raise RuntimeError("transient trouble")  # retried after its backoff (30 s): queued until then
    if CONTROL.get("hang_reviser"):
        await asyncio.sleep(60)
    _, attempt = parse_key(ctx.step_key)
    return f"# Draft {attempt}\n\nRevised."


scripted = loop_flow(
    "scripted-loop",
    producer={"engine": write, "prompt": "Write about the topic."},
    evaluator={"engine": evaluate, "prompt": "Score it."},
    reviser={"engine": revise, "prompt": "Revise it.", "backoff_s": 30},
    max_attempts=3,
    pass_threshold=0.8,
    title="Scripted loop",
    input_schema={"type": "object", "properties": {"topic": {"type": "string", "default": "loops"}}},
    bands={"small": 2, "medium": 3, "large": 5},
)

CATALOG = Catalog([scripted, draft_critique])


def settings() -> WorkerSettings:
    return WorkerSettings(lease_s=5, poll_s=0.05)


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as runtime:
        CONTROL["rt"] = runtime
        yield runtime


async def start(rt: Runtime, flow: str = "scripted-loop", **fields: Any) -> str:
    request = RunRequest(flow=flow, created_by="tester", concurrency_limit=100, **fields)
    return str((await rt.lifecycle.create_run(request))["id"])


async def drain(rt: Runtime) -> None:
    await asyncio.wait_for(rt.worker(settings()).run(until_idle=True), 30)


async def events_of(rt: Runtime, run_id: str) -> list[Any]:
    return list(await rt.db.read(events_after, run_id, 0, 100_000))


async def artifacts_of(rt: Runtime, run_id: str) -> dict[str, tuple[str | None, Any]]:
    """Artifacts by name: (step key, content decoded: JSON parsed, text as text)."""
    found: dict[str, tuple[str | None, Any]] = {}
    for row in await rt.db.read(artifact_store.list_artifacts, run_id):
        content = await rt.db.read(artifact_store.get_artifact_content, row.id)
        assert content is not None
        text = content.decode()
        found[row.name] = (row.step_key, json.loads(text) if row.media_type == "application/json" else text)
    return found


def statuses(run: dict[str, Any]) -> dict[str, str]:
    return {s["key"]: s["status"] for s in run["steps"]}


async def wait_for(rt: Runtime, run_id: str, check: Any, what: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = await rt.lifecycle.get_run(run_id)
        if check(run):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}: run is {run['status']}, steps {statuses(run)}")
        await asyncio.sleep(0.02)


# --- pass and fail -------------------------------------------------------------------------------


async def test_a_loop_revises_until_a_score_reaches_the_threshold(rt: Runtime) -> None:
    SCORES[:] = [0.4, 0.85]
    run_id = await start(rt)
    await drain(rt)

    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "succeeded"
    assert run["status_reason"] == "passed with score 0.85 at attempt 2"
    assert run["result"]["score"] == 0.85 and run["result"]["attempt"] == 2
    assert run["result"]["output"] == "# Draft 2\n\nRevised."
    assert run["progress"] == {
        "stage": "done",
        "current_attempt": 2,
        "max_attempts": 3,
        "score": 0.85,
        "scores": [{"attempt": 1, "score": 0.4}, {"attempt": 2, "score": 0.85}],
        "pass_threshold": 0.8,
    }
    assert statuses(run) == {
        "start": "succeeded",
        "produce-1": "succeeded",
        "evaluate-1": "succeeded",
        "revise-2": "succeeded",
        "evaluate-2": "succeeded",
    }
    assert EXECUTIONS == Counter({"producer": 1, "evaluator": 2, "reviser": 1})
    # The stage the run showed while each step ran.
    assert STAGES_SEEN == [
        ("produce-1", "producing"),
        ("evaluate-1", "evaluating"),
        ("revise-2", "revising"),
        ("evaluate-2", "evaluating"),
    ]
    # The reviser saw the previous output and its evaluation.
    assert REVISER_SAW == [
        {
            "produce-1": "# Draft 1\n\nAbout loops.",
            "evaluate-1": {"score": 0.4, "feedback": "feedback 1 on # Draft 1"},
        }
    ]

    evts = await events_of(rt, run_id)
    scores = [e.payload for e in evts if e.type == "score.updated"]
    assert scores == [
        {
            "attempt": 1,
            "score": 0.4,
            "feedback": "feedback 1 on # Draft 1",
            "threshold": 0.8,
            "max_attempts": 3,
            "passed": False,
        },
        {
            "attempt": 2,
            "score": 0.85,
            "feedback": "feedback 2 on # Draft 2",
            "threshold": 0.8,
            "max_attempts": 3,
            "passed": True,
        },
    ]
    order = [
        (e.type, e.step_key) for e in evts if e.type in ("score.updated", "step.succeeded", "step.queued")
    ]
    first_score = order.index(("score.updated", None))
    assert order[first_score - 1] == ("step.succeeded", "evaluate-1")
    assert order[first_score + 1] == ("step.queued", "revise-2")
    assert [e.type for e in evts][-1] == "run.succeeded"

    artifacts = await artifacts_of(rt, run_id)
    assert artifacts["attempt-1.md"] == ("produce-1", "# Draft 1\n\nAbout loops.")
    assert artifacts["attempt-1.eval.json"] == (
        "evaluate-1",
        {"score": 0.4, "feedback": "feedback 1 on # Draft 1"},
    )
    assert artifacts["attempt-2.md"] == ("revise-2", "# Draft 2\n\nRevised.")
    assert artifacts["attempt-2.eval.json"][1]["score"] == 0.85
    assert "attempt-3.md" not in artifacts
    report = run["report"]
    assert "- attempt 1: **0.4**" in report and "- attempt 2: **0.85**" in report


async def test_a_loop_that_never_reaches_the_threshold_fails_with_its_final_score(rt: Runtime) -> None:
    SCORES[:] = [0.2, 0.5, 0.7]
    run_id = await start(rt)
    await drain(rt)

    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "failed"
    assert run["status_reason"] == "score below threshold after 3 attempts (final score 0.7)"
    assert run["status_reason"].startswith("score below threshold after 3 attempts")
    assert run["result"]["score"] == 0.7 and run["result"]["passed"] is False
    assert run["result"]["output"] == "# Draft 3\n\nRevised."
    assert run["progress"]["stage"] == "done" and run["progress"]["current_attempt"] == 3
    assert run["progress"]["score"] == 0.7
    assert EXECUTIONS == Counter({"producer": 1, "evaluator": 3, "reviser": 2})

    evts = await events_of(rt, run_id)
    assert [e.payload["attempt"] for e in evts if e.type == "score.updated"] == [1, 2, 3]
    assert [e.payload["score"] for e in evts if e.type == "score.updated"] == [0.2, 0.5, 0.7]
    assert [e.type for e in evts][-1] == "run.failed"
    artifacts = await artifacts_of(rt, run_id)
    for attempt in (1, 2, 3):
        assert f"attempt-{attempt}.md" in artifacts and f"attempt-{attempt}.eval.json" in artifacts
    assert artifacts["attempt-3.eval.json"][1]["score"] == 0.7
    assert "attempt-4.md" not in artifacts


async def test_the_band_of_a_run_sets_how_many_attempts_it_makes(rt: Runtime) -> None:
    SCORES[:] = [0.1, 0.2, 0.3]
    run_id = await start(rt, band="small")
    await drain(rt)
    run = await rt.lifecycle.get_run(run_id)
    assert run["status_reason"] == "score below threshold after 2 attempts (final score 0.2)"
    assert run["progress"]["max_attempts"] == 2
    assert EXECUTIONS["evaluator"] == 2


# --- cancel --------------------------------------------------------------------------------------


async def test_cancel_between_stages_stops_the_loop_before_the_next_attempt(rt: Runtime) -> None:
    SCORES[:] = [0.1, 0.9]
    CONTROL["fail_reviser_once"] = True
    run_id = await start(rt)
    task = asyncio.create_task(rt.worker(settings()).run(until_idle=True))
    try:
        # revise-2 failed once and waits, queued, for its retry 30 s later: the loop is between stages.
        run = await wait_for(
            rt,
            run_id,
            lambda r: statuses(r).get("revise-2") == "queued" and bool(REVISER_SAW),
            "revise-2 to be queued for its retry",
        )
        assert run["status"] == "running"
        assert run["progress"]["stage"] == "revising" and run["progress"]["current_attempt"] == 2

        cancelled = await rt.lifecycle.cancel(run_id, reason="enough", by="tester")
        assert cancelled["status"] == "cancelled"  # nothing in flight: immediate
        await asyncio.wait_for(task, 10)  # the worker has nothing left to wait for
    finally:
        if not task.done():
            task.cancel()
    await drain(rt)  # nor does a worker that comes later

    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "cancelled" and run["status_reason"] == "cancelled by tester: enough"
    assert statuses(run)["revise-2"] == "cancelled" and statuses(run)["evaluate-2"] == "cancelled"
    assert EXECUTIONS == Counter({"producer": 1, "evaluator": 1, "reviser": 1})
    evts = await events_of(rt, run_id)
    assert [e.payload["attempt"] for e in evts if e.type == "score.updated"] == [1]
    assert [e.attempt for e in evts if e.type == "step.started" and e.step_key == "revise-2"] == [1]
    assert not [e for e in evts if e.type == "step.started" and e.step_key == "evaluate-2"]


async def test_cancel_mid_stage_stops_the_running_reviser_and_the_loop(rt: Runtime) -> None:
    SCORES[:] = [0.1, 0.9]
    CONTROL["hang_reviser"] = True
    run_id = await start(rt)
    task = asyncio.create_task(rt.worker(settings()).run(until_idle=True))
    try:
        await wait_for(rt, run_id, lambda r: bool(REVISER_SAW), "the reviser to start")
        began = time.monotonic()
        await rt.lifecycle.cancel(run_id, reason="enough", by="tester")
        run = await wait_for(rt, run_id, lambda r: r["status"] == "cancelled", "the run to be cancelled")
        assert time.monotonic() - began < 5
        await asyncio.wait_for(task, 10)
    finally:
        if not task.done():
            task.cancel()
    assert statuses(run)["revise-2"] == "cancelled" and statuses(run)["evaluate-2"] == "cancelled"
    assert EXECUTIONS == Counter({"producer": 1, "evaluator": 1, "reviser": 1})
    evts = await events_of(rt, run_id)
    assert [e.payload["attempt"] for e in evts if e.type == "score.updated"] == [1]
    assert not [e for e in evts if e.type == "step.started" and e.step_key == "evaluate-2"]


# --- the example ---------------------------------------------------------------------------------


async def test_draft_critique_runs_to_completion_offline(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATON_DEFAULT_ENGINE", raising=False)
    run_id = await start(rt, "draft-critique")
    await drain(rt)

    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "succeeded", run["status_reason"]
    assert run["status_reason"] == "passed with score 0.85 at attempt 2"
    assert run["progress"]["scores"] == [{"attempt": 1, "score": 0.7}, {"attempt": 2, "score": 0.85}]
    evts = await events_of(rt, run_id)
    assert [e.payload["attempt"] for e in evts if e.type == "score.updated"] == [1, 2]
    engines = {e.step_key: e.payload["engine"] for e in evts if e.type == "step.engine"}
    assert engines["produce-1"] == "offline" and engines["revise-2"] == "offline"
    artifacts = await artifacts_of(rt, run_id)
    assert {"attempt-1.md", "attempt-1.eval.json", "attempt-2.md", "attempt-2.eval.json"} <= set(artifacts)
    evaluation = artifacts["attempt-1.eval.json"][1]
    assert evaluation["feedback"].startswith("Offline rubric scoring (deterministic, no model)")
    assert "offline engine" in artifacts["attempt-2.md"][1]
    assert "## Final output (attempt 2, score 0.85)" in run["report"]
