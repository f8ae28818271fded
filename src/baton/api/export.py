"""A whole run as one document, JSON or Markdown, from the lifecycle's run snapshot and the store.

Used by `GET /v1/runs/{id}/export` and by anyone embedding Baton (`read_export` takes a runtime).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import Connection

from baton.api.convert import artifact_out, event_out, input_out, run_out
from baton.engine.lifecycle import Lifecycle
from baton.store import artifacts as artifact_store
from baton.store import events as event_store
from baton.store.database import Database


class _Opened(Protocol):
    db: Database
    lifecycle: Lifecycle


async def read_export(rt: _Opened, run_id: str) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """The run's snapshot (run, steps, input requests), all its events and its artifacts."""
    snapshot = await rt.lifecycle.get_run(run_id)
    events = await rt.db.read(all_events, run_id)
    artifacts = await rt.db.read(artifact_store.list_artifacts, run_id)
    return snapshot, events, artifacts


def all_events(conn: Connection, run_id: str) -> list[Any]:
    rows: list[Any] = []
    while True:
        page = event_store.events_after(conn, run_id, rows[-1].seq if rows else 0, 10_000)
        rows.extend(page)
        if len(page) < 10_000:
            return rows


def export_json(
    snapshot: Mapping[str, Any], events: Sequence[Any], artifacts: Sequence[Any]
) -> dict[str, Any]:
    """Run (with steps), every input request with its answer, events and artifacts (metadata)."""
    run = run_out(snapshot)
    return {
        "run": json.loads(run.model_dump_json()),
        "input_requests": [
            json.loads(input_out(r).model_dump_json(by_alias=True))
            for r in snapshot.get("pending_inputs", [])
        ],
        "events": [json.loads(event_out(e).model_dump_json()) for e in events],
        "artifacts": [json.loads(artifact_out(a).model_dump_json()) for a in artifacts],
    }


def export_markdown(snapshot: Mapping[str, Any], events: Sequence[Any]) -> str:
    """The report first, then inputs, the questions people answered, the steps and the timeline."""
    run = run_out(snapshot)
    lines = [
        f"# {run.title or run.flow}",
        "",
        f"- run: `{run.id}`",
        f"- flow: {run.flow}" + (f" (band {run.band})" if run.band else ""),
        f"- status: {run.status} ({run.status_reason})",
        f"- created: {run.created_at.isoformat()}",
        "",
    ]
    if run.report:
        lines += ["## Report", "", run.report, ""]
    if run.inputs:
        lines += ["## Inputs", "", "```json", json.dumps(run.inputs, indent=2, ensure_ascii=False), "```", ""]
    requests = [input_out(r) for r in snapshot.get("pending_inputs", [])]
    if requests:
        lines += ["## Human input", ""]
        for request in requests:
            lines += [f"### {request.step_key} — {request.status}", "", f"> {request.prompt}", ""]
            if request.status == "answered":
                who = f" by {request.answered_by}" if request.answered_by else ""
                answer = json.dumps(request.answer, indent=2, ensure_ascii=False, default=str)
                lines += [f"Answer{who}:", "", "```json", answer, "```", ""]
    lines += ["## Steps", "", "| step | kind | status | attempt | error |", "| --- | --- | --- | --- | --- |"]
    for step in run.steps:
        error = (step.error or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {step.key} | {step.kind} | {step.status} | {step.attempt} | {error} |")
    lines += ["", "## Timeline", ""]
    for event in events:
        if event.type != "step.delta":
            where = f" {event.step_key}" if event.step_key else ""
            lines.append(f"- {event.seq}. `{event.type}`{where}")
    return "\n".join(lines) + "\n"
