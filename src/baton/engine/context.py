"""The StepContext a running step sees: inputs, upstream outputs, streaming, artifacts, cancellation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from baton.agents.processes import CommandResult, run_command
from baton.domain.events import EventDraft
from baton.engine.step_results import ArtifactDraft, Claim

#: A delta event carries at most this much text; longer bursts become several events.
DELTA_CHUNK_CHARS = 16 * 1024


class RunningStep:
    """One step attempt's context. Safe to call from a step running in a worker thread."""

    def __init__(self, claim: Claim, inputs: Mapping[str, Any], upstream: Mapping[str, Any]) -> None:
        self.claim = claim
        self.run_id = claim.run_id
        self.step_key = claim.key
        self.attempt = claim.attempt
        self.inputs = inputs
        self.upstream = upstream
        self.artifacts: list[ArtifactDraft] = []
        self.cancel_reason: str | None = None
        self._lock = threading.Lock()
        self._pending_text: list[str] = []
        self._pending_events: list[EventDraft] = []
        #: called once, on the first thing emitted: the worker starts writing deltas only then
        self.on_first_output: Callable[[], None] | None = None

    # --- StepContext -------------------------------------------------------------------------

    def emit(self, text: str) -> None:
        if text:
            with self._lock:
                self._pending_text.append(text)
            self._started_output()

    def _started_output(self) -> None:
        callback, self.on_first_output = self.on_first_output, None
        if callback is not None:
            callback()

    def log(self, message: str) -> None:
        with self._lock:
            self._flush_text_locked()
            self._pending_events.append(
                EventDraft("log", {"message": message[:4000]}, step_key=self.step_key, attempt=self.attempt)
            )
        self._started_output()

    def artifact(self, name: str, content: bytes | str, media_type: str = "text/plain") -> None:
        data = content.encode() if isinstance(content, str) else bytes(content)
        with self._lock:
            self.artifacts.append(ArtifactDraft(name, data, media_type))

    @property
    def cancelled(self) -> bool:
        return self.cancel_reason is not None

    async def run_command(
        self, args: Sequence[str], *, cwd: str | None = None, grace_s: float = 5.0
    ) -> CommandResult:
        """Run a subprocess whose stdout streams as deltas; cancelling the step stops its group."""
        return await run_command(args, on_line=self.emit, cwd=cwd, grace_s=grace_s)

    # --- for the worker ------------------------------------------------------------------------

    def drain(self) -> list[EventDraft]:
        """Take what was emitted since the last drain, as coalesced events."""
        with self._lock:
            self._flush_text_locked()
            drafts, self._pending_events = self._pending_events, []
        return drafts

    def _flush_text_locked(self) -> None:
        if not self._pending_text:
            return
        text = "".join(self._pending_text)
        self._pending_text = []
        for start in range(0, len(text), DELTA_CHUNK_CHARS):
            self._pending_events.append(
                EventDraft(
                    "step.delta",
                    {"text": text[start : start + DELTA_CHUNK_CHARS]},
                    step_key=self.step_key,
                    attempt=self.attempt,
                )
            )
