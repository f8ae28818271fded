"""Run one step attempt: build its context, call the code or engine, stream, record the result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from sqlalchemy import Connection

from baton import redaction, telemetry
from baton.agents.base import OutputInvalid, PolicyRefused, StepResult
from baton.agents.registry import import_engine_modules
from baton.domain.errors import BatonError, RuntimeFailure, StepFailed
from baton.domain.events import EventDraft
from baton.domain.policy import Policy
from baton.domain.status import StepKind
from baton.engine import metrics, step_results
from baton.engine.agent_step import engine_spec_of, plan_agent_step, policy_of
from baton.engine.context import RunningStep
from baton.engine.step_results import Claim
from baton.engine.streamed_output import StreamedOutput
from baton.failpoints import failpoint
from baton.flows.spec import Flow, accepts_argument
from baton.store import artifacts as artifact_store
from baton.store.database import Database

logger = logging.getLogger(__name__)


def _redacted(drafts: list[EventDraft]) -> list[EventDraft]:
    """The events with every known secret cut out of their payloads."""
    secrets = redaction.known_secrets()
    if not secrets:
        return drafts
    return [dataclasses.replace(d, payload=redaction.redact(d.payload, secrets)) for d in drafts]


class LeaseLostError(Exception):
    """Raised into a step task when the worker learns it no longer holds the lease."""


def load_artifact_outputs(conn: Connection, refs: Mapping[str, str]) -> dict[str, Any]:
    """Large upstream outputs, stored as artifacts, by step key."""
    loaded: dict[str, Any] = {}
    for key, artifact_id in refs.items():
        content = artifact_store.get_artifact_content(conn, artifact_id)
        loaded[key] = json.loads(content) if content is not None else None
    return loaded


def check_output(output: Any, schema: Mapping[str, Any]) -> None:
    """Every engine's structured output meets the agent's schema, or the attempt fails with why.

    The errors go back to the next attempt as feedback (see agent_step), whatever the engine.
    """
    problems = [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(output)'}: {error.message}"
        for error in Draft202012Validator(schema).iter_errors(output)
    ]
    if problems:
        raise OutputInvalid(
            "the output does not match the agent's output schema: " + "; ".join(problems[:20])
        )


class StepExecution:
    """Carries one claimed step from start to its recorded end."""

    def __init__(self, db: Database, flows: Mapping[str, Flow], row: Any, flow: Flow) -> None:
        self.db = db
        self.flows = flows
        self.row = row
        self.flow = flow
        self.claim: Claim = step_results.claim_of(row)
        self.ctx: RunningStep | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None
        self.lost = False
        #: the attempt's end (success, failure or cancellation) has committed: nothing left to stop
        self.recorded = False
        self.policy = Policy()
        #: the attempt's span (a shared no-op unless tracing is on)
        self.trace: telemetry.StepTrace = telemetry.OFF
        #: set by the worker: claim what this step makes ready, and who takes it over
        self.claim_next: Callable[[], step_results.ClaimNext | None] | None = None
        self.handoff: Callable[[list[Any]], None] | None = None
        #: who writes what the step streams while it runs (the worker shares one among its steps)
        self.output = StreamedOutput(db)

    async def run(self) -> None:
        started = time.perf_counter()
        outcome = "failed"
        try:
            with telemetry.step_span(self.row, self.flow.name) as self.trace:
                await self._run()
            outcome = "done"
        finally:
            metrics.STEP_SECONDS.labels(self.row.kind, outcome).observe(time.perf_counter() - started)

    async def _run(self) -> None:
        claim = self.claim
        try:
            context: step_results.StepInputs = self.row.context
            inputs, upstream, policy = context.inputs, dict(context.upstream), context.policy
            if context.refs:
                upstream.update(await self.db.read(load_artifact_outputs, context.refs))
            self.policy = policy_of(policy)
            self.ctx = RunningStep(claim, inputs, upstream)
            self.ctx.cancel_reason = self.cancel_reason
            # Most steps stream nothing: their output is written from the first of it, if any.
            loop = asyncio.get_running_loop()

            def follow_output() -> None:  # called from the step's thread, if it runs in one
                loop.call_soon_threadsafe(self.output.follow, self)

            self.ctx.on_first_output = follow_output
            try:
                timeout = (self.row.spec or {}).get("timeout_s")
                async with asyncio.timeout(timeout):
                    produced = await self._call()
            finally:
                followed = self.ctx.on_first_output is None  # taken: the step emitted something
                self.ctx.on_first_output = None
                if followed:
                    await asyncio.sleep(0)  # let a follow() scheduled from a thread happen first
                await self.output.release(self)
            if not await self._flush():
                return
            # Known secrets (model keys, tokens) never reach the store, whatever the step did with them.
            secrets = redaction.known_secrets()
            produced = step_results.Produced(
                output=redaction.redact(produced.output, secrets),
                artifacts=[
                    step_results.ArtifactDraft(a.name, redaction.redact(a.content, secrets), a.media_type)
                    for a in self.ctx.artifacts
                ],
                usage=produced.usage,
                engine=produced.engine,
            )
            claim_next = self.claim_next() if self.claim_next is not None else None
            # The successors are claimed in the step's own transaction: once it commits they are
            # ours, and must be handed off even if this task is cancelled in the same breath.
            if self.trace is telemetry.OFF:
                # Recorded with the other branches of its run that end meanwhile, in one body.
                success = step_results.Success(claim, produced, self.flows, claim_next)
                write = self.db.write_batched(claim.run_id, step_results.record_successes, success)
            else:  # traced: the span watches this step's own write
                write = self.db.write_for_run(
                    claim.run_id,
                    self.trace.watch(step_results.record_success),
                    claim,
                    produced,
                    self.flows,
                    claim_next,
                )
            await self._shielded_write(write, then=self._hand_off)
        except asyncio.CancelledError:
            if self.lost:
                logger.warning(
                    "Lost the lease of %s; stopped it", claim.key, extra=self._extra("step.lease_lost")
                )
                return
            if self.cancel_reason is not None:
                await self._shielded(step_results.record_cancelled, claim, self.cancel_reason, self.flows)
                return
            raise  # the worker itself is shutting down; the lease expires and the reaper requeues
        except TimeoutError:
            timeout = (self.row.spec or {}).get("timeout_s")
            what = f"timed out after {timeout:g} s" if timeout is not None else "timed out"
            await self._fail(what, retryable=True)
        except PolicyRefused as error:
            denied = EventDraft(
                "policy.denied",
                {"rule": error.rule, "reason": error.message},
                step_key=claim.key,
                attempt=claim.attempt,
            )
            await self._fail(error.message, retryable=False, events=[denied])
        except StepFailed as error:
            await self._fail(error.message, retryable=error.retryable)
        except RuntimeFailure as error:
            # The database or the outside world failed under the step (a dropped connection, a
            # refused write): the next attempt may well succeed, as with any other exception.
            await self._fail(error.message, retryable=True)
        except BatonError as error:
            await self._fail(error.message, retryable=False)
        except Exception as error:
            logger.exception("Step %s raised", claim.key, extra=self._extra("step.failed"))
            await self._fail(f"{type(error).__name__}: {error}", retryable=True)

    async def _call(self) -> step_results.Produced:
        assert self.ctx is not None
        kind = StepKind(self.row.kind)
        spec = self.row.spec or {}
        if kind is StepKind.CODE:
            fn = self.flow.handler_for(str(spec.get("handler") or self.row.key))
            args = (self.ctx,) if accepts_argument(fn) else ()
            if inspect.iscoroutinefunction(fn):
                return step_results.Produced(await fn(*args))
            return step_results.Produced(await asyncio.to_thread(fn, *args))
        if kind is StepKind.AGENT:
            await import_engine_modules(engine_spec_of(self.row))
            plan = plan_agent_step(
                self.row, self.flow, self.ctx.inputs, self.ctx.upstream, self.policy, self.claim.run_id
            )
            if not await self.db.write(step_results.append_step_events, self.claim, _redacted(plan.events)):
                self.lost = True
                raise asyncio.CancelledError  # the lease was lost before the engine started
            with telemetry.model_span(plan.request, self.claim.run_id) as call:
                result: StepResult = await plan.engine.run(plan.request, self.ctx)
                call.done(result)
            failpoint("after_model_response")
            if plan.request.output_schema:
                check_output(result.output, plan.request.output_schema)
            label = (
                result.engine
                if result.model in (None, result.engine)
                else f"{result.engine} ({result.model})"
            )
            return step_results.Produced(result.output, usage=result.usage or None, engine=label)
        raise StepFailed(f"step {self.row.key} of kind {kind} cannot be run by a worker", retryable=False)

    def take_output(self) -> list[EventDraft]:
        """What the step streamed since the last call, secrets cut out (for StreamedOutput)."""
        return _redacted(self.ctx.drain()) if self.ctx is not None else []

    def lose_lease(self) -> None:
        self.cancel(lost=True)

    async def _flush(self) -> bool:
        """Write what the step streamed; False when the lease is gone."""
        drafts = self.take_output()
        if not drafts:
            return True
        return await self.db.write(step_results.append_step_events, self.claim, drafts)

    async def _fail(self, error: str, *, retryable: bool, events: list[EventDraft] | None = None) -> None:
        if self.ctx is not None:
            with contextlib.suppress(Exception):
                await self._flush()
        await self._shielded(
            step_results.record_failure,
            self.claim,
            redaction.redact_text(error),
            retryable,
            self.flows,
            _redacted(events or []),
        )

    async def _shielded(self, fn: Any, *args: Any) -> Any:
        """`fn(conn, *args)` as the final write of the attempt (see `_shielded_write`)."""
        write = self.db.write_for_run(self.claim.run_id, self.trace.watch(fn), *args)
        return await self._shielded_write(write)

    async def _shielded_write(
        self, final_write: Coroutine[Any, Any, Any], then: Callable[[Any], None] | None = None
    ) -> Any:
        """The final write of an attempt survives the worker's own cancellation.

        The task waits for that write to commit even when it is cancelled meanwhile, and only
        then re-raises: the worker counts the step as in flight until its end is recorded. `then`
        gets the committed result before any cancellation is re-raised.
        """
        write = asyncio.ensure_future(final_write)
        interrupted = False
        while not write.done():
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                interrupted = True
        result = write.result()
        self.recorded = True
        if then is not None:
            then(result)
        if interrupted:
            raise asyncio.CancelledError
        return result

    def _hand_off(self, successors: list[Any]) -> None:
        failpoint("after_step_commit")
        if successors and self.handoff is not None:
            self.handoff(successors)

    def cancel(self, *, reason: str | None = None, lost: bool = False) -> None:
        """Called by the worker: the run is being cancelled (`reason`) or the lease is `lost`."""
        # Deliver one cancellation per attempt: the worker asks again on every wake-up, and a
        # second one would interrupt the step's clean-up or the write that records its end.
        # A step whose end has committed has nothing left to stop (a heartbeat that raced with
        # the commit no longer sees its lease), and cancelling it would only skip its hand-off.
        if self.recorded:
            return
        delivered = self.lost or self.cancel_reason is not None
        if lost:
            self.lost = True
        elif reason is not None and self.cancel_reason is None:
            self.cancel_reason = reason
            if self.ctx is not None:
                self.ctx.cancel_reason = reason
        if not delivered and self.task is not None and not self.task.done():
            self.task.cancel()

    def _extra(self, action: str) -> dict[str, Any]:
        return {
            "action": action,
            "run_id": self.claim.run_id,
            "step_key": self.claim.key,
            "attempt": self.claim.attempt,
        }
