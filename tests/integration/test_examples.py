"""Every example flow of baton.examples runs to completion offline on SQLite and PostgreSQL.

Runs are confirmed and their questions answered as a person would; each ends with a rendered
Markdown report and exports as JSON and Markdown. `handoff` is followed closely: confirmation,
`input.requested` then `input.answered`, a read-only action chosen by the decision, and an answer
given after a restart that continues without re-running anything.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from baton.agents.offline import sample
from baton.api.export import export_json, export_markdown, read_export
from baton.api.routes.catalog import flow_out
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.examples.handoff import act_prompt
from baton.flows.catalog import Catalog, load_catalog
from baton.runtime import Runtime, open_runtime
from baton.store.events import events_after

CATALOG: Catalog = load_catalog(["baton.examples"])
EXAMPLES = CATALOG.names()
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A small folder for the examples that look at one (repo-review, handoff)."""
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text("# Project\n\nTODO: write the docs\n")
    (root / "src" / "app.py").write_text("def main():\n    return 42  # TODO: configurable\n")
    return root


def inputs_for(flow: str, folder: Path) -> dict[str, Any]:
    return {"path": str(folder)} if "path" in CATALOG.get(flow).input_schema.get("properties", {}) else {}


def answer_for(request: dict[str, Any]) -> Any:
    """What a person answers: handoff's decision is an approval; anything else a valid sample."""
    if request["step_key"] == "decision":
        return {"approve": True, "note": "go ahead"}
    return sample(request["schema"] or {"type": "object"}, "tester")


async def drain(rt: Runtime) -> None:
    worker = rt.worker(WorkerSettings(lease_s=5, poll_s=0.05))
    await asyncio.wait_for(worker.run(until_idle=True), 60)


async def event_types(rt: Runtime, run_id: str) -> list[str]:
    return [e.type for e in await rt.db.read(events_after, run_id, 0, 100_000)]


async def run_to_the_end(rt: Runtime, flow: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Create, confirm when asked, execute, answer every question; the finished run."""
    run = await rt.lifecycle.create_run(
        RunRequest(flow=flow, inputs=inputs, created_by="tester", source={"via": "test"})
    )
    if run["status"] == "needs_confirmation":
        run = await rt.lifecycle.confirm(run["id"], by="tester")
    for _ in range(10):
        await drain(rt)
        run = await rt.lifecycle.get_run(run["id"])
        if run["status"] in TERMINAL:
            return run
        pending = [r for r in run["pending_inputs"] if r["status"] == "pending"]
        assert run["status"] == "waiting_for_input" and pending, run["status_reason"]
        for request in pending:
            await rt.lifecycle.answer(request["id"], answer_for(request), by="tester")
    raise AssertionError(
        f"run {run['id']} of {flow} did not finish: {run['status']} ({run['status_reason']})"
    )


# --- every example ---------------------------------------------------------------------------------


def test_the_examples_are_the_four_kinds_of_the_issue() -> None:
    assert {"repo-review", "draft-critique", "handoff"} <= set(EXAMPLES)


@pytest.mark.parametrize("flow", EXAMPLES)
async def test_an_example_runs_to_completion_offline(database_url: str, folder: Path, flow: str) -> None:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as rt:
        done = await run_to_the_end(rt, flow, inputs_for(flow, folder))
        assert done["status"] == "succeeded", done["status_reason"]
        report = done["report"]
        assert report and report.lstrip().startswith("#") and len(report.strip().splitlines()) > 3
        types = await event_types(rt, done["id"])
        assert types[0] == "run.created" and types[-1] == "run.succeeded"
        if CATALOG.get(flow).require_confirmation:
            assert "run.confirmed" in types

        snapshot, events, artifacts = await read_export(rt, done["id"])
    document = export_json(snapshot, events, artifacts)
    assert document["run"]["id"] == done["id"] and document["run"]["status"] == "succeeded"
    assert document["run"]["report"] == report
    assert [e["type"] for e in document["events"]] == types
    assert "report.md" in {a["name"] for a in document["artifacts"]}
    markdown = export_markdown(snapshot, events)
    assert markdown.startswith(f"# {done['title']}") and "## Report" in markdown
    assert report.strip().splitlines()[0] in markdown and "`run.succeeded`" in markdown


def test_the_catalog_shows_each_example_with_its_bands_and_defaults() -> None:
    for flow in CATALOG:
        shown = flow_out(flow)
        assert shown.title and shown.description and shown.category
        assert shown.bands == (list(flow.bands) or ["small", "medium", "large"])
        assert shown.band_details == {name: dict(band or {}) for name, band in flow.bands.items()}
    handoff = flow_out(CATALOG.get("handoff"))
    assert handoff.require_confirmation and handoff.category == "Planning"
    assert handoff.bands == ["small", "medium", "large"]
    assert handoff.band_details["small"] == {"steps": ["context", "plan", "decision"]}
    assert handoff.input_schema["properties"]["focus"]["default"] == "Tidy up the release notes"


# --- handoff -----------------------------------------------------------------------------------------


async def test_handoff_confirms_asks_then_acts_on_the_decision_read_only(
    database_url: str, folder: Path
) -> None:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as rt:
        created = await rt.lifecycle.create_run(
            RunRequest(flow="handoff", inputs={"path": str(folder), "focus": "Fix the TODOs"}, band="medium")
        )
        assert created["status"] == "needs_confirmation"
        assert [s["key"] for s in created["steps"]] == ["context", "plan", "risks", "decision"]
        assert created["policy"]["effective"]["read_only"] is True
        await rt.lifecycle.confirm(created["id"], by="lead")
        await drain(rt)
        waiting = await rt.lifecycle.get_run(created["id"])
        assert waiting["status"] == "waiting_for_input"
        assert waiting["status_reason"].startswith("waiting for input: Approve this plan?")
        [request] = [r for r in waiting["pending_inputs"] if r["status"] == "pending"]
        assert request["step_key"] == "decision"

        await rt.lifecycle.answer(request["id"], {"approve": False, "note": "too risky"}, by="lead")
        await drain(rt)
        done = await rt.lifecycle.get_run(created["id"])
        events = await rt.db.read(events_after, created["id"], 0, 100_000)

    assert done["status"] == "succeeded", done["status_reason"]
    steps = {s["key"]: s for s in done["steps"]}
    assert list(steps) == ["context", "plan", "risks", "decision", "act"]
    assert steps["act"]["spec"]["prompt"] == act_prompt({"approve": False, "note": "too risky"})
    assert "was rejected" in steps["act"]["output"] and "too risky" in steps["act"]["output"]
    types = [e.type for e in events]
    assert types.index("run.confirmed") < types.index("input.requested") < types.index("input.answered")
    act_started = next(i for i, e in enumerate(events) if e.type == "step.started" and e.step_key == "act")
    assert types.index("input.answered") < act_started
    modes = {e.step_key: e.payload["mode"] for e in events if e.type == "step.engine"}
    assert modes == {"plan": "read-only", "risks": "read-only", "act": "read-only"}
    assert (
        "**Rejected**: too risky" in done["report"] and "## Action (step `act`, read-only)" in done["report"]
    )


async def test_a_handoff_answered_after_a_restart_continues_without_rerunning_anything(
    database_url: str, folder: Path
) -> None:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as before:
        created = await before.lifecycle.create_run(
            RunRequest(flow="handoff", inputs={"path": str(folder)}, confirm=True)
        )
        await drain(before)
        waiting = await before.lifecycle.get_run(created["id"])
        assert waiting["status"] == "waiting_for_input"
        [request] = [r for r in waiting["pending_inputs"] if r["status"] == "pending"]
        finished_before = {s["key"]: s["output"] for s in waiting["steps"] if s["status"] == "succeeded"}
        assert set(finished_before) == {"context", "plan", "risks", "alternatives"}

    # A new process: a new runtime and worker over the same database.
    async with open_runtime(database_url, catalog=load_catalog(["baton.examples"]), upgrade=False) as after:
        await after.lifecycle.answer(request["id"], {"approve": True}, by="lead")
        await drain(after)
        done = await after.lifecycle.get_run(created["id"])
        events = await after.db.read(events_after, created["id"], 0, 100_000)

    assert done["status"] == "succeeded", done["status_reason"]
    steps = {s["key"]: s for s in done["steps"]}
    assert {key: steps[key]["output"] for key in finished_before} == finished_before
    started = Counter(e.step_key for e in events if e.type == "step.started")
    assert started == Counter({"context": 1, "plan": 1, "risks": 1, "alternatives": 1, "act": 1})
    assert all(s["attempt"] == 1 for s in done["steps"] if s["kind"] != "input")
    assert "was approved" in steps["act"]["output"]
    types = [e.type for e in events]
    assert types.count("input.requested") == 1 and types.count("input.answered") == 1
    assert types.index("input.requested") < types.index("input.answered") < types.index("run.succeeded")
