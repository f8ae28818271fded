"""YAML flows run like Python ones on SQLite and PostgreSQL; bands pick the steps a run starts with;
`baton flows validate` and the quick launch `baton run FLOW "focus text"` as a user runs them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from baton.cli.run import focus_input, with_focus
from baton.domain.errors import UsageError
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import load_catalog
from baton.runtime import Runtime, open_runtime
from baton.store import artifacts as artifact_store
from baton.store.events import events_after

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "flows"
CATALOG = load_catalog([str(FIXTURES / "good")])


async def drain(rt: Runtime) -> None:
    await asyncio.wait_for(rt.worker(WorkerSettings(lease_s=5, poll_s=0.05)).run(until_idle=True), 60)


async def answer_pending(rt: Runtime, run_id: str, answer: Any) -> dict[str, Any]:
    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "waiting_for_input", run["status_reason"]
    [request] = [r for r in run["pending_inputs"] if r["status"] == "pending"]
    return await rt.lifecycle.answer(request["id"], answer, by="tester")


# --- running YAML flows ----------------------------------------------------------------------------


async def test_a_yaml_graph_flow_runs_to_completion(database_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello\n")
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as rt:
        created = await rt.lifecycle.create_run(
            RunRequest(flow="yaml-review", inputs={"path": str(folder), "focus": "docs"})
        )
        assert created["status"] == "needs_confirmation"
        await rt.lifecycle.confirm(created["id"], by="tester")
        await drain(rt)
        await answer_pending(rt, created["id"], {"ok": True, "note": "ship it"})
        await drain(rt)
        done = await rt.lifecycle.get_run(created["id"])
        events = await rt.db.read(events_after, created["id"], 0, 100_000)
        artifacts = await rt.db.read(artifact_store.list_artifacts, created["id"])

    assert done["status"] == "succeeded", done["status_reason"]
    steps = {s["key"]: s for s in done["steps"]}
    assert steps["facts"]["output"] == {"path": str(folder), "entries": ["notes.txt"], "focus": "docs"}
    assert steps["approve"]["output"] == {"ok": True, "note": "ship it"}
    assert isinstance(steps["summary"]["output"]["bullets"], list)
    assert "You are a careful reviewer" in steps["reviewer"]["output"]  # the declared persona was used
    assert done["report"].startswith("# YAML review: docs")
    assert {"summary.json", "report.md"} <= {a.name for a in artifacts}
    types = [e.type for e in events]
    assert types.index("input.requested") < types.index("input.answered") < types.index("run.succeeded")
    assert {e.payload["mode"] for e in events if e.type == "step.engine"} == {"read-only"}


async def test_a_yaml_loop_flow_runs_to_completion(database_url: str) -> None:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as rt:
        created = await rt.lifecycle.create_run(RunRequest(flow="yaml-tagline", confirm=True))
        await drain(rt)
        done = await rt.lifecycle.get_run(created["id"])
        events = await rt.db.read(events_after, created["id"], 0, 100_000)
    assert done["status"] == "succeeded", done["status_reason"]
    assert done["result"]["passed"] is True and done["result"]["attempt"] == 1
    assert [e.type for e in events].count("score.updated") == 1
    assert done["progress"]["stage"] == "done"


async def test_a_band_starts_the_run_with_its_steps_only(database_url: str, tmp_path: Path) -> None:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as rt:
        with pytest.raises(UsageError, match="has no band 'huge'"):
            await rt.lifecycle.create_run(RunRequest(flow="yaml-review", band="huge"))
        created = await rt.lifecycle.create_run(
            RunRequest(flow="yaml-review", inputs={"path": str(tmp_path)}, band="small", confirm=True)
        )
        assert created["band"] == "small"
        assert [(s["key"], s["needs"]) for s in created["steps"]] == [
            ("facts", []),
            ("approve", ["facts"]),
            ("summary", ["facts", "approve"]),
        ]
        await drain(rt)
        await answer_pending(rt, created["id"], {"ok": True})
        await drain(rt)
        done = await rt.lifecycle.get_run(created["id"])
        retried = await rt.lifecycle.retry(created["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    assert [s["key"] for s in retried["steps"]] == ["facts", "approve", "summary"]  # the band is kept


# --- the command line ------------------------------------------------------------------------------


def baton(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env.update({"BATON_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "250", "PYTHONUNBUFFERED": "1"})
    command = Path(sys.executable).with_name("baton")
    prefix = [str(command)] if command.exists() else [sys.executable, "-m", "baton"]
    return subprocess.run(
        [*prefix, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_flows_validate_lists_valid_flows_and_reports_every_problem(tmp_path: Path) -> None:
    good = baton("flows", "validate", ".", cwd=FIXTURES / "good", home=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "yaml-review" in good.stdout and "baton.yaml:11" in good.stdout
    assert "yaml-tagline" in good.stdout and "flows/tagline.yaml:2" in good.stdout
    assert "valid: 2 flows in ." in good.stdout

    bad = baton("flows", "validate", "flows/review.yaml", cwd=FIXTURES / "bad", home=tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert lines[-1] == "9 problems in flows/review.yaml"
    assert [line.split(": ", 1)[0] for line in lines[:-1]] == [
        f"flows/review.yaml:{n}" for n in (3, 4, 8, 10, 12, 14, 15, 18, 19)
    ]
    assert (
        "flows/review.yaml:18: step 'synth': needs 'reviewr', which is not a step of this flow "
        "(did you mean 'reviewer'?)"
    ) in lines

    agents = FIXTURES.parent / "agents"
    (tmp_path / "named.yaml").write_text("name: named\nsteps:\n  a: {agent: critc, prompt: Go.}\n")
    unknown = baton("flows", "validate", "named.yaml", "--agents", str(agents), cwd=tmp_path, home=tmp_path)
    assert unknown.returncode == 2
    assert "named.yaml:3: step 'a': agent 'critc' is not declared" in unknown.stderr

    python = baton("flows", "validate", "-", cwd=tmp_path, home=tmp_path)
    assert python.returncode == 2 and "cannot load flows from '-'" in python.stderr


@pytest.mark.slow
def test_quick_launch_puts_the_focus_text_in_the_focus_input(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    common = ("--database", url, "--flows", str(FIXTURES / "good"))
    launched = baton(
        *common,
        "run",
        "yaml-review",
        "the error handling",
        "--confirm",
        "--no-follow",
        cwd=tmp_path,
        home=tmp_path,
    )
    assert launched.returncode == 0, launched.stderr

    async def created() -> list[dict[str, Any]]:
        async with open_runtime(url, catalog=CATALOG, upgrade=False) as rt:
            from baton.store import runs as run_store

            rows = await rt.db.read(lambda conn: run_store.list_runs(conn, limit=10))
            return [dict(r._mapping) for r in rows]

    [run] = asyncio.run(created())
    assert run["inputs"] == {"focus": "the error handling", "path": "."}

    twice = baton(*common, "run", "yaml-review", "x", "--input", "focus=y", cwd=tmp_path, home=tmp_path)
    assert twice.returncode == 2 and "given twice" in twice.stderr
    # A flow without any text input refuses a focus text (see with_focus below).


def test_the_focus_input_is_focus_else_a_required_text_input_else_any_text_input() -> None:
    assert focus_input({"properties": {"focus": {"type": "string"}, "q": {"type": "string"}}}) == "focus"
    schema = {
        "properties": {"n": {"type": "integer"}, "topic": {"type": "string"}, "q": {"type": "string"}},
        "required": ["n", "topic", "q"],
    }
    assert focus_input(schema) == "topic"
    assert focus_input({"properties": {"n": {"type": "integer"}, "topic": {"type": "string"}}}) == "topic"
    assert focus_input({"properties": {"n": {"type": "integer"}}}) is None
    with pytest.raises(UsageError, match="takes no focus text"):
        with_focus({}, "a focus", {"properties": {"n": {"type": "integer"}}}, "numbers")
