"""Transaction bodies a worker commits for a step attempt: result, failure, cancel, deltas, reaping.

Every body locks the run row first and then writes only while the attempt's lease token is still
current, so a worker that lost its lease changes nothing (a stale result is recorded as such).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Row

from baton.domain.events import EventDraft
from baton.domain.status import RunStatus, StepStatus
from baton.engine import progress, scheduler
from baton.failpoints import failpoint
from baton.flows.report import output_text
from baton.store import artifacts as artifact_store
from baton.store import inputs as input_store
from baton.store import runs as run_store
from baton.store import steps as step_store
from baton.store.clock import db_now
from baton.store.events import append_events, append_events_by_run

logger = logging.getLogger(__name__)

S = StepStatus
R = RunStatus

#: Outputs larger than this (as JSON) are stored as an artifact and passed on by its id.
INLINE_OUTPUT_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Claim:
    """What a worker holds for one step attempt."""

    step_id: str
    run_id: str
    key: str
    attempt: int
    token: str


@dataclass(frozen=True, slots=True)
class ArtifactDraft:
    name: str
    content: bytes
    media_type: str


def claim_of(row: Row[Any]) -> Claim:
    return Claim(step_id=row.id, run_id=row.run_id, key=row.key, attempt=row.attempt, token=row.lease_token)


def claim_with_events(
    conn: Connection,
    worker_id: str,
    lease_s: float,
    limit: int,
    flows: Sequence[str] | None,
    run_id: str | None = None,
) -> list[SimpleNamespace]:
    """Claim ready steps and record `step.started` for each, in the claim's transaction.

    Each claimed step comes back with its run's `flow` name, so the worker knows what to call.
    The steps are claimed in one statement, and their runs are read and their events appended
    once per run, not once per step (a worker with eight free slots claims a fan-out's eight
    branches at once).
    """
    rows = step_store.claim_steps(conn, worker_id, lease_s, limit, flows, run_id=run_id)
    if not rows:
        return []
    started: dict[str, list[EventDraft]] = {}
    for row in rows:
        started.setdefault(row.run_id, []).append(_started(row, worker_id))
    if len(started) == 1:
        [(only, drafts)] = started.items()
        append_events(conn, only, drafts)
    else:
        if conn.dialect.name == "postgresql":
            # Several runs' sequences are bumped in one statement: their rows are locked in id
            # order first, as every writer that locks several runs does.
            run_store.lock_runs(conn, started)
        append_events_by_run(conn, started)
    runs = run_store.step_contexts(conn, list(started))
    claimed = []
    for row in rows:
        flow, inputs, policy = runs[row.run_id]
        context = StepInputs(dict(inputs or {}), {}, dict(policy or {}), {})
        _with_upstream(conn, row.run_id, list(row.needs or []), context)
        claimed.append(SimpleNamespace(**row._mapping, flow=flow, context=context))
    return claimed


def _started(row: Row[Any], worker_id: str) -> EventDraft:
    return EventDraft("step.started", {"worker": worker_id}, step_key=row.key, attempt=row.attempt)


def _claim_successors(
    conn: Connection, run: Row[Any], claim_next: ClaimNext, known: Mapping[str, Any]
) -> tuple[list[SimpleNamespace], list[EventDraft]]:
    """Claim steps of `run` that the step just recorded made ready, without re-reading what is known.

    The run row (flow, inputs, policy) was read under this transaction's lock, and `known` holds
    outputs recorded in it, so a chain's next step costs no extra reads. The `step.started`
    events are returned for the caller to append with its own, in one write.
    """
    rows = step_store.claim_steps(
        conn, claim_next.worker_id, claim_next.lease_s, claim_next.limit, claim_next.flows, run_id=run.id
    )
    claimed, drafts = [], []
    for row in rows:
        drafts.append(_started(row, claim_next.worker_id))
        needs = list(row.needs or [])
        upstream = {key: known[key] for key in needs if key in known}
        context = StepInputs(dict(run.inputs or {}), {}, run.policy, {})
        if len(upstream) < len(needs):
            _with_upstream(conn, run.id, needs, context)
        else:
            context.upstream.update(upstream)
        claimed.append(SimpleNamespace(**row._mapping, flow=run.flow, context=context))
    return claimed, drafts


@dataclass(frozen=True, slots=True)
class StepInputs:
    """What a claimed step starts from: run inputs, policy, and its needs' outputs.

    Large outputs stay artifacts until the step runs (`refs`), so the claim stays short.
    """

    inputs: dict[str, Any]
    upstream: dict[str, Any]
    policy: dict[str, Any]
    refs: dict[str, str]


def _with_upstream(conn: Connection, run_id: str, needs: list[str], context: StepInputs) -> StepInputs:
    """`context` with the outputs of `needs` (large ones as artifact refs), read from the store."""
    # Only the needed steps' outputs are read: a step of a long run does not load the whole run.
    if needs:
        for row in step_store.load_outputs(conn, run_id, needs):
            if row.output_ref:
                context.refs[row.key] = row.output_ref
            else:
                context.upstream[row.key] = row.output
    return context


@dataclass(frozen=True, slots=True)
class Produced:
    """What a successful attempt hands over: its output, artifacts and how it was produced."""

    output: Any
    artifacts: Sequence[ArtifactDraft] = ()
    usage: Mapping[str, int] | None = None
    engine: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimNext:
    """Lets the worker that records a step claim, in the same transaction, what that step made ready."""

    worker_id: str
    lease_s: float
    limit: int
    flows: Sequence[str] | None


def record_success(
    conn: Connection,
    claim: Claim,
    produced: Produced,
    flows: progress.Flows,
    claim_next: ClaimNext | None = None,
) -> list[SimpleNamespace]:
    """Store the result, its artifacts and events, and move the run on.

    With `claim_next`, steps of the same run that became ready are claimed for this worker in
    the same transaction (one commit per step of a chain instead of two); they are returned.
    """
    recorded = _record_success(conn, claim, produced, flows)
    if recorded is None:
        return []
    run, drafts, known = recorded
    claimed: list[SimpleNamespace] = []
    if claim_next is not None and claim_next.limit > 0 and run.status == R.RUNNING.value:
        claimed, started = _claim_successors(conn, run, claim_next, known)
        drafts += started
        if claimed:
            # Whatever this transaction queued and claimed itself wakes no other claimer.
            step_store.forget_claimed_wakeup(conn, claimed)
    # One append for the result, what it queued and what was claimed: one sequence bump.
    append_events(conn, claim.run_id, drafts)
    return claimed


def _record_success(
    conn: Connection, claim: Claim, produced: Produced, flows: progress.Flows
) -> tuple[Row[Any], list[EventDraft], dict[str, Any]] | None:
    """The body of `record_success`; returns the locked run, the events to append and the output."""
    run = run_store.lock_run(conn, claim.run_id)
    if run is None:
        return None
    succeeded = _finish_succeeded(conn, claim, produced)
    if succeeded is None:
        return None
    finished, drafts, known = succeeded
    # What this step made ready is released now; a run that ends below cancels it again.
    released = step_store.satisfy_and_release(conn, claim.run_id, [claim.key], db_now(conn))
    if produced.usage:
        total = add_usage(run.usage, produced.usage)
        run_store.update_run(conn, run.id, usage=total)
        budget = (((run.policy or {}).get("effective") or {}).get("max_tokens")) or None
        spent = total.get("input_tokens", 0) + total.get("output_tokens", 0)
        if budget is not None and spent > budget:
            reason = f"token budget exceeded: {spent} tokens used, the policy allows {budget} (max_tokens)"
            locked = run_store.get_run(conn, run.id)
            assert locked is not None
            drafts += progress.finish_run(conn, locked, flows, progress.Finish(False, reason))
            return locked, drafts, {}
    drafts += progress.advance_run(conn, run, flows, finished=finished, released=released)
    return run, drafts, known


def _finish_succeeded(
    conn: Connection, claim: Claim, produced: Produced
) -> tuple[Row[Any], list[EventDraft], dict[str, Any]] | None:
    """Store one attempt's output and artifacts and end its step, under the run lock the caller holds.

    Returns the finished step, its events and its output when stored inline (for successors
    claimed in the same transaction); None when the lease was lost (recorded as stale).
    """
    prepared = _prepare_success(conn, claim, produced)
    if prepared is None:
        return None
    finished = step_store.finish_step(conn, claim.step_id, claim.token, S.SUCCEEDED, **prepared.fields)
    return _after_finish(conn, claim, produced, prepared, finished, _artifact_named(finished))


def _artifact_named(finished: Row[Any] | None) -> str | None:
    """The artifact a finished step's spec asks its output to be stored as (None: no step, or none)."""
    return (finished.spec or {}).get("artifact") if finished is not None else None


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An attempt's output made ready to end its step: the step's new fields and the events so far."""

    fields: dict[str, Any]
    drafts: list[EventDraft]
    size: int

    @property
    def inline_only(self) -> bool:
        """Only an inline output to store (no artifact reference, usage or engine label)."""
        fields = self.fields
        return fields["output_ref"] is None and fields["usage"] is None and "engine" not in fields


def _prepare_success(conn: Connection, claim: Claim, produced: Produced) -> _Prepared | None:
    """Fence the lease where needed and store a large output as an artifact; None: lease lost."""
    output = produced.output
    encoded = json.dumps(output, default=str)
    large = len(encoded) > INLINE_OUTPUT_BYTES
    # The fence comes first: a worker that lost the lease writes nothing, not even an artifact.
    # Outputs stored inline need no separate fence: finishing the step is conditional on the lease.
    if (large or produced.artifacts) and step_store.hold_lease(conn, claim.step_id, claim.token) is None:
        _record_stale(conn, claim)
        return None
    fields: dict[str, Any] = {
        "output": None,
        "output_ref": None,
        "output_text": None,
        "lease_token": None,
        "error": None,
        "usage": dict(produced.usage) if produced.usage else None,
    }
    if produced.engine:
        fields["engine"] = produced.engine
    drafts: list[EventDraft] = []
    if large:
        # A large output is stored once as an artifact; events and the run row stay small.
        stored = artifact_store.insert_artifact(
            conn,
            claim.run_id,
            f"{claim.key}.output.json",
            encoded.encode(),
            "application/json",
            step_key=claim.key,
            attempt=claim.attempt,
        )
        fields["output_ref"] = stored["id"]
        drafts.append(_artifact_event(stored, claim))
    else:
        fields["output"] = json.loads(encoded)
        fields["output_text"] = output if isinstance(output, str) else None
    return _Prepared(fields, drafts, len(encoded))


def _after_finish(
    conn: Connection,
    claim: Claim,
    produced: Produced,
    prepared: _Prepared,
    finished: Row[Any] | None,
    named: str | None,
) -> tuple[Row[Any], list[EventDraft], dict[str, Any]] | None:
    """The step's artifacts and events once it has ended (`finished`: None when its lease was lost).

    `named`: the artifact the flow asked this step's output to be stored as, if any.
    """
    if finished is None:
        _record_stale(conn, claim)
        return None
    output, fields, drafts = produced.output, prepared.fields, list(prepared.drafts)
    if named:
        # The flow asked for this step's output as a named artifact (attempt-2.md, plan.json…).
        is_text = isinstance(output, str)
        content = output.encode() if is_text else json.dumps(output, indent=2, default=str).encode()
        media = "text/markdown" if is_text else "application/json"
        stored = artifact_store.insert_artifact(
            conn, claim.run_id, str(named), content, media, step_key=claim.key, attempt=claim.attempt
        )
        drafts.append(_artifact_event(stored, claim))
    for draft in produced.artifacts:
        stored = artifact_store.insert_artifact(
            conn,
            claim.run_id,
            draft.name,
            draft.content,
            draft.media_type,
            step_key=claim.key,
            attempt=claim.attempt,
        )
        drafts.append(_artifact_event(stored, claim))
    inline = fields["output_ref"] is None
    preview = output_text(output)[:2000] if inline else None
    drafts.insert(
        0,
        EventDraft(
            "step.succeeded",
            {
                "output_ref": fields["output_ref"],
                "preview": preview,
                "size": prepared.size,
                "usage": fields["usage"],
            },
            step_key=claim.key,
            attempt=claim.attempt,
        ),
    )
    known = {claim.key: fields["output"]} if inline else {}
    return finished, drafts, known


@dataclass(frozen=True, slots=True)
class Success:
    """One successful attempt to record with others of its run (`record_successes`)."""

    claim: Claim
    produced: Produced
    flows: progress.Flows
    claim_next: ClaimNext | None = None


def _one_by_one(conn: Connection, successes: list[Success]) -> list[list[SimpleNamespace]]:
    return [record_success(conn, s.claim, s.produced, s.flows, s.claim_next) for s in successes]


def record_successes(conn: Connection, successes: list[Success]) -> list[list[SimpleNamespace]]:
    """`record_success` for attempts of one run that ended together; each one's claimed successors.

    A fan-out's branches that end while another write of their run commits are recorded in one
    body: the run is locked once, what they made ready is released and judged once, their
    successors are claimed in one statement and their events appended in one. Each still ends
    only while its own lease holds. Where the attempts cannot share that work (a flow whose
    expand hook looks at each finished step, token usage counted against a budget, workers that
    claim differently) they are recorded one after the other, as `record_success` would.
    """
    first = successes[0]
    run_id, flows = first.claim.run_id, first.flows
    nexts = {(n.worker_id, n.lease_s, tuple(n.flows or ())) for s in successes if (n := s.claim_next)}
    alike = all(s.claim.run_id == run_id and s.flows is flows and not s.produced.usage for s in successes)
    if len(successes) == 1 or not alike or len(nexts) > 1:
        return _one_by_one(conn, successes)
    run = run_store.lock_run(conn, run_id)
    if run is None:
        return [[] for _ in successes]
    flow = flows.get(run.flow)
    if flow is not None and flow.expand_hook is not None:
        return _one_by_one(conn, successes)
    drafts: list[EventDraft] = []
    known: dict[str, Any] = {}
    recorded: list[str] = []
    limits: list[int] = []  # how many successors each attempt may claim
    prepared = [_prepare_success(conn, s.claim, s.produced) for s in successes]
    # Steps with only an inline output end in one statement; the others one by one.
    together = [
        (s.claim.step_id, s.claim.token, p.fields["output"], p.fields["output_text"])
        for s, p in zip(successes, prepared, strict=True)
        if p is not None and p.inline_only
    ]
    batched = len(together) > 1
    ended = step_store.finish_steps_succeeded(conn, together) if batched else {}
    for success, ready in zip(successes, prepared, strict=True):
        succeeded = None
        if ready is not None:
            claim = success.claim
            if batched and ready.inline_only:
                finished = ended.get(claim.step_id)
                named = finished.artifact if finished is not None else None
            else:
                fields = ready.fields
                finished = step_store.finish_step(conn, claim.step_id, claim.token, S.SUCCEEDED, **fields)
                named = _artifact_named(finished)
            succeeded = _after_finish(conn, claim, success.produced, ready, finished, named)
        if succeeded is None:
            limits.append(0)
            continue
        recorded.append(success.claim.key)
        drafts += succeeded[1]
        known.update(succeeded[2])
        limits.append(success.claim_next.limit if success.claim_next is not None else 0)
    if not recorded:
        return [[] for _ in successes]
    released = step_store.satisfy_and_release(conn, run_id, recorded, db_now(conn))
    # No expand hook: advancing the run needs no finished step, so one advance serves them all.
    drafts += progress.advance_run(conn, run, flows, released=released)
    claimed: list[SimpleNamespace] = []
    claim_next = next((s.claim_next for s in successes if s.claim_next is not None), None)
    if claim_next is not None and sum(limits) > 0 and run.status == R.RUNNING.value:
        claimed, started = _claim_successors(conn, run, replace(claim_next, limit=sum(limits)), known)
        drafts += started
        if claimed:
            step_store.forget_claimed_wakeup(conn, claimed)
    append_events(conn, run_id, drafts)
    # Each attempt hands off as many successors as it would have claimed alone.
    shares: list[list[SimpleNamespace]] = []
    for limit in limits:
        shares.append(claimed[:limit])
        claimed = claimed[limit:]
    return shares


def add_usage(total: Mapping[str, int] | None, more: Mapping[str, int]) -> dict[str, int]:
    summed = dict(total or {})
    for key, value in more.items():
        summed[key] = summed.get(key, 0) + int(value)
    return summed


def record_failure(
    conn: Connection,
    claim: Claim,
    error: str,
    retryable: bool,
    flows: progress.Flows,
    events: Sequence[EventDraft] = (),
) -> bool:
    """Retry later with backoff while attempts remain; otherwise fail the step and judge the run."""
    run = run_store.lock_run(conn, claim.run_id)
    if run is None:
        return False
    step = step_store.hold_lease(conn, claim.step_id, claim.token)
    if step is None:
        _record_stale(conn, claim)
        return False
    if events:
        append_events(conn, claim.run_id, list(events))
    if retryable and step.attempt < step.max_attempts and run.cancel_requested_at is None:
        delay = scheduler.retry_delay(step.attempt, float((step.spec or {}).get("backoff_s") or 0))
        step_store.finish_step(
            conn,
            claim.step_id,
            claim.token,
            S.QUEUED,
            error=error,
            available_at=db_now(conn) + delay,
            lease_token=None,
        )
        append_events(
            conn,
            claim.run_id,
            [
                EventDraft(
                    "step.retrying",
                    {"error": error, "delay_s": delay, "next_attempt": step.attempt + 1},
                    step_key=claim.key,
                    attempt=claim.attempt,
                )
            ],
        )
        return True
    finished = step_store.finish_step(
        conn, claim.step_id, claim.token, S.FAILED, error=error, lease_token=None
    )
    drafts = [EventDraft("step.failed", {"error": error}, step_key=claim.key, attempt=claim.attempt)]
    locked = run_store.get_run(conn, claim.run_id)
    assert locked is not None and finished is not None
    drafts += progress.advance_run(conn, locked, flows, finished=finished)
    append_events(conn, claim.run_id, drafts)
    return True


def record_cancelled(conn: Connection, claim: Claim, reason: str, flows: progress.Flows) -> bool:
    """A step stopped because its run is being cancelled; the run ends once nothing else runs."""
    run = run_store.lock_run(conn, claim.run_id)
    if run is None:
        return False
    finished = step_store.finish_step(
        conn, claim.step_id, claim.token, S.CANCELLED, error=reason, lease_token=None
    )
    if finished is None:
        return False
    drafts = [EventDraft("step.cancelled", {"reason": reason}, step_key=claim.key, attempt=claim.attempt)]
    locked = run_store.get_run(conn, claim.run_id)
    assert locked is not None
    drafts += progress.settle_cancel(conn, locked, flows)
    append_events(conn, claim.run_id, drafts)
    return True


def append_step_events(conn: Connection, claim: Claim, drafts: Sequence[EventDraft]) -> bool:
    """Fenced append of events a step emits while it runs (deltas, logs). False: lease lost."""
    if run_store.lock_run(conn, claim.run_id) is None:
        return False
    if step_store.hold_lease(conn, claim.step_id, claim.token) is None:
        return False
    append_events(conn, claim.run_id, drafts)
    return True


def append_steps_events(conn: Connection, batch: Sequence[tuple[Claim, Sequence[EventDraft]]]) -> list[Claim]:
    """`append_step_events` for many steps in one transaction; the claims whose lease is lost.

    The runs are locked in id order, then every lease is checked and every event appended in
    one statement each (PostgreSQL): a worker's streamed output costs a few round trips per
    flush, not a transaction per step.
    """
    if len(batch) == 1:  # one step (SQLite's writers, a retried batch): the single-step statements
        [(claim, drafts)] = batch
        return [] if append_step_events(conn, claim, drafts) else [claim]
    locked = run_store.lock_runs(conn, {claim.run_id for claim, _ in batch})
    held = step_store.hold_leases(
        conn, [(claim.step_id, claim.token) for claim, _ in batch if claim.run_id in locked]
    )
    by_run: dict[str, list[EventDraft]] = {}
    lost: list[Claim] = []
    for claim, drafts in batch:
        if claim.step_id in held:
            by_run.setdefault(claim.run_id, []).extend(drafts)
        else:
            lost.append(claim)
    append_events_by_run(conn, by_run)
    return lost


def _still_expired(step: Row[Any], token: str | None, now: float) -> bool:
    lease_over = step.lease_expires_at is not None and step.lease_expires_at < now
    deadline_over = step.deadline_at is not None and step.deadline_at < now
    return step.status == S.RUNNING.value and step.lease_token == token and (lease_over or deadline_over)


def reap(conn: Connection, flows: progress.Flows, limit: int = 100) -> int:
    """Repair what nobody owns any more: expired leases, overdue runs, runs that can be promoted."""
    repaired = 0
    for seen in step_store.expired_leases(conn, limit):
        run = run_store.lock_run(conn, seen.run_id)
        if run is None:
            continue
        now = db_now(conn)
        # Judged again under lock: another reaper may have repaired it meanwhile, or its worker
        # heartbeated in time; then it is not ours to touch (and no duplicate events are written).
        step = step_store.lock_step(conn, seen.id)
        if step is None or not _still_expired(step, seen.lease_token, now):
            continue
        timed_out = step.deadline_at is not None and step.deadline_at < now
        reason = "timed out" if timed_out else f"worker lost: lease of {step.claimed_by} expired"
        drafts = [
            EventDraft(
                "step.lease_expired",
                {"worker": step.claimed_by, "reason": reason},
                step_key=step.key,
                attempt=step.attempt,
            )
        ]
        if run.cancel_requested_at is not None:
            step_store.finish_step(
                conn, step.id, step.lease_token, S.CANCELLED, error="run cancelled", lease_token=None
            )
            drafts += progress.settle_cancel(conn, run, flows)
        elif step.attempt < step.max_attempts:
            step_store.finish_step(
                conn, step.id, step.lease_token, S.QUEUED, error=reason, available_at=now, lease_token=None
            )
            drafts.append(EventDraft("step.queued", {"reason": reason}, step_key=step.key))
        else:
            error = f"{reason} after {step.attempt} attempt(s)"
            finished = step_store.finish_step(
                conn, step.id, step.lease_token, S.FAILED, error=error, lease_token=None
            )
            drafts.append(
                EventDraft("step.failed", {"error": error}, step_key=step.key, attempt=step.attempt)
            )
            if finished is not None:
                drafts += progress.advance_run(conn, run, flows, finished=finished)
        failpoint("in_reaper_reclaim")
        append_events(conn, step.run_id, drafts)
        repaired += 1
    for request in input_store.expired_requests(conn, limit):
        run = run_store.lock_run(conn, request.run_id)
        if run is None or input_store.expire_request(conn, request.id) is None:
            continue
        error = "no answer before the input request expired"
        step_store.set_steps_status(conn, run.id, [request.step_key], [S.WAITING], S.FAILED, error=error)
        failed = next(r for r in step_store.load_steps(conn, run.id) if r.key == request.step_key)
        drafts = [
            EventDraft("step.failed", {"error": error, "request_id": request.id}, step_key=request.step_key)
        ]
        drafts += progress.advance_run(conn, run, flows, finished=failed)
        append_events(conn, run.id, drafts)
        repaired += 1
    for overdue in run_store.runs_past_deadline(conn):
        run = run_store.lock_run(conn, overdue.id)
        if run is None or run.status in ("succeeded", "failed", "cancelled"):
            continue
        reason = f"run timed out after {run.timeout_s:g} s"
        append_events(conn, run.id, progress.finish_run(conn, run, flows, progress.Finish(False, reason)))
        repaired += 1
    for key in run_store.keys_with_queued_runs(conn):
        repaired += len(progress.promote_key(conn, key, flows))
    return repaired


def repair_running_runs(conn: Connection, flows: progress.Flows) -> int:
    """On worker start: a running run with no step in flight or queued is moved on again."""
    repaired = 0
    for run in run_store.runs_in_status(conn, R.RUNNING):
        rows = step_store.load_steps(conn, run.id)
        if any(r.status in (S.RUNNING, S.QUEUED, S.WAITING) for r in rows):
            continue
        locked = run_store.lock_run(conn, run.id)
        if locked is None:
            continue
        step_store.recount_unmet(conn, run.id)
        append_events(conn, run.id, progress.advance_run(conn, locked, flows))
        repaired += 1
    return repaired


def _record_stale(conn: Connection, claim: Claim) -> None:
    logger.warning(
        "Discarding stale result of %s attempt %s",
        claim.key,
        claim.attempt,
        extra={"action": "step.stale_result", "run_id": claim.run_id, "step_key": claim.key},
    )
    append_events(
        conn,
        claim.run_id,
        [
            EventDraft(
                "step.stale_result",
                {"reason": "lease lost before completion"},
                step_key=claim.key,
                attempt=claim.attempt,
            )
        ],
    )


def _artifact_event(stored: dict[str, Any], claim: Claim) -> EventDraft:
    return EventDraft(
        "artifact.created",
        {
            "artifact_id": stored["id"],
            "name": stored["name"],
            "size": stored["size"],
            "media_type": stored["media_type"],
        },
        step_key=claim.key,
        attempt=claim.attempt,
    )
