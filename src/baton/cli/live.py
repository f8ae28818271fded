"""Following a run in the terminal: a live table of its steps, built from the run's events.

On a terminal the view is a Rich Live table (one row per step: status, elapsed time, the last line
of its streamed output); when stdout is not a terminal it prints one line per change instead, so
logs and tests read well. The same loop can run an in-process worker (`baton run`) or only watch
a run that another process executes (`baton runs watch`).

The loop reads a `Feed`: events of one shape (`LiveEvent`) and run snapshots, from the database
(`DatabaseFeed`) or from a Baton server's SSE stream (`baton.cli.backend.HttpFeed`), so the view is
the same in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from baton.cli.common import (
    STATUS_STYLE,
    Target,
    console,
    duration,
    example_answer,
    last_line,
    run_duration,
    shorten,
    styled_status,
)
from baton.domain.errors import BatonError, RuntimeFailure

if TYPE_CHECKING:
    from baton.engine.worker import WorkerSettings
    from baton.runtime import Runtime

TERMINAL = ("succeeded", "failed", "cancelled")
_TAIL_CHARS = 2000


class Detached(Exception):
    """The user stopped following (Ctrl-C / SIGTERM); the run itself goes on."""


@dataclass(frozen=True)
class LiveEvent:
    """One event of a run, as the live view and `baton runs events` see it, whatever its source."""

    seq: int
    type: str
    step_key: str | None
    attempt: int | None
    payload: Mapping[str, Any]
    created_at: float

    @classmethod
    def from_row(cls, row: Any) -> LiveEvent:
        """From an events table row."""
        return cls(
            seq=int(row.seq),
            type=str(row.type),
            step_key=row.step_key,
            attempt=row.attempt,
            payload=dict(row.payload or {}),
            created_at=float(row.created_at),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "step_key": self.step_key,
            "attempt": self.attempt,
            "payload": dict(self.payload),
            "created_at": self.created_at,
        }


class Feed(Protocol):
    """Where a live view reads one run from: its snapshots and its events in `seq` order."""

    run_id: str
    #: said when the user stops following: where the run goes on
    goes_on: str

    async def snapshot(self) -> tuple[dict[str, Any], int]:
        """The run now (CLI snapshot shape) and the seq of its last event at that moment."""
        ...

    async def wait(self, after: int, timeout: float) -> list[LiveEvent]:
        """Events after `after`, waiting up to `timeout` for the first one."""
        ...

    @property
    def ended(self) -> bool:
        """No more events will come (the source said so)."""
        ...

    async def final(self) -> dict[str, Any]:
        """The run's snapshot once following is over."""
        ...


class DatabaseFeed:
    """A run read straight from the database (local mode): commits in other processes wake it."""

    goes_on = "the run goes on wherever a worker runs (`baton worker`)"

    def __init__(self, rt: Runtime, run_id: str) -> None:
        self.rt = rt
        self.run_id = run_id

    async def snapshot(self) -> tuple[dict[str, Any], int]:
        run = await self.rt.lifecycle.get_run(self.run_id)
        return run, int(run.get("last_seq") or 0)

    async def wait(self, after: int, timeout: float) -> list[LiveEvent]:
        from baton.engine.follow import wait_for_events

        rows = await wait_for_events(self.rt.db, self.run_id, after, timeout=timeout)
        return [LiveEvent.from_row(row) for row in rows]

    @property
    def ended(self) -> bool:
        return False

    async def final(self) -> dict[str, Any]:
        return await self.rt.lifecycle.get_run(self.run_id)


@dataclass
class StepState:
    key: str
    kind: str = "?"
    needs: tuple[str, ...] = ()
    status: str = "pending"
    attempt: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    tail: str = ""
    error: str | None = None

    @property
    def elapsed(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(end - self.started_at, 0.0)

    @property
    def line(self) -> str:
        if self.status == "failed" and self.error:
            return self.error
        return last_line(self.tail) or (self.error or "")


@dataclass
class RunState:
    """What a viewer knows about a run: its snapshot, moved on by each event."""

    id: str
    flow: str
    title: str
    status: str
    reason: str
    created_at: float | None
    started_at: float | None
    finished_at: float | None
    steps: dict[str, StepState] = field(default_factory=dict)

    @classmethod
    def from_snapshot(cls, run: Mapping[str, Any]) -> RunState:
        state = cls(
            id=run["id"],
            flow=run["flow"],
            title=run.get("title") or "",
            status=run["status"],
            reason=run.get("status_reason") or "",
            created_at=run.get("created_at"),
            started_at=run.get("started_at"),
            finished_at=run.get("finished_at"),
        )
        for step in run.get("steps") or []:
            state.steps[step["key"]] = StepState(
                key=step["key"],
                kind=step.get("kind") or "?",
                needs=tuple(step.get("needs") or ()),
            )
        return state

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def step(self, key: str) -> StepState:
        if key not in self.steps:  # added by an expand hook while the run goes
            self.steps[key] = StepState(key=key)
        return self.steps[key]

    def apply(self, event: LiveEvent) -> list[str]:
        """Move on by one event; returns notices (Rich markup) worth printing for a person."""
        kind: str = event.type
        payload: Mapping[str, Any] = event.payload or {}
        at: float = event.created_at
        notices: list[str] = []
        if kind.startswith("run."):
            notices += self._apply_run(kind, payload, at)
        elif event.step_key:
            notices += self._apply_step(kind, self.step(event.step_key), event, payload, at)
        return notices

    def _apply_run(self, kind: str, payload: Mapping[str, Any], at: float) -> list[str]:
        reason = str(payload.get("reason") or "")
        if kind == "run.confirmed":
            self.status, self.reason = "queued", "queued"
            who = payload.get("by")
            return [f"confirmed{f' by {escape(str(who))}' if who else ''}"]
        if kind == "run.queued":
            self.status, self.reason = "queued", reason
            return [f"[yellow]queued:[/] {escape(reason)}"] if reason else []
        if kind == "run.started":
            self.status, self.reason = "running", "running"
            self.started_at = self.started_at or at
        elif kind == "run.waiting":
            self.status, self.reason = "waiting_for_input", reason
        elif kind == "run.resumed":
            self.status, self.reason = "running", "running"
            self.finished_at = None
        elif kind == "run.cancel_requested":
            self.reason = reason or "cancel requested"
            return [f"[bright_black]cancel requested[/]{': ' + escape(reason) if reason else ''}"]
        elif kind in ("run.succeeded", "run.failed", "run.cancelled"):
            self.status = kind.partition(".")[2]
            self.reason = reason or self.status
            self.finished_at = at
        return []

    def _apply_step(
        self, kind: str, step: StepState, event: LiveEvent, payload: Mapping[str, Any], at: float
    ) -> list[str]:
        if kind == "step.queued":
            step.status = "queued"
        elif kind == "step.started":
            step.status, step.started_at, step.finished_at = "running", at, None
            step.attempt = event.attempt or step.attempt
            step.error = None
        elif kind == "step.delta":
            step.tail = (step.tail + str(payload.get("text") or ""))[-_TAIL_CHARS:]
        elif kind == "step.succeeded":
            step.status, step.finished_at = "succeeded", at
            step.started_at = step.started_at or at
        elif kind == "step.failed":
            step.status, step.finished_at = "failed", at
            step.error = str(payload.get("error") or "")
            return [f"[red]step {escape(step.key)} failed:[/] {escape(shorten(step.error, 300))}"]
        elif kind == "step.retrying":
            step.status = "retrying"
            step.error = str(payload.get("error") or "")
            delay = payload.get("delay_s")
            when = f" in {float(delay):.1f}s" if isinstance(delay, int | float) else ""
            return [
                f"[yellow]step {escape(step.key)} attempt {step.attempt} failed[/] "
                f"({escape(shorten(step.error, 200))}); retrying{when}"
            ]
        elif kind == "step.cancelled":
            step.status = "cancelled"
            step.finished_at = step.finished_at or at
        elif kind == "step.lease_expired":
            step.status = "queued"
            return [f"[yellow]step {escape(step.key)}: its worker was lost; it will run again[/]"]
        elif kind == "input.requested":
            step.status, step.started_at = "waiting", step.started_at or at
        elif kind == "input.answered":
            step.status = "succeeded"
        return []

    # --- rendering ---------------------------------------------------------------------------

    def header(self) -> Text:
        text = Text.from_markup(
            f"[bold]{escape(self.title or self.flow)}[/]  [dim]{escape(self.id)} · {escape(self.flow)}[/]  "
            f"{styled_status(self.status)}"
        )
        if self.reason and self.reason != self.status:
            text.append(f" ({self.reason})", style="dim")
        elapsed = run_duration(
            {"created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at}
        )
        text.append(f"  {duration(elapsed)}", style="dim")
        return text

    def render(self) -> RenderableType:
        table = Table(box=None, pad_edge=False, show_header=True, header_style="dim", expand=True)
        table.add_column("", no_wrap=True)
        table.add_column("step", no_wrap=True, style="bold")
        table.add_column("kind", no_wrap=True, style="dim")
        table.add_column("status", no_wrap=True)
        table.add_column("time", no_wrap=True, justify="right")
        table.add_column("output", no_wrap=True, overflow="ellipsis", ratio=1)
        for step in self.steps.values():
            style = STATUS_STYLE.get(step.status, "white")
            attempt = f" #{step.attempt}" if step.attempt > 1 else ""
            table.add_row(
                f"[{style}]●[/]",
                escape(step.key),
                escape(step.kind),
                f"[{style}]{escape(step.status)}{attempt}[/]",
                duration(step.elapsed) if step.elapsed is not None else "",
                Text(shorten(step.line, 300), style="red" if step.status == "failed" else "dim"),
            )
        return Group(self.header(), table)


# --- displays ---------------------------------------------------------------------------------


class LiveDisplay:
    """A Rich Live table, refreshed several times a second; notices print above it."""

    def __init__(self, state: RunState) -> None:
        from rich.live import Live

        self.state = state
        self.live = Live(console=console, get_renderable=state.render, refresh_per_second=8, transient=False)

    def __enter__(self) -> LiveDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def notice(self, markup: str) -> None:
        self.live.console.print(markup, soft_wrap=True)

    def changed(self, before: dict[str, str]) -> None:
        return None  # the Live refreshes itself several times a second


class PlainDisplay:
    """One line per change, for logs and pipes."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.run_status = state.status

    def __enter__(self) -> PlainDisplay:
        state = self.state
        reason = f" ({escape(state.reason)})" if state.reason and state.reason != state.status else ""
        console.print(
            f"run {escape(state.id)} ({escape(state.flow)}) {styled_status(state.status)}{reason}",
            soft_wrap=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def notice(self, markup: str) -> None:
        console.print(markup, soft_wrap=True)

    def changed(self, before: dict[str, str]) -> None:
        state = self.state
        for key, step in state.steps.items():
            if before.get(key) == step.status:
                continue
            extra = ""
            if step.status in ("succeeded", "failed", "cancelled") and step.elapsed is not None:
                extra = f" {duration(step.elapsed)}"
            line = shorten(step.line, 100) if step.status in ("succeeded", "failed") else ""
            tail = f"  [dim]{escape(line)}[/]" if line else ""
            console.print(f"  {styled_status(step.status)} {escape(key)}{extra}{tail}", soft_wrap=True)
        if state.status != self.run_status:
            self.run_status = state.status
            reason = f" ({escape(state.reason)})" if state.reason and state.reason != state.status else ""
            console.print(f"run {escape(state.id)} {styled_status(state.status)}{reason}", soft_wrap=True)


def _statuses(state: RunState) -> dict[str, str]:
    return {k: s.status for k, s in state.steps.items()}


# --- the follow loop --------------------------------------------------------------------------


def answer_hint(target: Target, request: Mapping[str, Any]) -> str:
    value, pairs = example_answer(request.get("schema"))
    command = target.command("inputs", "answer", str(request["id"]))
    prompt = escape(str(request.get("prompt") or ""))
    hint = (
        f"[magenta]run waits for input[/] on step [bold]{escape(str(request.get('step_key')))}[/]: {prompt}\n"
    )
    hint += f"  answer it: [bold]{escape(command)} --value '{escape(value)}'[/]"
    if pairs:
        hint += f"\n        or: [bold]{escape(command)} {escape(' '.join('--set ' + p for p in pairs))}[/]"
    return hint


class InProcessWorker:
    """A worker in this process (local `baton run`): started once the run may go, stopped at its end."""

    def __init__(self, rt: Runtime, settings: WorkerSettings) -> None:
        self.rt = rt
        self.settings = settings
        self.worker: Any = None
        self.task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self.task is not None

    def start(self) -> None:
        self.worker = self.rt.worker(self.settings)
        self.task = asyncio.create_task(self.worker.run(until_idle=False), name="baton-cli-worker")

    def check(self) -> None:
        """Raise what stopped the worker, if it stopped by itself."""
        task = self.task
        if task is None or not task.done():
            return
        error = None if task.cancelled() else task.exception()
        if isinstance(error, BatonError):
            raise error
        raise RuntimeFailure(f"the in-process worker stopped unexpectedly: {error!r}")

    def stopping_note(self) -> str | None:
        if self.worker is None or not self.worker.in_flight:
            return None
        busy, grace = len(self.worker.in_flight), self.settings.drain_s
        return f"[yellow]stopping the worker here: {busy} step(s) in flight get up to {grace:g}s to finish[/]"

    async def stop(self) -> None:
        if self.task is None:
            return
        task, self.task = self.task, None
        self.worker.stop()
        self.rt.db.topics.notify([f"worker:{self.worker.id}"])  # wake its claim loop now, not after a poll
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def follow(
    feed: Feed,
    target: Target,
    *,
    worker: InProcessWorker | None = None,
    poll_s: float = 0.25,
) -> dict[str, Any]:
    """Show the run until it ends and return its final snapshot.

    With a `worker`, steps are executed here meanwhile (started once the run is confirmed, stopped
    when it ends). Raises Detached when the user stops following.
    """
    from baton.engine.signals import on_stop

    snapshot, replay_until = await feed.snapshot()
    state = RunState.from_snapshot(snapshot)
    display: LiveDisplay | PlainDisplay = LiveDisplay(state) if console.is_terminal else PlainDisplay(state)
    stop = asyncio.Event()
    seq = 0
    try:
        with on_stop(stop), display:
            for request in snapshot.get("pending_inputs") or []:
                display.notice(answer_hint(target, request))
            while True:
                if worker is not None:
                    if not worker.started and state.status not in ("needs_confirmation", *TERMINAL):
                        worker.start()
                    worker.check()
                if stop.is_set():
                    note = worker.stopping_note() if worker is not None else None
                    if note:
                        display.notice(note)
                    raise Detached()
                events = await feed.wait(seq, timeout=poll_s)
                before = _statuses(state)
                for event in events:
                    if event.seq <= seq:
                        continue  # already seen (a resumed stream never repeats, but be sure)
                    seq = event.seq
                    notices = state.apply(event)
                    if event.seq <= replay_until:
                        continue  # history: only what still matters is shown (pending inputs above)
                    display.changed(before)
                    before = _statuses(state)
                    for notice in notices:
                        display.notice(notice)
                    if event.type == "input.requested":
                        payload = dict(event.payload or {})
                        request = {
                            "id": payload.get("request_id"),
                            "step_key": event.step_key,
                            "prompt": payload.get("prompt"),
                            "schema": payload.get("schema"),
                        }
                        display.notice(answer_hint(target, request))
                display.changed(before)
                if state.terminal or feed.ended:
                    break
            if worker is not None:
                await worker.stop()
    finally:
        if worker is not None:
            with contextlib.suppress(BaseException):
                await worker.stop()
    return await feed.final()


def print_summary(run: Mapping[str, Any], target: Target, *, report_lines: int = 12) -> None:
    """Status, reason, duration, the report's first lines and the run id."""
    status = str(run["status"])
    reason = str(run.get("status_reason") or "")
    console.print()
    line = f"{styled_status(status)}  [bold]{escape(str(run['id']))}[/]  [dim]{escape(str(run['flow']))}[/]"
    console.print(line, soft_wrap=True)
    if reason and reason != status:
        console.print(f"  reason:   {escape(reason)}", soft_wrap=True)
    console.print(f"  duration: {duration(run_duration(run))}")
    failed = [s for s in run.get("steps") or [] if s.get("status") == "failed"]
    for step in failed:
        console.print(
            f"  [red]{escape(step['key'])}[/]: {escape(shorten(step.get('error'), 300))}", soft_wrap=True
        )
    report = str(run.get("report") or "")
    if report.strip():
        lines = report.strip().splitlines()
        console.print("  report:")
        for text in lines[:report_lines]:
            console.print(f"    [dim]{escape(text)}[/]", soft_wrap=True)
        if len(lines) > report_lines:
            more = len(lines) - report_lines
            console.print(
                f"    [dim]… {more} more lines: {escape(target.command('runs', 'show', str(run['id'])))}[/]",
                soft_wrap=True,
            )
