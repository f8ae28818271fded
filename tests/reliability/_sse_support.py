"""R11/R12 helpers: the flows `baton serve` loads for them, tokens in bulk, and a resuming SSE client.

The client reads raw bytes and parses frames itself, so that it can drop its connection at an
arbitrary byte (mid-frame) and check that keep-alives are comment lines without an `id:`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from baton.domain.errors import StepFailed
from baton.flows.spec import Flow

PATH = Path(__file__).resolve()
TERMINAL_TYPES = ("run.succeeded", "run.failed", "run.cancelled")
#: long enough to see keep-alives from a server run with BATON_SSE_KEEPALIVE_S=1
KEEPALIVE_WAIT_S = 2.5


def reliability_seed(test: str) -> int:
    """BATON_RELIABILITY_SEED, else a random seed; printed so that a failure can be replayed."""
    value = int(os.environ.get("BATON_RELIABILITY_SEED") or random.randrange(1, 2**31))
    print(f"{test} seed={value} (rerun with BATON_RELIABILITY_SEED={value})")
    return value


# --- flows (loaded by `baton serve --flows <this file>`) ------------------------------------------


async def _talk(ctx: Any, side: str) -> int:
    """`count` log lines `interval_s` apart, and a delta after every tenth."""
    count = int(ctx.inputs.get("count", 100))
    interval = float(ctx.inputs.get("interval_s", 0.02))
    for i in range(count):
        ctx.log(f"{side} {i}")
        if i % 10 == 9:
            ctx.emit(f"{side} chunk {i}\n")
        await asyncio.sleep(interval)
    return count


burst = Flow("r11_burst", title="Two steps writing to one run at once")


@burst.step(timeout_s=600)
async def left(ctx: Any) -> int:
    return await _talk(ctx, "left")


@burst.step(timeout_s=600)
async def right(ctx: Any) -> int:
    return await _talk(ctx, "right")


@burst.step(needs=["left", "right"])
def join(ctx: Any) -> str:
    return "joined"


asking = Flow("r11_ask", title="Two talkers and a person's answer, all on one run")


@asking.step(timeout_s=600)
async def talk_left(ctx: Any) -> int:
    return await _talk(ctx, "left")


@asking.step(timeout_s=600)
async def talk_right(ctx: Any) -> int:
    return await _talk(ctx, "right")


asking.input("approve", prompt="Carry on?", schema={"type": "object"})


@asking.step(needs=["talk_left", "talk_right", "approve"])
def finish(ctx: Any) -> str:
    return "approved"


flaky = Flow("r12_flaky", title="Ten progress events, then a failure, three attempts")


@flaky.step(max_attempts=3, timeout_s=600, backoff_s=0.1)
async def work(ctx: Any) -> str:
    for i in range(10):
        ctx.log(f"progress {i}")
        await asyncio.sleep(0.005)
    if ctx.attempt < int(ctx.inputs.get("succeed_on", 99)):
        raise StepFailed(f"attempt {ctx.attempt} fails on purpose", retryable=True)
    return f"ok on attempt {ctx.attempt}"


FLOWS = [burst, asking, flaky]


# --- tokens -----------------------------------------------------------------------------------------


def make_tokens(database_url: str, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """One token per (user, project), made in one database session."""
    from baton.api.bootstrap import create_token_for
    from baton.runtime import open_runtime

    async def body() -> list[str]:
        async with open_runtime(database_url, [], upgrade=None) as rt:
            return [
                await rt.db.write(create_token_for, user, project_id=project, name="r11", role="member")
                for user, project in pairs
            ]

    return asyncio.run(body())


# --- a resuming SSE client ------------------------------------------------------------------------


@dataclass
class Received:
    """One event frame as the client parsed it."""

    seq: int
    type: str
    step_key: str | None
    attempt: int | None


@dataclass
class ClientLog:
    """What one client saw over all its connections."""

    events: list[Received] = field(default_factory=list)
    connections: int = 0
    drops: int = 0
    mid_frame_drops: int = 0
    transport_errors: int = 0
    keepalives: int = 0
    closed_by_server_after_terminal: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def last_id(self) -> str | None:
        return str(self.events[-1].seq) if self.events else None


def split_frames(buffer: bytes) -> tuple[list[list[str]], bytes]:
    """Complete SSE frames (as lines) at the front of `buffer`, and the incomplete rest."""
    text = buffer.replace(b"\r\n", b"\n")
    if text.endswith(b"\r"):  # a CRLF cut in half: keep it for the next chunk
        return [], buffer
    blocks = text.split(b"\n\n")
    rest = blocks.pop()
    frames = [block.decode().split("\n") for block in blocks if block]
    return frames, rest


def take_frame(log: ClientLog, lines: list[str]) -> None:
    """Record one complete frame, checking the contract on `id:` lines."""
    ids = [line[3:].strip() for line in lines if line.startswith("id:")]
    if all(line.startswith(":") for line in lines):
        log.keepalives += 1
        return
    if any(line.startswith(":") for line in lines) and ids:
        log.problems.append(f"a comment frame carries an id: {lines}")
    data = "\n".join(line[5:].lstrip() for line in lines if line.startswith("data:"))
    if not ids or not data:
        log.problems.append(f"an event frame without id or data: {lines}")
        return
    body = json.loads(data)
    if str(body["id"]) != ids[0]:
        log.problems.append(f"SSE id {ids[0]} is not the event's seq {body['id']}")
    payload = body.get("payload") or {}
    log.events.append(
        Received(int(ids[0]), str(body["type"]), payload.get("step_key"), payload.get("attempt"))
    )


async def follow_with_drops(
    base_url: str,
    token: str,
    run_id: str,
    rng: random.Random,
    *,
    deadline_s: float,
    drop_range: tuple[float, float] = (0.2, 3.0),
    mid_frame_share: float = 0.4,
) -> ClientLog:
    """Follow a run's stream to its end, dropping the connection every U(drop_range) s.

    Each reconnect sends the last id it fully received; a frame cut mid-way is forgotten.
    """
    log = ClientLog()
    deadline = time.monotonic() + deadline_s
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:
        while time.monotonic() < deadline:
            send = {"Last-Event-ID": log.last_id} if log.last_id is not None else {}
            drop_at = time.monotonic() + rng.uniform(*drop_range)
            mid_frame = rng.random() < mid_frame_share
            ended = False
            try:
                async with client.stream(
                    "GET",
                    f"/v1/runs/{run_id}/stream",
                    headers=send,
                    timeout=httpx.Timeout(5.0, read=20.0),
                ) as resp:
                    log.connections += 1
                    if resp.status_code != 200:
                        await resp.aread()
                        log.problems.append(f"status {resp.status_code}: {resp.text[:200]}")
                        await asyncio.sleep(0.2)
                        continue
                    buffer = b""
                    dropped = False
                    async for chunk in resp.aiter_raw():
                        if time.monotonic() >= drop_at:
                            if mid_frame and chunk:
                                chunk = chunk[: rng.randrange(len(chunk))]
                                log.mid_frame_drops += 1
                            dropped = True
                        frames, buffer = split_frames(buffer + chunk)
                        for lines in frames:
                            take_frame(log, lines)
                        if dropped:
                            log.drops += 1
                            break
                    else:
                        ended = True
            except httpx.TransportError:
                log.transport_errors += 1
                await asyncio.sleep(0.1)
                continue
            if ended and log.events and log.events[-1].type in TERMINAL_TYPES:
                log.closed_by_server_after_terminal = True
                return log
            if ended:
                await asyncio.sleep(0.05)  # the server went away cleanly mid-run: come back
    log.problems.append(f"did not reach the end within {deadline_s:g} s")
    return log


async def read_whole_stream(
    base_url: str, token: str, run_id: str, *, last_event_id: str | None = None, read_s: float = 20.0
) -> tuple[ClientLog, bool]:
    """One connection, read until the server ends it (True) or `read_s` passes without a byte (False)."""
    log = ClientLog()
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with (
        httpx.AsyncClient(base_url=base_url, headers=headers) as client,
        client.stream("GET", f"/v1/runs/{run_id}/stream", timeout=httpx.Timeout(5.0, read=read_s)) as resp,
    ):
        if resp.status_code != 200:
            await resp.aread()
            log.problems.append(f"status {resp.status_code}")
            return log, True
        buffer = b""
        try:
            async for chunk in resp.aiter_raw():
                frames, buffer = split_frames(buffer + chunk)
                for lines in frames:
                    take_frame(log, lines)
        except httpx.ReadTimeout:
            return log, False
    return log, True


async def hold_stream(
    base_url: str, token: str, run_id: str, last_event_id: str, seconds: float
) -> tuple[ClientLog, int]:
    """Stay on a stream for `seconds` from an id beyond the head; returns what came and the status."""
    log = ClientLog()
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": last_event_id}
    status = 0
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:
        try:
            async with (
                asyncio.timeout(seconds),
                client.stream(
                    "GET", f"/v1/runs/{run_id}/stream", timeout=httpx.Timeout(5.0, read=seconds + 5)
                ) as resp,
            ):
                status = resp.status_code
                buffer = b""
                async for chunk in resp.aiter_raw():
                    frames, buffer = split_frames(buffer + chunk)
                    for lines in frames:
                        take_frame(log, lines)
                log.problems.append("the server ended a stream that had nothing to send")
        except TimeoutError:
            pass  # held for the whole window, as it should be
        except httpx.TransportError as error:
            log.problems.append(f"{type(error).__name__}: {error}")
    return log, status


def table_of(base_url: str, token: str, run_id: str) -> list[dict[str, Any]]:
    """The run's events as the database holds them (GET /v1/runs/{id}/events)."""
    resp = httpx.get(
        f"{base_url}/v1/runs/{run_id}/events",
        params={"limit": 10_000},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    resp.raise_for_status()
    return list(resp.json()["events"])
