"""Graph flows run by a real worker on SQLite and PostgreSQL: parallelism, retries, timeouts, expand,
reports, input steps (across a restart), fork, and large outputs passed by reference."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from baton.domain.errors import Conflict, InvalidInputs, StoreUnavailable
from baton.domain.models import RunView, StepView
from baton.domain.status import StepKind
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Expansion, Finish, Flow, StepSpec
from baton.runtime import Runtime, open_runtime
from baton.store import artifacts as artifact_store
from baton.store.events import events_after
from baton.store.schema import events

#: How many times each step function ran, by "flow.step".
EXECUTIONS: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh_counts() -> Iterator[None]:
    EXECUTIONS.clear()
    yield
    EXECUTIONS.clear()


# --- flows --------------------------------------------------------------------------------------

fan = Flow("fan")


async def _nap(ctx: Any) -> str:
    EXECUTIONS[f"fan.{ctx.step_key}"] += 1
    # 1 s each: run one after another they take 3 s, far from the 2.4 s allowed in parallel, so a
    # loaded CI machine's overhead cannot pass for serial execution (0.5 s steps once did).
    await asyncio.sleep(1.0)
    return f"{ctx.step_key} done"


for _key in ("p1", "p2", "p3"):
    fan.step(_key)(_nap)


@fan.step(needs=["p1", "p2", "p3"])
async def join(ctx: Any) -> dict[str, Any]:
    EXECUTIONS["fan.join"] += 1
    return dict(ctx.upstream)


retrying = Flow("retrying")


@retrying.step(max_attempts=3, backoff_s=0.05)
async def wobbly(ctx: Any) -> str:
    EXECUTIONS["retrying.wobbly"] += 1
    if EXECUTIONS["retrying.wobbly"] <= 2:
        raise RuntimeError(f"transient failure {EXECUTIONS['retrying.wobbly']}")
    return f"fine on attempt {ctx.attempt}"


store_hiccup = Flow("store-hiccup")


@store_hiccup.step(max_attempts=3, backoff_s=0.01)
async def hiccup(ctx: Any) -> str:
    EXECUTIONS["store-hiccup.hiccup"] += 1
    if ctx.attempt == 1:
        raise StoreUnavailable("cannot reach the database: connection refused")
    return "fine"


misused = Flow("misused")


@misused.step(max_attempts=3, backoff_s=0.01)
async def misuse(ctx: Any) -> str:
    EXECUTIONS["misused.misuse"] += 1
    raise InvalidInputs("the step was given inputs it cannot use")


step_timeout = Flow("step-timeout")


@step_timeout.step(timeout_s=0.3, max_attempts=1)
async def stuck(ctx: Any) -> str:
    EXECUTIONS["step-timeout.stuck"] += 1
    await asyncio.sleep(10)
    return "never"


run_timeout = Flow("run-timeout")


@run_timeout.step()
async def endless(ctx: Any) -> str:
    EXECUTIONS["run-timeout.endless"] += 1
    await asyncio.sleep(10)
    return "never"


def _grow(run: RunView, finished: StepView) -> Expansion | None:
    if finished.key == "seed":
        return Expansion(
            new_steps=(StepSpec(key="grown", kind=StepKind.CODE, needs=("seed",), handler="grown"),)
        )
    if finished.key == "grown":
        return Expansion(finish=Finish(True, "finished by the expand hook", {"grown": finished.output}))
    return None


growing = Flow("growing", expand_hook=_grow)


@growing.step()
async def seed(ctx: Any) -> int:
    EXECUTIONS["growing.seed"] += 1
    return 20


@growing.function("grown")
async def grown(ctx: Any) -> int:
    EXECUTIONS["growing.grown"] += 1
    return ctx.upstream["seed"] + 1


def _stop_early(run: RunView, finished: StepView) -> Expansion | None:
    if finished.key == "score":
        return Expansion(finish=Finish(False, f"score below threshold ({finished.output} < 0.8)"))
    return None


stopping = Flow("stopping", expand_hook=_stop_early)


@stopping.step()
async def score(ctx: Any) -> float:
    EXECUTIONS["stopping.score"] += 1
    return 0.5


@stopping.step(needs=["score"])
async def publish(ctx: Any) -> str:
    EXECUTIONS["stopping.publish"] += 1
    return "published"


reported = Flow(
    "reported",
    title="Reported flow",
    report_template=(
        "# Report of {{ run.flow }} ({{ run.status }})\n\n"
        "{% for step in steps %}- {{ step.key }}: {{ step.output_text }}\n{% endfor %}"
        "Topic was {{ run.inputs.topic }}.\n"
    ),
)


@reported.step()
async def draft(ctx: Any) -> str:
    return f"a draft about {ctx.inputs['topic']}"


@reported.step(needs=["draft"])
async def polish(ctx: Any) -> str:
    return ctx.upstream["draft"].upper()


APPROVAL_SCHEMA = {
    "type": "object",
    "properties": {"ship": {"type": "boolean"}, "note": {"type": "string"}},
    "required": ["ship"],
    "additionalProperties": False,
}
asking = Flow("asking")


@asking.step()
async def prepare(ctx: Any) -> str:
    EXECUTIONS["asking.prepare"] += 1
    return "release notes"


asking.input("approve", prompt="Ship the release?", schema=APPROVAL_SCHEMA, needs=["prepare"])


@asking.step(needs=["prepare", "approve"])
async def ship(ctx: Any) -> dict[str, Any]:
    EXECUTIONS["asking.ship"] += 1
    return {"shipped": ctx.upstream["approve"]["ship"], "what": ctx.upstream["prepare"]}


forkable = Flow("forkable", input_schema={"type": "object", "properties": {"tag": {"type": "string"}}})


def _link(name: str, needs: list[str]) -> None:
    async def fn(ctx: Any) -> str:
        EXECUTIONS[f"forkable.{name}"] += 1
        before = ctx.upstream[needs[0]] + ">" if needs else ""
        return f"{before}{name}:{ctx.inputs['tag']}"

    forkable.step(name, needs=needs)(fn)


_link("s1", [])
_link("s2", ["s1"])
_link("s3", ["s2"])
_link("s4", ["s3"])

BIG_CHARS = 20 * 1024 * 1024
big = Flow("big")


@big.step()
async def produce(ctx: Any) -> str:
    return "x" * (BIG_CHARS - 1) + "y"


@big.step(needs=["produce"])
async def consume(ctx: Any) -> dict[str, Any]:
    text = ctx.upstream["produce"]
    assert isinstance(text, str) and len(text) == BIG_CHARS and text.endswith("y")
    ctx.artifact("big.txt", text)
    return {"length": len(text)}


CATALOG = Catalog(
    [
        fan,
        retrying,
        store_hiccup,
        misused,
        step_timeout,
        run_timeout,
        growing,
        stopping,
        reported,
        asking,
        forkable,
        big,
    ]
)


# --- helpers ------------------------------------------------------------------------------------


def settings(**overrides: Any) -> WorkerSettings:
    return WorkerSettings(**{"lease_s": 3.0, "poll_s": 0.05, "reaper_s": 0.5, **overrides})


async def drain(rt: Runtime, **overrides: Any) -> None:
    await asyncio.wait_for(rt.worker(settings(**overrides)).run(until_idle=True), 60)


async def start(rt: Runtime, flow: str, **fields: Any) -> str:
    return (await rt.lifecycle.create_run(RunRequest(flow=flow, created_by="tester", **fields)))["id"]


async def run_events(rt: Runtime, run_id: str) -> list[Any]:
    return await rt.db.read(events_after, run_id, 0, 100_000)


def steps_by_key(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in run["steps"]}


def step_status(run: dict[str, Any]) -> dict[str, str]:
    return {s["key"]: s["status"] for s in run["steps"]}


async def until_status(rt: Runtime, run_id: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = await rt.lifecycle.get_run(run_id)
        if run["status"] == status:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is {run['status']} ({run['status_reason']}), not {status}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def rt(database_url: str) -> Any:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as runtime:
        yield runtime


# --- running a graph ----------------------------------------------------------------------------


async def test_ready_steps_run_in_parallel_and_outputs_flow_downstream(rt: Runtime) -> None:
    run_id = await start(rt, "fan")
    began = time.monotonic()
    await drain(rt, concurrency=8)
    elapsed = time.monotonic() - began
    assert elapsed < 2.4, f"three 1 s steps took {elapsed:.2f} s: they did not run in parallel"

    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "succeeded"
    assert steps_by_key(run)["join"]["output"] == {"p1": "p1 done", "p2": "p2 done", "p3": "p3 done"}
    assert EXECUTIONS == Counter({"fan.p1": 1, "fan.p2": 1, "fan.p3": 1, "fan.join": 1})
    types = [e.type for e in await run_events(rt, run_id)]
    # The three branches are queued together, as one wave.
    assert types[:5] == ["run.created", "run.started", "step.queued", "step.queued", "step.queued"]


async def test_a_failing_step_is_retried_with_backoff_until_it_succeeds(rt: Runtime) -> None:
    run_id = await start(rt, "retrying")
    await drain(rt)
    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "succeeded"
    step = steps_by_key(run)["wobbly"]
    assert step["attempt"] == 3
    assert step["output"] == "fine on attempt 3"
    assert EXECUTIONS["retrying.wobbly"] == 3

    evts = await run_events(rt, run_id)
    retrying_events = [e for e in evts if e.type == "step.retrying"]
    assert [e.attempt for e in retrying_events] == [1, 2]
    assert [e.payload["delay_s"] for e in retrying_events] == pytest.approx([0.05, 0.1])
    assert "transient failure 1" in retrying_events[0].payload["error"]
    assert [e.attempt for e in evts if e.type == "step.started"] == [1, 2, 3]
    assert [e.attempt for e in evts if e.type == "step.succeeded"] == [3]
    # The backoff is respected: attempt n+1 starts no earlier than the delay after attempt n failed.
    started = [e.created_at for e in evts if e.type == "step.started"]
    failed_at = [e.created_at for e in retrying_events]
    assert started[1] - failed_at[0] >= 0.05 - 0.01
    assert started[2] - failed_at[1] >= 0.1 - 0.01


async def test_a_store_failure_under_a_step_is_retried_and_a_usage_error_is_not(rt: Runtime) -> None:
    hiccup_id = await start(rt, "store-hiccup")
    misused_id = await start(rt, "misused")
    await drain(rt)
    assert (await rt.lifecycle.get_run(hiccup_id))["status"] == "succeeded"
    assert EXECUTIONS["store-hiccup.hiccup"] == 2
    misused_run = await rt.lifecycle.get_run(misused_id)
    assert misused_run["status"] == "failed"
    assert EXECUTIONS["misused.misuse"] == 1, "a usage error cannot succeed on a later attempt"


async def test_a_step_that_exceeds_its_timeout_fails(rt: Runtime) -> None:
    run_id = await start(rt, "step-timeout")
    began = time.monotonic()
    await drain(rt)
    assert time.monotonic() - began < 5
    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "failed"
    assert "timed out" in steps_by_key(run)["stuck"]["error"]
    assert "step stuck failed" in run["status_reason"] and "timed out" in run["status_reason"]
    assert EXECUTIONS["step-timeout.stuck"] == 1


async def test_a_run_that_exceeds_its_timeout_fails(rt: Runtime) -> None:
    run_id = await start(rt, "run-timeout", timeout_s=0.5)
    worker = rt.worker(settings(lease_s=0.9, reaper_s=0.2))
    task = asyncio.create_task(worker.run(until_idle=True))
    try:
        run = await until_status(rt, run_id, "failed", timeout=5)
        await asyncio.wait_for(task, 10)
    finally:
        if not task.done():
            task.cancel()
    assert run["status_reason"].startswith("run timed out")
    assert step_status(run) == {"endless": "cancelled"}
    assert run["finished_at"] - run["started_at"] < 3
    types = [e.type for e in await run_events(rt, run_id)]
    assert types[-1] == "run.failed"
    assert EXECUTIONS["run-timeout.endless"] == 1


# --- expand and finish --------------------------------------------------------------------------


async def test_the_expand_hook_adds_steps_and_can_finish_the_run(rt: Runtime) -> None:
    run_id = await start(rt, "growing")
    await drain(rt)
    run = await rt.lifecycle.get_run(run_id)
    assert [s["key"] for s in run["steps"]] == ["seed", "grown"]
    assert step_status(run) == {"seed": "succeeded", "grown": "succeeded"}
    assert steps_by_key(run)["grown"]["output"] == 21
    assert run["status"] == "succeeded"
    assert run["status_reason"] == "finished by the expand hook"
    assert run["result"] == {"grown": 21}
    assert EXECUTIONS == Counter({"growing.seed": 1, "growing.grown": 1})


async def test_a_finish_from_the_expand_hook_ends_the_run_with_steps_left(rt: Runtime) -> None:
    run_id = await start(rt, "stopping")
    await drain(rt)
    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "failed"
    assert run["status_reason"] == "score below threshold (0.5 < 0.8)"
    assert step_status(run) == {"score": "succeeded", "publish": "cancelled"}
    assert EXECUTIONS == Counter({"stopping.score": 1})


# --- report ---------------------------------------------------------------------------------


async def test_the_report_is_rendered_stored_on_the_run_and_as_an_artifact(rt: Runtime) -> None:
    run_id = await start(rt, "reported", inputs={"topic": "owls"})
    await drain(rt)
    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "succeeded"
    assert run["report"].rstrip("\n") == (
        "# Report of reported (succeeded)\n\n"
        "- draft: a draft about owls\n- polish: A DRAFT ABOUT OWLS\nTopic was owls."
    )
    listed = await rt.db.read(artifact_store.list_artifacts, run_id)
    reports = [a for a in listed if a.name == "report.md"]
    assert len(reports) == 1 and reports[0].media_type == "text/markdown"
    content = await rt.db.read(artifact_store.get_artifact_content, reports[0].id)
    assert content is not None and content.decode() == run["report"]


# --- input steps ----------------------------------------------------------------------------


async def test_an_input_step_waits_for_a_valid_answer_then_the_run_completes(rt: Runtime) -> None:
    run_id = await start(rt, "asking")
    await drain(rt)
    waiting = await rt.lifecycle.get_run(run_id)
    assert waiting["status"] == "waiting_for_input"
    assert waiting["status_reason"] == "waiting for input: Ship the release?"
    assert step_status(waiting) == {"prepare": "succeeded", "approve": "waiting", "ship": "pending"}
    [pending] = waiting["pending_inputs"]
    assert pending["prompt"] == "Ship the release?" and pending["step_key"] == "approve"
    requested = [e for e in await run_events(rt, run_id) if e.type == "input.requested"]
    assert len(requested) == 1 and requested[0].payload["request_id"] == pending["id"]
    events_before = len(await run_events(rt, run_id))

    for wrong in ({"ship": "yes"}, {"note": "no ship field"}, ["ship"], {"ship": True, "extra": 1}):
        with pytest.raises(InvalidInputs):
            await rt.lifecycle.answer(pending["id"], wrong, by="alice")
    assert await rt.lifecycle.get_run(run_id) == waiting
    assert len(await run_events(rt, run_id)) == events_before

    answered = await rt.lifecycle.answer(pending["id"], {"ship": True}, by="alice")
    assert answered["status"] == "running"
    assert steps_by_key(answered)["approve"]["status"] == "succeeded"
    assert steps_by_key(answered)["approve"]["output"] == {"ship": True}
    with pytest.raises(Conflict, match="answered"):
        await rt.lifecycle.answer(pending["id"], {"ship": False}, by="bob")

    await drain(rt)
    done = await rt.lifecycle.get_run(run_id)
    assert done["status"] == "succeeded"
    assert steps_by_key(done)["ship"]["output"] == {"shipped": True, "what": "release notes"}
    assert EXECUTIONS == Counter({"asking.prepare": 1, "asking.ship": 1})
    with pytest.raises(Conflict):
        await rt.lifecycle.answer(pending["id"], {"ship": True})
    types = [e.type for e in await run_events(rt, run_id)]
    assert types.index("run.waiting") < types.index("input.answered") < types.index("run.resumed")


async def test_an_answer_after_a_restart_continues_without_rerunning_anything(database_url: str) -> None:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as before:
        run_id = await start(before, "asking")
        await drain(before)
        waiting = await before.lifecycle.get_run(run_id)
        assert waiting["status"] == "waiting_for_input"
        request_id = waiting["pending_inputs"][0]["id"]

    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as after:
        await after.lifecycle.answer(request_id, {"ship": False, "note": "not yet"}, by="alice")
        await drain(after)
        done = await after.lifecycle.get_run(run_id)
    assert done["status"] == "succeeded"
    assert steps_by_key(done)["ship"]["output"] == {"shipped": False, "what": "release notes"}
    assert EXECUTIONS == Counter({"asking.prepare": 1, "asking.ship": 1})


# --- fork -----------------------------------------------------------------------------------


async def test_fork_from_a_middle_step_reruns_it_and_its_descendants_only(rt: Runtime) -> None:
    source_id = await start(rt, "forkable", inputs={"tag": "old"})
    await drain(rt)
    source = await rt.lifecycle.get_run(source_id)
    assert source["result"] == {"s4": "s1:old>s2:old>s3:old>s4:old"}

    fork = await rt.lifecycle.fork(source_id, "s3", inputs={"tag": "new"}, by="alice")
    assert fork["id"] != source_id
    assert fork["forked_from"] == source_id and fork["fork_step"] == "s3"
    assert fork["inputs"] == {"tag": "new"}
    copied = steps_by_key(fork)
    assert [copied[k]["status"] for k in ("s1", "s2")] == ["succeeded", "succeeded"]
    assert copied["s2"]["output"] == steps_by_key(source)["s2"]["output"] == "s1:old>s2:old"
    await drain(rt)

    done = await rt.lifecycle.get_run(fork["id"])
    assert done["status"] == "succeeded"
    assert done["result"] == {"s4": "s1:old>s2:old>s3:new>s4:new"}
    assert EXECUTIONS == Counter({"forkable.s1": 1, "forkable.s2": 1, "forkable.s3": 2, "forkable.s4": 2})
    started = [e.step_key for e in await run_events(rt, fork["id"]) if e.type == "step.started"]
    assert started == ["s3", "s4"]
    assert (await rt.lifecycle.get_run(source_id))["result"] == source["result"]


# --- large outputs ------------------------------------------------------------------------------


async def test_a_20_mb_output_is_passed_by_reference_and_events_stay_small(rt: Runtime) -> None:
    run_id = await start(rt, "big")
    await drain(rt)
    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "succeeded", run["status_reason"]
    produced = steps_by_key(run)["produce"]
    assert produced["output_ref"] is not None
    assert produced["output"] is None
    assert steps_by_key(run)["consume"]["output"] == {"length": BIG_CHARS}

    stored = await rt.db.read(artifact_store.get_artifact, produced["output_ref"])
    assert stored is not None and stored.size >= BIG_CHARS
    listed = await rt.db.read(artifact_store.list_artifacts, run_id)
    [copy] = [a for a in listed if a.name == "big.txt"]
    assert copy.size == BIG_CHARS and copy.step_key == "consume"

    def payload_sizes(conn: Any) -> list[tuple[str, int]]:
        rows = conn.execute(select(events.c.type, events.c.payload))
        return [(row.type, len(json.dumps(row.payload))) for row in rows]

    sizes = await rt.db.read(payload_sizes)
    assert sizes, "the run wrote no events"
    largest = max(sizes, key=lambda pair: pair[1])
    assert largest[1] <= 64 * 1024, f"event {largest[0]} has a {largest[1]}-byte payload"
    assert len(json.dumps(run["result"])) < 1024
    assert len(run["report"] or "") < 64 * 1024
