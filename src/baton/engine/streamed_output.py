"""Writes what a worker's running steps stream (logs, deltas): every step's in one transaction per flush.

Fifty steps that each wrote their own output every 75 ms made 650 transactions a second on
PostgreSQL, each of seven round trips; most of a worker's time and of the database's went there,
and every event waited behind the others' round trips (bench/stream.py, issue 7). Here one
flush locks the runs, checks every lease and appends every step's events in a few statements
(`step_results.append_steps_events`), however many steps stream.

A step's end waits for the flush that holds its last output (`release`), so its final events
still come after everything it streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from baton.domain.events import EventDraft
from baton.engine import step_results
from baton.engine.step_results import Claim
from baton.store.database import Database

#: How often streamed output is written as events (the coalescing window).
FLUSH_S = 0.075


class Streaming(Protocol):
    """A running step whose output is written here."""

    claim: Claim

    def take_output(self) -> list[EventDraft]:
        """What the step streamed since the last call, ready to append (redacted)."""

    def lose_lease(self) -> None:
        """The step's lease is gone: stop it, writing nothing more."""


class StreamedOutput:
    """One writer for the output of the steps that stream; its loop runs while any does.

    A PostgreSQL worker shares one among all its steps. On SQLite each step has its own (a batch
    of one): there a transaction costs no round trip and concurrent ones are group-committed
    anyway, while one flush for every step at the same instant made each event wait for all
    the others' (500 streams: p50 6.5 → 25 ms, bench/stream.py).
    """

    def __init__(self, db: Database, interval: float = FLUSH_S) -> None:
        self.db = db
        self.interval = interval
        self._steps: dict[str, Streaming] = {}
        #: a step whose output could not be written: its error, raised to it by `release`
        self._errors: dict[str, BaseException] = {}
        self._writing: set[str] = set()
        self._write: asyncio.Future[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    def follow(self, step: Streaming) -> None:
        """Write this step's output from now on (on the event loop's thread)."""
        self._steps[step.claim.token] = step
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(
                self._flush_forever(), name="baton-output"
            )

    async def release(self, step: Streaming) -> None:
        """Stop writing the step's output, once a flush holding some of it has committed.

        Raises the error of a flush that could not write this step's output.
        """
        token = step.claim.token
        self._steps.pop(token, None)
        if self._write is not None and token in self._writing:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._write)
        error = self._errors.pop(token, None)
        if error is not None:
            raise error

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    async def _flush_forever(self) -> None:
        # Ends once no step streams; `follow` starts it again.
        while self._steps:
            await asyncio.sleep(self.interval)
            batch = [(step, drafts) for step in list(self._steps.values()) if (drafts := step.take_output())]
            if not batch:
                continue
            self._writing = {step.claim.token for step, _ in batch}
            # Shielded: the write commits (or fails) whole even when this loop is cancelled.
            self._write = asyncio.ensure_future(self._write_batch(batch))
            try:
                await asyncio.shield(self._write)
            finally:
                self._write, self._writing = None, set()

    async def _write_batch(self, batch: list[tuple[Streaming, list[EventDraft]]]) -> None:
        try:
            lost = await self.db.write(
                step_results.append_steps_events, [(step.claim, drafts) for step, drafts in batch]
            )
        except Exception:
            # One step's output may be what the database refused: each is written alone, and
            # only a step whose own write fails gets the error.
            lost = []
            for step, drafts in batch:
                try:
                    lost += await self.db.write(step_results.append_steps_events, [(step.claim, drafts)])
                except Exception as error:
                    self._errors[step.claim.token] = error
                    self._steps.pop(step.claim.token, None)
        gone = {claim.token for claim in lost}
        for step, _ in batch:
            if step.claim.token in gone:
                self._steps.pop(step.claim.token, None)
                step.lose_lease()
