"""R16: a Hypothesis state machine drives the real store and lifecycle under a controlled clock.

RELIABILITY.md §4.2 R16. Rules are what API callers and workers do (create, claim, heartbeat,
complete, fail, cancel, answer an input (pause/resume), resume, retry, advance the clock and reap,
crash a worker, repeat a request). A small in-memory model predicts which fenced writes the store
must accept: exactly those of the claim that still holds the step's lease. After every rule the
invariants are read back from the database itself.

The clock is the database clock Baton reads (`baton.store.clock.db_now`): SQLite's is this
process's `time.time()` as seen by `baton.store.clock`, PostgreSQL's is the dialect's `now()`
expression; both are pointed at the test's clock, which only moves forward.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import Connection, Float, delete, literal, select

import baton.store.clock as clock_module
from baton.domain.errors import UsageError
from baton.domain.events import EventDraft
from baton.domain.ids import new_worker_id
from baton.engine import step_results
from baton.engine.lifecycle import RunRequest
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store import steps as step_store
from baton.store.schema import events, input_requests, runs, steps
from tests.reliability.tier import size

pytestmark = pytest.mark.reliability

LEASE_S = 3.0
TERMINAL = ("succeeded", "failed", "cancelled")

flow = Flow("r16", title="R16 state machine")


@flow.step(max_attempts=2)
def a(ctx: Any) -> str:  # never called: the machine plays the worker
    return "a"


@flow.step(max_attempts=2)
def c(ctx: Any) -> str:
    return "c"


flow.input("ask", needs=["a"], prompt="go on?", schema={"type": "object"})


@flow.step(needs=["ask", "c"], max_attempts=2)
def b(ctx: Any) -> str:
    return "b"


CATALOG = Catalog([flow])


class FakeClock:
    """The database clock of the test: starts at the real time, moves only when a rule says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    clock = FakeClock()
    monkeypatch.setattr(clock_module, "time", SimpleNamespace(time=clock.time))
    postgres = clock_module._DIALECTS["postgresql"]
    monkeypatch.setattr(postgres, "now", lambda: literal(clock.now, Float))
    yield clock


@dataclass
class Held:
    """A claim as a worker holds it; the model says whether it still owns the lease."""

    claim: step_results.Claim
    worker: str


@dataclass
class Model:
    #: step id -> the token the model expects to be the step's live lease (None: no lease)
    current: dict[str, str | None] = field(default_factory=dict)
    #: step id -> lease expiry on the fake clock
    expires: dict[str, float] = field(default_factory=dict)
    held: list[Held] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    last_request: tuple[str, Any, str] | None = None
    # history for the invariants
    run_status: dict[str, str] = field(default_factory=dict)
    step_status: dict[str, str] = field(default_factory=dict)
    step_attempt: dict[str, int] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    #: runs a resume was just asked for: `failed` has one edge out, resume (DESIGN.md, Run lifecycle)
    resumed: set[str] = field(default_factory=set)


def _run_state(conn: Connection, run_id: str) -> Any:
    return conn.execute(select(runs.c.status, runs.c.cancel_requested_at).where(runs.c.id == run_id)).one()


def machine_for(
    rt: Runtime, loop: asyncio.AbstractEventLoop, clock: FakeClock, steps_per_example: int
) -> type:
    db = rt.db
    flows = rt.lifecycle.flows

    def run(coro: Any) -> Any:
        return loop.run_until_complete(coro)

    class R16(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.m = Model()
            self.workers = [new_worker_id() for _ in range(3)]

        @initialize()
        def first_run(self) -> None:
            self.create()

        def teardown(self) -> None:
            """Examples share one database: drop this one's runs so later reapers do not sift them."""
            ids = list(self.m.runs)
            run(db.write(lambda conn: conn.execute(delete(runs).where(runs.c.id.in_(ids)))))

        # --- API rules ---------------------------------------------------------------------------

        @rule()
        def create(self) -> None:
            created = run(rt.lifecycle.create_run(RunRequest(flow="r16", created_by=f"u{random.random()}")))
            self.m.runs.append(created["id"])

        @rule(pick=st.integers(0, 50))
        def cancel(self, pick: int) -> None:
            run_id = self.m.runs[pick % len(self.m.runs)]
            key = self._new_key()
            self._lifecycle(
                rt.lifecycle.cancel(run_id, reason="r16", idempotency_key=key),
                request=("cancel", run_id, key),
            )

        @rule(pick=st.integers(0, 50))
        def answer_input(self, pick: int) -> None:
            """Resume a run paused on its input step."""
            pending = run(
                db.read(
                    lambda conn: list(
                        conn.execute(
                            select(input_requests.c.id).where(input_requests.c.status == "pending")
                        ).scalars()
                    )
                )
            )
            if pending:
                request_id = pending[pick % len(pending)]
                key = self._new_key()
                self._lifecycle(
                    rt.lifecycle.answer(request_id, {"ok": True}, idempotency_key=key),
                    request=("answer", request_id, key),
                )

        @rule(pick=st.integers(0, 50))
        def resume(self, pick: int) -> None:
            run_id = self.m.runs[pick % len(self.m.runs)]
            key = self._new_key()
            self.m.resumed.add(run_id)
            self._lifecycle(rt.lifecycle.resume(run_id, idempotency_key=key), request=("resume", run_id, key))

        @rule(pick=st.integers(0, 50))
        def retry(self, pick: int) -> None:
            run_id = self.m.runs[pick % len(self.m.runs)]
            key = f"retry-{run_id}"
            retried = self._lifecycle(
                rt.lifecycle.retry(run_id, idempotency_key=key), request=("retry", run_id, key)
            )
            if retried is not None and retried["id"] not in self.m.runs:
                self.m.runs.append(retried["id"])

        @rule()
        def duplicate_request(self) -> None:
            """The same request again, with its Idempotency-Key (a client retry): it must change nothing.

            Whatever happened to the run since (it may have failed again after a resume), the
            same key is the same request: without a key it would be a new one, which may apply.
            Only accepted requests are repeated: a refused one (a resume of a running run) left
            no trace, and the same key later is a first attempt that may apply.
            """
            if self.m.last_request is None:
                return
            kind, target, key = self.m.last_request
            before = run(
                db.read(lambda conn: conn.execute(select(runs.c.id, runs.c.status, runs.c.last_seq)).all())
            )
            if kind == "cancel":
                self._lifecycle(rt.lifecycle.cancel(target, reason="r16", idempotency_key=key))
            elif kind == "answer":
                self._lifecycle(rt.lifecycle.answer(target, {"ok": True}, idempotency_key=key))
            elif kind == "resume":
                self.m.resumed.add(target)
                self._lifecycle(rt.lifecycle.resume(target, idempotency_key=key))
            else:
                self._lifecycle(rt.lifecycle.retry(target, idempotency_key=key))
            after = run(
                db.read(lambda conn: conn.execute(select(runs.c.id, runs.c.status, runs.c.last_seq)).all())
            )
            if sorted(before) != sorted(after):
                self.m.violations.append(f"a repeated {kind} of {target} changed runs: {before} -> {after}")

        def _new_key(self) -> str:
            return f"r16-{random.random()}"

        def _lifecycle(self, coro: Any, request: tuple[str, Any, str] | None = None) -> Any:
            try:
                result = run(coro)
            except UsageError:  # an illegal transition or a repeated answer: refused, as it should be
                return None
            finally:
                self._resync()
            if request is not None:
                self.m.last_request = request
            return result

        def _resync(self) -> None:
            """A run-level change (cancel, a run that ends, resume) may end other steps' attempts.

            The model does not predict those; it takes them from the store, which must have left
            such a step not running (a lease is only ever replaced by a claim, which the model sees).
            A step ended that way may keep its token: every fenced write also checks that the step
            runs, so its lease is dead all the same.
            """
            ids = [h.claim.step_id for h in self.m.held]
            if not ids:
                return
            rows = run(db.read(lambda conn: list(conn.execute(select(steps).where(steps.c.id.in_(ids))))))
            for row in rows:
                expected = self.m.current.get(row.id)
                if expected is not None and (row.lease_token != expected or row.status != "running"):
                    if row.status == "running":
                        self.m.violations.append(f"{row.key} runs under a lease the model never saw")
                    self.m.current[row.id] = None

        # --- worker rules ------------------------------------------------------------------------

        @rule(w=st.integers(0, 2), pick=st.integers(0, 50))
        def claim(self, w: int, pick: int) -> None:
            worker = self.workers[w]
            # Only this example's runs: earlier examples' rows stay in the database.
            run_id = self.m.runs[pick % len(self.m.runs)]
            rows = run(db.write(step_results.claim_with_events, worker, LEASE_S, 1, None, run_id))
            for row in rows:
                status = run(db.read(_run_state, row.run_id))
                if status.status in TERMINAL or status.cancel_requested_at is not None:
                    self.m.violations.append(f"claimed {row.key} of run {row.run_id} which is {status}")
                claim = step_results.claim_of(row)
                self.m.held.append(Held(claim, worker))
                self.m.current[row.id] = row.lease_token
                self.m.expires[row.id] = clock.now + LEASE_S

        @rule(w=st.integers(0, 2))
        def heartbeat(self, w: int) -> None:
            worker = self.workers[w]
            mine = [h for h in self.m.held if h.worker == worker]
            kept = run(db.write(step_store.extend_leases, worker, [h.claim.token for h in mine], LEASE_S))
            kept_tokens = {row.lease_token for row in kept}
            for h in mine:
                expected = self._live(h)
                if (h.claim.token in kept_tokens) != expected:
                    self.m.violations.append(
                        f"heartbeat of {h.claim.key}: store kept={not expected}, model={expected}"
                    )
                if h.claim.token in kept_tokens:
                    self.m.expires[h.claim.step_id] = clock.now + LEASE_S

        @rule(pick=st.integers(0, 50))
        def emit(self, pick: int) -> None:
            if not self.m.held:
                return
            h = self.m.held[pick % len(self.m.held)]
            draft = EventDraft("log", {"n": pick}, step_key=h.claim.key, attempt=h.claim.attempt)
            accepted = run(db.write(step_results.append_step_events, h.claim, [draft]))
            self._check_fence("event", h, accepted)

        @rule(pick=st.integers(0, 50))
        def complete(self, pick: int) -> None:
            if not self.m.held:
                return
            h = self.m.held.pop(pick % len(self.m.held))
            produced = step_results.Produced(output={"key": h.claim.key})
            expected = self._live(h)
            accepted = run(db.write(step_results._record_success, h.claim, produced, flows))
            self._check_fence("completion", h, accepted, expected)
            self.m.current[h.claim.step_id] = None
            self._resync()

        @rule(pick=st.integers(0, 50), retryable=st.booleans())
        def fail(self, pick: int, retryable: bool) -> None:
            if not self.m.held:
                return
            h = self.m.held.pop(pick % len(self.m.held))
            expected = self._live(h)
            accepted = run(db.write(step_results.record_failure, h.claim, "r16 failure", retryable, flows))
            self._check_fence("failure", h, accepted, expected)
            self.m.current[h.claim.step_id] = None
            self._resync()

        @rule(w=st.integers(0, 2))
        def crash_worker(self, w: int) -> None:
            """The worker dies: it forgets its claims; their leases stay until the reaper takes them."""
            worker = self.workers[w]
            self.m.held = [h for h in self.m.held if h.worker != worker]
            self.workers[w] = new_worker_id()

        @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 4.0]))
        def advance_clock_and_reap(self, seconds: float) -> None:
            clock.now += seconds
            run(db.write(step_results.reap, flows))
            for step_id, expiry in self.m.expires.items():
                if self.m.current.get(step_id) is not None and expiry < clock.now:
                    self.m.current[step_id] = None
            self._resync()  # a reaped step that used up its attempts may end the run

        def _live(self, h: Held) -> bool:
            return self.m.current.get(h.claim.step_id) == h.claim.token

        def _check_fence(self, what: str, h: Held, accepted: Any, expected: bool | None = None) -> None:
            expected = self._live(h) if expected is None else expected
            if bool(accepted) != expected:
                self.m.violations.append(
                    f"{what} of {h.claim.key} attempt {h.claim.attempt}: store accepted={bool(accepted)}, "
                    f"model expected {expected}"
                )

        # --- invariants ----------------------------------------------------------------------------

        @invariant()
        def invariants_hold(self) -> None:
            if not self.m.runs:
                return
            ids = list(self.m.runs)

            def snapshot(conn: Any) -> tuple[list[Any], list[Any], list[Any]]:
                run_rows = list(conn.execute(select(runs).where(runs.c.id.in_(ids))))
                step_rows = list(conn.execute(select(steps).where(steps.c.run_id.in_(ids))))
                event_rows = list(
                    conn.execute(
                        select(events.c.run_id, events.c.seq, events.c.type)
                        .where(events.c.run_id.in_(ids))
                        .order_by(events.c.run_id, events.c.seq)
                    )
                )
                return run_rows, step_rows, event_rows

            run_rows, step_rows, event_rows = run(db.read(snapshot))
            m = self.m
            for r in run_rows:
                before = m.run_status.get(r.id)
                resumed = before == "failed" and r.id in m.resumed and r.status in ("queued", "running")
                if before in TERMINAL and r.status != before and not resumed:
                    m.violations.append(f"terminal run {r.id} moved {before} -> {r.status}")
                m.run_status[r.id] = r.status
                if r.last_seq < m.last_seq.get(r.id, 0):
                    m.violations.append(f"run {r.id} last_seq went back")
                m.last_seq[r.id] = r.last_seq
            for s in step_rows:
                before_status = m.step_status.get(s.id)
                if before_status == "succeeded" and s.status != "succeeded":
                    m.violations.append(f"completed step {s.key} of {s.run_id} reverted to {s.status}")
                m.step_status[s.id] = s.status
                if s.attempt < m.step_attempt.get(s.id, 0):
                    m.violations.append(f"attempt of {s.key} of {s.run_id} went down")
                m.step_attempt[s.id] = s.attempt
                # A lease is live while its step is running: every fenced write checks both. (A step
                # that a run's end cancelled keeps its last token, which no write accepts any more.)
                live = [
                    h
                    for h in m.held
                    if h.claim.step_id == s.id and s.status == "running" and h.claim.token == s.lease_token
                ]
                if len(live) > 1:
                    m.violations.append(f"{len(live)} live leases on {s.key} of {s.run_id}")
                modelled = [h for h in m.held if h.claim.step_id == s.id and self._live(h)]
                if len(modelled) > 1:
                    m.violations.append(f"the model holds {len(modelled)} live leases on {s.key}")
            by_run: dict[str, list[Any]] = {}
            for e in event_rows:
                by_run.setdefault(e.run_id, []).append(e)
            for run_id, evs in by_run.items():
                seqs = [e.seq for e in evs]
                if seqs != list(range(1, len(seqs) + 1)) or seqs[-1] != m.last_seq.get(run_id):
                    m.violations.append(f"run {run_id} events are not dense 1..last_seq: {seqs}")
                cancel_at = next((e.seq for e in evs if e.type == "run.cancel_requested"), None)
                if cancel_at is not None and any(e.type == "step.started" and e.seq > cancel_at for e in evs):
                    m.violations.append(f"run {run_id} gained a claim after its cancel")
            m.resumed.clear()
            assert m.violations == [], m.violations

    return R16


def test_r16_state_machine_invariants(database_url: str, fake_clock: FakeClock) -> None:
    seed = int(os.environ.get("BATON_RELIABILITY_SEED") or random.randrange(1, 2**31))
    print(f"R16 seed={seed}")
    random.seed(seed)
    loop = asyncio.new_event_loop()
    opened = open_runtime(database_url, catalog=CATALOG, upgrade=False)
    rt = loop.run_until_complete(opened.__aenter__())
    examples = size(100, 500)
    started = time.monotonic()
    try:
        machine = machine_for(rt, loop, fake_clock, size(20, 50))
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=size(20, 50),
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                # Shrinking replays against a real database are slow; BATON_R16_SHRINK=1 turns them on.
                phases=[Phase.explicit, Phase.reuse, Phase.generate]
                + ([Phase.shrink] if os.environ.get("BATON_R16_SHRINK") == "1" else []),
            ),
        )
    finally:
        loop.run_until_complete(opened.__aexit__(None, None, None))
        loop.close()
    print(f"R16 {examples} examples x {size(20, 50)} steps in {time.monotonic() - started:.1f}s")
