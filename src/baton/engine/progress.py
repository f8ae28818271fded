"""How a run moves on inside one transaction: expand, queue ready steps, judge, finish, promote.

Every function here runs inside a store transaction that already holds the run's row lock and
returns the events to append, so the graph, the run status and the events commit together.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row

from baton.domain.events import EventDraft
from baton.domain.models import RunView, StepView
from baton.domain.status import RunStatus, StepKind, StepStatus
from baton.engine import scheduler
from baton.flows.report import output_text, render_report
from baton.flows.spec import Finish, Flow, StepSpec, validate_new_steps
from baton.store import artifacts as artifact_store
from baton.store import inputs as input_store
from baton.store import runs as run_store
from baton.store import steps as step_store
from baton.store.clock import db_now

logger = logging.getLogger(__name__)

R = RunStatus
S = StepStatus


def step_view(row: Row[Any]) -> StepView:
    mapping = row._mapping
    return StepView(
        key=row.key,
        kind=StepKind(row.kind),
        status=StepStatus(row.status),
        needs=tuple(row.needs or ()),
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        position=row.position,
        output=mapping.get("output"),
        error=row.error,
        spec=mapping.get("spec") or {},
    )


def run_view(
    run: Row[Any], step_rows: Sequence[Row[Any]], views: Sequence[StepView] | None = None
) -> RunView:
    """The run as `expand` sees it; `views` are the rows' step views when the caller has them."""
    return RunView(
        id=run.id,
        flow=run.flow,
        status=RunStatus(run.status),
        inputs=run.inputs or {},
        steps=tuple(views) if views is not None else tuple(step_view(r) for r in step_rows),
        band=run.band,
        title=run.title,
    )


def step_rows_for(specs: Sequence[StepSpec], first_position: int) -> list[dict[str, Any]]:
    return [
        {
            "key": spec.key,
            "kind": spec.kind.value,
            "status": S.PENDING.value,
            "needs": list(spec.needs),
            "position": first_position + i,
            "spec": spec.to_json(),
            "max_attempts": spec.max_attempts,
            "engine": spec.engine,
            "timeout_s": spec.timeout_s,
        }
        for i, spec in enumerate(specs)
    ]


Flows = Mapping[str, Flow]
#: steps made ready: the work steps' keys (now queued), the input steps' rows (now waiting)
Released = tuple[list[str], list[Row[Any]]]


def advance_run(
    conn: Connection,
    run: Row[Any],
    flows: Flows,
    finished: Row[Any] | None = None,
    released: Released | None = None,
) -> list[EventDraft]:
    """Move a running (or waiting) run on after a change; the caller holds the run lock.

    `released`: the steps the caller already made ready (`step_store.satisfy_and_release`), when
    nothing else in the transaction can have; otherwise they are looked for.
    """
    if run.cancel_requested_at is not None:
        return settle_cancel(conn, run, flows)
    flow = flows.get(run.flow)
    drafts: list[EventDraft] = []
    # Only a flow with an expand hook looks at the whole run; the others never load it.
    if finished is not None and flow is not None and flow.expand_hook is not None:
        rows = step_store.load_steps(conn, run.id)
        expansion = flow.expand(run_view(run, rows, [step_view(r) for r in rows]), step_view(finished))
        drafts += [EventDraft(kind, dict(payload)) for kind, payload in expansion.events]  # type: ignore[arg-type]
        if expansion.progress:
            run_store.update_run(conn, run.id, progress={**(run.progress or {}), **expansion.progress})
        if expansion.skip:
            skipped = step_store.set_steps_status(
                conn, run.id, expansion.skip, [S.FAILED, S.PENDING, S.QUEUED], S.SKIPPED
            )
            drafts += [EventDraft("step.skipped", {"by": "flow"}, step_key=key) for key in skipped]
        if expansion.new_steps:
            validate_new_steps([_spec_of(r) for r in rows], expansion.new_steps, flow=flow.name)
            step_store.insert_steps(conn, run.id, step_rows_for(expansion.new_steps, len(rows)))
        if expansion.finish is not None:
            return drafts + finish_run(conn, run, flows, expansion.finish)
        if released is not None:
            # New steps may be ready too: look for them, after those already released.
            more_queued, more_inputs = step_store.release_ready(conn, run.id, db_now(conn))
            released = (released[0] + more_queued, released[1] + more_inputs)
    asked = queue_and_ask(conn, run, released)
    drafts += asked
    if run.status == R.RUNNING.value:
        if any(d.type == "step.queued" for d in asked):
            return drafts  # work was just queued: the run goes on, no need to judge it
        failed, active = step_store.failed_or_active(conn, run.id)
        if active and not failed:
            return drafts  # other steps still run (run_outcome would say so after reading them all)
    unfinished, blocked = step_store.unfinished_states(conn, run.id)
    outcome = scheduler.run_outcome([step_view(r) for r in unfinished], blocked)
    current = RunStatus(run.status)
    if outcome.status is R.RUNNING and current is R.WAITING_FOR_INPUT:
        run_store.transition_run(conn, run.id, [R.WAITING_FOR_INPUT], R.RUNNING, "running")
        drafts.append(EventDraft("run.resumed", {"reason": "input answered"}))
    elif outcome.status is R.WAITING_FOR_INPUT and current is not R.WAITING_FOR_INPUT:
        run_store.transition_run(conn, run.id, [R.RUNNING], R.WAITING_FOR_INPUT, outcome.reason)
        drafts.append(EventDraft("run.waiting", {"reason": outcome.reason}))
    elif outcome.status is R.WAITING_FOR_INPUT:
        run_store.update_run(conn, run.id, status_reason=outcome.reason)
    elif outcome.status in (R.SUCCEEDED, R.FAILED, R.CANCELLED):
        succeeded = outcome.status is R.SUCCEEDED
        drafts += finish_run(conn, run, flows, Finish(succeeded, outcome.reason), sinks_as_result=succeeded)
    return drafts


def queue_and_ask(conn: Connection, run: Row[Any], released: Released | None = None) -> list[EventDraft]:
    """Queue the work steps whose needs are all met; open a request for each such input step.

    `released`: those steps, already released by the caller (queued keys, input steps).
    """
    now = db_now(conn)
    queued, inputs = released if released is not None else step_store.release_ready(conn, run.id, now)
    drafts = [EventDraft("step.queued", step_key=key) for key in queued]
    for ready in inputs:
        key, spec = ready.key, dict(ready.spec or {})
        timeout = spec.get("timeout_s")
        request_id = input_store.open_request(
            conn,
            run.id,
            key,
            str(spec.get("prompt") or key),
            dict(spec.get("schema") or {}),
            run.project_id,
            expires_at=now + float(timeout) if timeout else None,
        )
        drafts.append(
            EventDraft(
                "input.requested",
                {"request_id": request_id, "prompt": spec.get("prompt"), "schema": spec.get("schema")},
                step_key=key,
            )
        )
    return drafts


def finish_run(
    conn: Connection,
    run: Row[Any],
    flows: Flows,
    finish: Finish,
    *,
    status: RunStatus | None = None,
    sinks_as_result: bool = False,
) -> list[EventDraft]:
    """End a run: stop what is left, render the report, record the result, free the slot.

    `sinks_as_result`: the result is the outputs of the steps nothing depends on (a graph run's).
    """
    target = status or (R.SUCCEEDED if finish.succeeded else R.FAILED)
    leftovers = step_store.set_steps_status(
        conn,
        run.id,
        None,
        [S.PENDING, S.QUEUED, S.RUNNING, S.WAITING],
        S.CANCELLED,
        lease_expires_at=None,
    )
    input_store.close_requests_of_run(conn, run.id)
    now = db_now(conn)
    rows = step_store.load_results(conn, run.id)
    if sinks_as_result:
        finish = Finish(finish.succeeded, finish.reason, _final_result(rows))
    report = render_report(
        flows[run.flow].report_template if run.flow in flows else "",
        run={**run._mapping, "status": target.value, "status_reason": finish.reason, "result": finish.result},
        steps=[_report_step(r) for r in rows],
    )
    artifact = artifact_store.insert_artifact(conn, run.id, "report.md", report.encode(), "text/markdown")
    moved = run_store.transition_run(
        conn,
        run.id,
        [R.RUNNING, R.WAITING_FOR_INPUT, R.QUEUED, R.NEEDS_CONFIRMATION],
        target,
        finish.reason,
        finished_at=now,
        result=_json_safe(finish.result),
        report=report,
    )
    if moved is None:
        return []
    drafts = [EventDraft("step.cancelled", {"reason": finish.reason}, step_key=k) for k in leftovers]
    drafts.append(
        EventDraft(
            "artifact.created", {"artifact_id": artifact["id"], "name": "report.md", "size": artifact["size"]}
        )
    )
    drafts.append(EventDraft(f"run.{target.value}", {"reason": finish.reason}))  # type: ignore[arg-type]
    promote_key(conn, run.concurrency_key, flows)
    return drafts


def settle_cancel(conn: Connection, run: Row[Any], flows: Flows) -> list[EventDraft]:
    """For a run whose cancel was requested: cancel idle steps; end the run once nothing runs."""
    idle = step_store.set_steps_status(conn, run.id, None, [S.PENDING, S.QUEUED, S.WAITING], S.CANCELLED)
    drafts = [EventDraft("step.cancelled", {"reason": "run cancelled"}, step_key=k) for k in idle]
    if step_store.running_steps_of_run(conn, run.id):
        return drafts  # a worker stops them within a heartbeat, then calls back here
    input_store.close_requests_of_run(conn, run.id)
    reason = run.status_reason if run.status_reason.startswith("cancelled") else "cancelled"
    moved = run_store.transition_run(
        conn,
        run.id,
        [R.RUNNING, R.WAITING_FOR_INPUT, R.QUEUED, R.NEEDS_CONFIRMATION],
        R.CANCELLED,
        reason,
        finished_at=db_now(conn),
    )
    if moved is not None:
        drafts.append(EventDraft("run.cancelled", {"reason": reason}))
        promote_key(conn, run.concurrency_key, flows)
    return drafts


def promote_key(conn: Connection, key: str, flows: Flows) -> list[str]:
    """Start as many queued runs of `key` as its limit allows, FIFO within priority."""
    from baton.store.events import append_events

    queued = run_store.queued_runs_of_key(conn, key)
    if not queued:
        return []
    active = len(run_store.active_runs_of_key(conn, key))
    limit = queued[0].concurrency_limit
    chosen = scheduler.promotable([(r.id, key) for r in queued], {key: active}, {key: limit})
    started = []
    for run_id in chosen:
        run = run_store.lock_run(conn, run_id)
        if run is None:
            continue
        drafts = start_run(conn, run, flows)
        append_events(conn, run_id, drafts)
        started.append(run_id)
    return started


def start_run(conn: Connection, run: Row[Any], flows: Flows) -> list[EventDraft]:
    """queued -> running: set the deadline, queue the ready steps."""
    now = db_now(conn)
    deadline = now + run.timeout_s if run.timeout_s else None
    moved = run_store.transition_run(
        conn,
        run.id,
        [R.QUEUED, R.NEEDS_CONFIRMATION, R.FAILED],
        R.RUNNING,
        "running",
        started_at=run.started_at or now,
        deadline_at=deadline,
        finished_at=None,
    )
    if moved is None:
        return []
    # A flow not loaded in this process still starts: its steps wait for a worker that has it.
    return [EventDraft("run.started", {}), *advance_run(conn, moved, flows)]


def _spec_of(row: Row[Any]) -> StepSpec:
    spec = row.spec or {}
    return StepSpec(
        key=row.key, kind=StepKind(row.kind), needs=tuple(row.needs or ()), handler=spec.get("handler")
    )


def _report_step(row: Row[Any]) -> dict[str, Any]:
    text = row.output_text
    if text is None and row.output is not None:
        text = output_text(row.output)
    if text is None and row.output_ref:
        text = f"(output stored as artifact {row.output_ref})"
    return {
        "key": row.key,
        "kind": row.kind,
        "status": row.status,
        "output": row.output,
        "output_text": text,
        "error": row.error,
        "attempt": row.attempt,
    }


def _final_result(rows: Sequence[Row[Any]]) -> Any:
    """A graph run's result: the outputs of its sink steps (those nothing depends on)."""
    needed = {n for r in rows for n in (r.needs or ())}
    sinks = [r for r in rows if r.key not in needed]
    return {r.key: (r.output if r.output_ref is None else {"artifact_id": r.output_ref}) for r in sinks}


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))
