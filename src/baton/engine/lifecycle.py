"""Run lifecycle operations: create, confirm, cancel, retry, resume, fork, answer. One transaction each."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from sqlalchemy import Connection, Row, exc

from baton.domain.errors import (
    ConcurrencyLimitReached,
    Conflict,
    IllegalTransition,
    InvalidInputs,
    NotFound,
    PolicyDenied,
    UsageError,
)
from baton.domain.events import EventDraft
from baton.domain.ids import new_id
from baton.domain.policy import Policy, PolicySnapshot, effective_policy, parse_layer
from baton.domain.status import TERMINAL_RUN_STATUSES, RunStatus, StepStatus
from baton.engine import progress, scheduler
from baton.failpoints import failpoint
from baton.flows.catalog import Catalog
from baton.flows.inputs import validate_inputs
from baton.flows.spec import Flow, StepSpec
from baton.store import events as event_store
from baton.store import inputs as input_store
from baton.store import runs as run_store
from baton.store import steps as step_store
from baton.store import tenancy as tenancy_store
from baton.store.clock import db_now
from baton.store.database import Database, touch
from baton.store.events import append_events

logger = logging.getLogger(__name__)

R = RunStatus
S = StepStatus
STRATEGIES = ("enqueue", "reject", "cancel_running", "cancel_new")


@dataclass(frozen=True)
class RunRequest:
    """Everything a caller may say when creating a run."""

    flow: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    project_id: str | None = None
    created_by: str | None = None
    title: str = ""
    band: str | None = None
    source: Mapping[str, Any] | None = None
    idempotency_key: str | None = None
    confirm: bool = False
    require_confirmation: bool | None = None
    concurrency_key: str | None = None
    concurrency_limit: int = 1
    strategy: str = "enqueue"
    priority: int = 0
    timeout_s: float | None = None
    #: the run layer of the policy: it may only tighten, unless `may_loosen` (an admin's request)
    policy: Mapping[str, Any] | None = None
    may_loosen: bool = False
    #: the schedule that makes this run (engine/schedules.py)
    schedule_id: str | None = None


class Lifecycle:
    """The operations people and schedules perform on runs, over one database and flow catalog."""

    def __init__(
        self, db: Database, catalog: Catalog, server_policy: Mapping[str, Any] | None = None
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.flows = catalog.as_mapping()
        self.server_policy = parse_layer(server_policy, layer="server")

    # --- create ------------------------------------------------------------------------------

    async def create_run(self, request: RunRequest, *, retry_of: str | None = None) -> dict[str, Any]:
        """Validate, then insert the run and its steps and admit it, in one transaction.

        The same idempotency key (per project and user) returns the run it first created.
        """
        body = self.run_creation(request, retry_of=retry_of)
        scoped_key = _scoped_key(request)
        try:
            created = await self.db.write(body)
            failpoint("after_run_insert")
            return created
        except exc.IntegrityError:
            if scoped_key is None:
                raise
            # Two creates raced with one key: the loser returns the winner's run.
            existing = await self.db.read(run_store.find_by_idempotency_key, scoped_key)
            if existing is None:
                raise
            return await self.get_run(existing.id)

    def run_creation(
        self, request: RunRequest, *, retry_of: str | None = None
    ) -> Callable[[Connection], dict[str, Any]]:
        """Validate `request` now; return the body that creates the run inside a caller's transaction.

        A schedule fires through this, so that its run and the schedule's next fire time commit together.
        """
        flow = self.catalog.get(request.flow)
        inputs = validate_inputs(flow.input_schema, request.inputs, flow=flow.name)
        if request.strategy not in STRATEGIES:
            raise UsageError(f"strategy {request.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if request.concurrency_limit < 1:
            raise UsageError(f"concurrency_limit must be at least 1, got {request.concurrency_limit}")
        if request.timeout_s is not None and request.timeout_s <= 0:
            raise UsageError(f"timeout_s must be positive, got {request.timeout_s}")
        if request.idempotency_key is not None and not request.idempotency_key.strip():
            raise UsageError("idempotency_key must not be empty: leave it out or give a unique string")
        run_layer = parse_layer(request.policy, layer="run")
        scoped_key = _scoped_key(request)
        run_id = new_id("run")
        specs = flow.steps_for_band(request.band)  # a band may run fewer steps
        rows = progress.step_rows_for(specs, 0)

        def body(conn: Connection) -> dict[str, Any]:
            if scoped_key is not None:
                existing = run_store.find_by_idempotency_key(conn, scoped_key)
                if existing is not None:
                    # The same answer as the first create: the whole run, steps included.
                    return self._snapshot(conn, existing.id)
            key = request.concurrency_key or f"{request.project_id or '-'}:{request.created_by or '-'}"
            snapshot = self._policy_for(conn, request.project_id, flow, run_layer, request.may_loosen)
            policy = snapshot.effective
            check_steps_allowed(flow.name, specs, policy)
            if policy.require_confirmation:
                needs_confirmation, why = True, "waiting for confirmation (required by policy)"
            else:
                wanted = request.require_confirmation
                needs_confirmation = (
                    flow.require_confirmation if wanted is None else wanted
                ) and not request.confirm
                why = "waiting for confirmation"
            status = R.NEEDS_CONFIRMATION if needs_confirmation else R.QUEUED
            run = run_store.insert_run(
                conn,
                {
                    "id": run_id,
                    "flow": flow.name,
                    "flow_version": flow.version,
                    "project_id": request.project_id,
                    "created_by": request.created_by,
                    "title": request.title or flow.title or flow.name,
                    "band": request.band,
                    "source": dict(request.source) if request.source else None,
                    "inputs": inputs,
                    "status": status.value,
                    "status_reason": why if needs_confirmation else "queued",
                    "policy": snapshot.to_json(),
                    "idempotency_key": scoped_key,
                    "concurrency_key": key,
                    "concurrency_limit": request.concurrency_limit,
                    "concurrency_strategy": request.strategy,
                    "priority": request.priority,
                    "retry_of": retry_of,
                    "timeout_s": request.timeout_s or flow.timeout_s,
                    "queued_at": None if needs_confirmation else db_now(conn),
                    "schedule_id": request.schedule_id,
                },
            )
            step_store.insert_steps(conn, run_id, cap_timeouts(rows, policy))
            drafts = [
                EventDraft(
                    "run.created",
                    {"flow": flow.name, "inputs_keys": sorted(inputs), "retry_of": retry_of}
                    | ({"schedule_id": request.schedule_id} if request.schedule_id else {}),
                )
            ]
            drafts += [EventDraft("policy.override", {"notice": notice}) for notice in snapshot.overrides]
            if not needs_confirmation:
                drafts += self._admit(conn, run)
            append_events(conn, run_id, drafts)
            if retry_of:
                append_events(conn, retry_of, [EventDraft("run.retried", {"new_run_id": run_id})])
            return self._snapshot(conn, run_id)

        return body

    def _policy_for(
        self,
        conn: Connection,
        project_id: str | None,
        flow: Flow,
        run_layer: Mapping[str, Any],
        may_loosen: bool,
    ) -> PolicySnapshot:
        """Server < project < flow < run. A named project must exist: none is ever made implicitly."""
        project_layer: Mapping[str, Any] | None = None
        if project_id is not None:
            project = tenancy_store.get_project(conn, project_id)
            if project is None:
                raise NotFound(f"project {project_id} not found")
            project_layer = project.policy
        return effective_policy(
            self.server_policy, project_layer, flow.policy, run_layer, run_may_loosen=may_loosen
        )

    def _admit(self, conn: Connection, run: Row[Any]) -> list[EventDraft]:
        """A confirmed run either starts, or follows its key's strategy when the key is full."""
        key, limit = run.concurrency_key, run.concurrency_limit
        active = run_store.active_runs_of_key(conn, key)
        waiting_before = [r for r in run_store.queued_runs_of_key(conn, key) if r.id != run.id]
        if len(active) < limit and not waiting_before:
            return progress.start_run(conn, run, self.flows)
        strategy = run.concurrency_strategy
        if strategy == "reject":
            raise ConcurrencyLimitReached(
                f"concurrency key {key!r} already has {len(active)} active run(s) of {limit} allowed "
                f"({', '.join(r.id for r in active)}); wait for it to finish, cancel it, "
                "or use strategy 'enqueue'"
            )
        if strategy == "cancel_new":
            return progress.finish_run(
                conn,
                run,
                self.flows,
                progress.Finish(False, f"cancelled: concurrency key {key!r} is full (strategy cancel_new)"),
                status=R.CANCELLED,
            )
        if strategy == "cancel_running":
            # Start the newcomer before cancelling the others: an old run that ends at once frees
            # its slot and promotes its key, which must neither start this run behind its caller's
            # back (its events would precede `run.created`) nor start an older waiting run next
            # to it (two active runs on a limit of one).
            drafts = progress.start_run(conn, run, self.flows)
            for other in active:
                locked = run_store.lock_run(conn, other.id)
                if locked is not None:
                    append_events(
                        conn,
                        other.id,
                        self._request_cancel(
                            conn, locked, f"cancelled by newer run {run.id} (strategy cancel_running)"
                        ),
                    )
            return drafts
        reason = f"waiting for a concurrency slot ({len(active)} of {limit} active for {key})"
        run_store.update_run(conn, run.id, status_reason=reason, queued_at=run.queued_at or db_now(conn))
        return [EventDraft("run.queued", {"reason": reason})]

    # --- transitions ---------------------------------------------------------------------------

    async def confirm(self, run_id: str, *, by: str | None = None) -> dict[str, Any]:
        def body(conn: Connection) -> dict[str, Any]:
            run = self._lock(conn, run_id)
            if run.status != R.NEEDS_CONFIRMATION:
                raise IllegalTransition(run_id, run.status, R.QUEUED, "confirm run")
            moved = run_store.transition_run(
                conn, run_id, [R.NEEDS_CONFIRMATION], R.QUEUED, "queued", queued_at=db_now(conn)
            )
            assert moved is not None
            drafts = [EventDraft("run.confirmed", {"by": by})] + self._admit(conn, moved)
            append_events(conn, run_id, drafts)
            return self._snapshot(conn, run_id)

        return await self.db.write(body)

    async def cancel(
        self, run_id: str, *, reason: str = "", by: str | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Immediate for a run that has nothing in flight; otherwise requested, then settled by the worker.

        Cancelling a cancelled run again is a no-op; cancelling a finished one is refused, unless
        `idempotency_key` is the key of the cancel that was accepted (a retry after a lost reply).
        """
        words = f"cancelled by {by}" if by else "cancelled"
        if reason:
            words += f": {reason}"

        def body(conn: Connection) -> dict[str, Any]:
            run = self._lock(conn, run_id)
            if _already_made(conn, run_id, "run.cancel_requested", idempotency_key):
                return self._snapshot(conn, run_id)
            if run.status == R.CANCELLED or (
                run.cancel_requested_at is not None and run.status not in TERMINAL_RUN_STATUSES
            ):
                return self._snapshot(conn, run_id)
            if run.status in TERMINAL_RUN_STATUSES:
                raise IllegalTransition(run_id, run.status, R.CANCELLED, "cancel run")
            append_events(conn, run_id, self._request_cancel(conn, run, words, idempotency_key))
            failpoint("in_cancel")
            return self._snapshot(conn, run_id)

        cancelled = await self.db.write(body)
        failpoint("after_completion_before_ack")
        return cancelled

    def _request_cancel(
        self, conn: Connection, run: Row[Any], reason: str, idempotency_key: str | None = None
    ) -> list[EventDraft]:
        run_store.update_run(conn, run.id, cancel_requested_at=db_now(conn), status_reason=reason)
        touch(conn, "cancel", f"run:{run.id}")
        locked = run_store.get_run(conn, run.id)
        assert locked is not None
        payload = {"reason": reason} | keyed(idempotency_key)
        return [EventDraft("run.cancel_requested", payload)] + progress.settle_cancel(
            conn, locked, self.flows
        )

    async def retry(
        self,
        run_id: str,
        *,
        by: str | None = None,
        idempotency_key: str | None = None,
        may_loosen: bool = False,
    ) -> dict[str, Any]:
        """A new run with the same flow, inputs and settings; `retry_of` points back."""
        old = await self.db.read(run_store.get_run, run_id)
        if old is None:
            raise NotFound(f"run {run_id} not found")
        if old.status not in TERMINAL_RUN_STATUSES:
            raise IllegalTransition(run_id, old.status, "retried", "retry run")
        request = RunRequest(
            flow=old.flow,
            inputs=old.inputs,
            project_id=old.project_id,
            created_by=by or old.created_by,
            title=old.title,
            band=old.band,
            source=old.source,
            idempotency_key=idempotency_key,
            confirm=True,
            concurrency_key=old.concurrency_key,
            concurrency_limit=old.concurrency_limit,
            strategy=old.concurrency_strategy,
            priority=old.priority,
            timeout_s=old.timeout_s,
            policy=((old.policy or {}).get("layers") or {}).get("run"),
            may_loosen=may_loosen,
        )
        failpoint("in_retry")  # the retry's one transaction is the new run's creation
        return await self.create_run(request, retry_of=run_id)

    async def resume(
        self, run_id: str, *, by: str | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Re-queue a failed run's failed and cancelled steps; every succeeded step is kept.

        The `idempotency_key` is recorded in the `run.resumed` event: the same key again returns the
        run instead of a 409 (the client lost the first reply); it never resumes a second time.
        """

        def body(conn: Connection) -> dict[str, Any]:
            run = self._lock(conn, run_id)
            if _already_made(conn, run_id, "run.resumed", idempotency_key):
                return self._snapshot(conn, run_id)
            if run.status != R.FAILED:
                raise IllegalTransition(run_id, run.status, R.QUEUED, "resume run")
            rows = step_store.load_steps(conn, run_id)
            again = scheduler.resume_plan([progress.step_view(r) for r in rows])
            for row in rows:
                if row.key in again:
                    budget = int((row.spec or {}).get("max_attempts") or row.max_attempts)
                    step_store.set_steps_status(
                        conn,
                        run_id,
                        [row.key],
                        [S.FAILED, S.CANCELLED],
                        S.PENDING,
                        max_attempts=row.attempt + budget,
                        error=None,
                    )
            step_store.recount_unmet(conn, run_id)
            moved = run_store.transition_run(
                conn,
                run_id,
                [R.FAILED],
                R.QUEUED,
                "queued",
                queued_at=db_now(conn),
                finished_at=None,
                result=None,
                report=None,
                cancel_requested_at=None,
            )
            assert moved is not None
            resumed = {"by": by, "steps": sorted(again)} | keyed(idempotency_key)
            drafts = [EventDraft("run.resumed", resumed)] + self._admit(conn, moved)
            append_events(conn, run_id, drafts)
            failpoint("in_resume")
            return self._snapshot(conn, run_id)

        return await self.db.write(body)

    async def fork(
        self, run_id: str, from_step: str, *, inputs: Mapping[str, Any] | None = None, by: str | None = None
    ) -> dict[str, Any]:
        """A new run that keeps the succeeded steps upstream of `from_step` and runs the rest again."""
        source = await self.db.read(run_store.get_run, run_id)
        if source is None:
            raise NotFound(f"run {run_id} not found")
        flow = self.catalog.get(source.flow)
        new_inputs = validate_inputs(
            flow.input_schema, inputs if inputs is not None else source.inputs, flow=flow.name
        )
        new_run_id = new_id("run")

        def body(conn: Connection) -> dict[str, Any]:
            rows = step_store.load_steps(conn, run_id)
            keys = [r.key for r in rows]
            if from_step not in keys:
                raise UsageError(f"run {run_id} has no step {from_step!r}; its steps are {', '.join(keys)}")
            copy, _ = scheduler.fork_plan([progress.step_view(r) for r in rows], from_step)
            run_store.insert_run(
                conn,
                {
                    **{k: v for k, v in source._mapping.items() if k in _FORK_KEEP},
                    "id": new_run_id,
                    "inputs": new_inputs,
                    "created_by": by or source.created_by,
                    "status": R.QUEUED.value,
                    "status_reason": "queued",
                    "forked_from": run_id,
                    "fork_step": from_step,
                    "queued_at": db_now(conn),
                },
            )
            step_store.insert_steps(
                conn,
                new_run_id,
                [
                    {
                        "key": r.key,
                        "kind": r.kind,
                        "needs": r.needs,
                        "position": r.position,
                        "spec": r.spec,
                        "max_attempts": r.max_attempts,
                        "engine": r.engine,
                        "timeout_s": r.timeout_s,
                        **(
                            {
                                "status": S.SUCCEEDED.value,
                                "output": r.output,
                                "output_ref": r.output_ref,
                                "output_text": r.output_text,
                                "attempt": r.attempt,
                                "started_at": r.started_at,
                                "finished_at": r.finished_at,
                            }
                            if r.key in copy
                            # The same columns for every row: one multi-row INSERT takes its
                            # column list from the first row.
                            else {
                                "status": S.PENDING.value,
                                "output": None,
                                "output_ref": None,
                                "output_text": None,
                                "attempt": 0,
                                "started_at": None,
                                "finished_at": None,
                            }
                        ),
                    }
                    for r in rows
                ],
            )
            run = run_store.get_run(conn, new_run_id)
            assert run is not None
            drafts = [
                EventDraft("run.created", {"flow": flow.name, "forked_from": run_id, "from_step": from_step}),
                EventDraft(
                    "run.forked", {"forked_from": run_id, "from_step": from_step, "copied": sorted(copy)}
                ),
            ]
            drafts += self._admit(conn, run)
            append_events(conn, new_run_id, drafts)
            return self._snapshot(conn, new_run_id)

        return await self.db.write(body)

    async def answer(
        self, request_id: str, answer: Any, *, by: str | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Answer a pending input request; the run moves on in the same transaction.

        The `idempotency_key` is recorded in the `input.answered` event: the same key again returns
        the run instead of a 409, and the first answer stands.
        """
        request = await self.db.read(input_store.get_request, request_id)
        if request is None:
            raise NotFound(f"input request {request_id} not found")
        problems = [
            {"field": "/".join(str(p) for p in e.absolute_path) or "(answer)", "message": e.message}
            for e in Draft202012Validator(request.schema or {}).iter_errors(answer)
        ]
        if problems:
            detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
            raise InvalidInputs(f"the answer to {request_id} does not match its schema: {detail}", problems)

        def body(conn: Connection) -> dict[str, Any]:
            run = self._lock(conn, request.run_id)
            if _already_made(conn, run.id, "input.answered", idempotency_key, request_id=request_id):
                return self._snapshot(conn, run.id)
            answered = input_store.answer_request(conn, request_id, answer, by)
            if answered is None:
                current = input_store.get_request(conn, request_id)
                raise Conflict(
                    f"input request {request_id} is {current.status if current else 'gone'}: "
                    "it takes no more answers"
                )
            step_store.set_steps_status(
                conn,
                run.id,
                [answered.step_key],
                [S.WAITING],
                S.SUCCEEDED,
                output=answer,
                finished_at=db_now(conn),
            )
            released = step_store.satisfy_and_release(conn, run.id, [answered.step_key], db_now(conn))
            step = next(r for r in step_store.load_steps(conn, run.id) if r.key == answered.step_key)
            drafts = [
                EventDraft(
                    "input.answered",
                    {"request_id": request_id, "by": by} | keyed(idempotency_key),
                    step_key=answered.step_key,
                ),
                EventDraft("step.succeeded", {"by": by}, step_key=answered.step_key),
            ]
            drafts += progress.advance_run(conn, run, self.flows, finished=step, released=released)
            append_events(conn, run.id, drafts)
            return self._snapshot(conn, run.id)

        return await self.db.write(body)

    # --- reads -----------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any]:
        def body(conn: Connection) -> dict[str, Any]:
            if run_store.get_run(conn, run_id) is None:
                raise NotFound(f"run {run_id} not found")
            return self._snapshot(conn, run_id)

        return await self.db.read(body)

    def _lock(self, conn: Connection, run_id: str) -> Row[Any]:
        run = run_store.lock_run(conn, run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run

    def _snapshot(self, conn: Connection, run_id: str) -> dict[str, Any]:
        run = run_store.get_run(conn, run_id)
        assert run is not None
        data = dict(run._mapping)
        step_rows = step_store.load_steps(conn, run_id)
        data["steps"] = [dict(r._mapping) for r in step_rows]
        signs = [run.started_at, *(r.heartbeat_at for r in step_rows), *(r.finished_at for r in step_rows)]
        data["stalled"] = scheduler.is_stalled(RunStatus(run.status), signs, db_now(conn))
        data["pending_inputs"] = [dict(r._mapping) for r in input_store.list_requests(conn, run_id=run_id)]
        return data


def keyed(idempotency_key: str | None) -> dict[str, str]:
    """The `idempotency_key` entry of a transition event's payload (none without a key)."""
    return {"idempotency_key": idempotency_key} if idempotency_key else {}


def _already_made(
    conn: Connection, run_id: str, event_type: str, idempotency_key: str | None, **match: Any
) -> bool:
    """Whether the run's `event_type` events (those matching `match`) record this key; no read without one."""
    if not idempotency_key:
        return False
    payloads = [
        p
        for p in event_store.payloads_of_type(conn, run_id, event_type)
        if all(p.get(name) == value for name, value in match.items())
    ]
    return replays(payloads, idempotency_key)


def replays(payloads: Sequence[Mapping[str, Any]], idempotency_key: str | None) -> bool:
    """Whether a transition with this key was already made: its event payload carries the key."""
    return bool(idempotency_key) and any(p.get("idempotency_key") == idempotency_key for p in payloads)


def _scoped_key(request: RunRequest) -> str | None:
    """The idempotency key as stored: scoped to the run's project and user."""
    if not request.idempotency_key:
        return None
    return f"{request.project_id or '-'}|{request.created_by or '-'}|{request.idempotency_key}"


_FORK_KEEP = {
    "flow",
    "flow_version",
    "project_id",
    "title",
    "band",
    "source",
    "policy",
    "concurrency_key",
    "concurrency_limit",
    "concurrency_strategy",
    "priority",
    "timeout_s",
}


def check_steps_allowed(flow: str, specs: Sequence[StepSpec], policy: Policy) -> None:
    """Refuse a run whose flow needs more steps or other engines than the policy allows."""
    if policy.max_steps is not None and len(specs) > policy.max_steps:
        raise PolicyDenied(
            f"flow {flow} has {len(specs)} steps but the policy allows at most {policy.max_steps} (max_steps)"
        )
    for spec in specs:
        if spec.engine and not spec.engine.startswith("function:") and not policy.allows_engine(spec.engine):
            allowed = ", ".join(policy.allowed_engines or ())
            raise PolicyDenied(
                f"step {spec.key} of flow {flow} uses engine {spec.engine!r}, "
                f"which the policy does not allow (allowed_engines: {allowed or 'none'})"
            )


def cap_timeouts(rows: list[dict[str, Any]], policy: Policy) -> list[dict[str, Any]]:
    """Every step's timeout is at most the policy's `step_timeout_s`."""
    cap = policy.step_timeout_s
    if cap is None:
        return rows
    capped = []
    for row in rows:
        timeout = row.get("timeout_s")
        limit = cap if timeout is None else min(timeout, cap)
        capped.append({**row, "timeout_s": limit, "spec": {**row["spec"], "timeout_s": limit}})
    return capped
