"""Flows for the HTTP API, SSE and tenancy tests, loaded by `baton serve --flows <this file>`.

Every flow takes its timing from its inputs, so a test decides how long a run stays running.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from baton.domain.errors import StepFailed
from baton.flows.spec import Flow

PATH = Path(__file__).resolve()

# --- confirm: needs a person's go-ahead; two steps, an artifact ----------------------------------

confirm = Flow(
    "api_confirm",
    title="Two steps behind a confirmation",
    description="Waits for confirmation, then runs `first` and `second`.",
    require_confirmation=True,
)


@confirm.step()
async def first(ctx: Any) -> dict[str, Any]:
    await asyncio.sleep(float(ctx.inputs.get("sleep_s", 0)))
    ctx.log("first step done")
    ctx.artifact("notes.txt", f"notes of {ctx.run_id}\n")
    return {"n": 1}


@confirm.step(needs=["first"])
def second(ctx: Any) -> dict[str, Any]:
    return {"n": ctx.upstream["first"]["n"] + 1}


# --- sleep: one step that runs as long as asked ---------------------------------------------------

sleeper = Flow("api_sleep", title="One step that sleeps")


@sleeper.step(timeout_s=600)
async def nap(ctx: Any) -> str:
    await asyncio.sleep(float(ctx.inputs.get("sleep_s", 30)))
    return "rested"


# --- chatty: many events over a few seconds -------------------------------------------------------

chatty = Flow("api_chatty", title="Many log and delta events")


@chatty.step(timeout_s=600)
async def talk(ctx: Any) -> int:
    """`count` log events (and a delta after every tenth), `interval_s` apart."""
    count = int(ctx.inputs.get("count", 300))
    interval = float(ctx.inputs.get("interval_s", 0.01))
    for i in range(count):
        ctx.log(f"line {i}")
        if i % 10 == 9:
            ctx.emit(f"chunk {i}\n")
        await asyncio.sleep(interval)
    return count


@chatty.step(needs=["talk"])
def done(ctx: Any) -> str:
    return "done"


# --- ask: a human input step ----------------------------------------------------------------------

ask = Flow("api_ask", title="Asks a person")
ask.input(
    "approve",
    prompt="Approve the plan?",
    schema={
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    },
)


@ask.step(needs=["approve"])
def after(ctx: Any) -> Any:
    return ctx.upstream["approve"]


# --- flaky: the first attempt fails for good; a resume succeeds -----------------------------------

flaky = Flow("api_flaky", title="Fails its first attempt")


@flaky.step()
def prepare(ctx: Any) -> str:
    return "prepared"


@flaky.step(needs=["prepare"], max_attempts=1)
def shaky(ctx: Any) -> str:
    if ctx.attempt == 1:
        raise StepFailed("first attempt fails on purpose", retryable=False)
    return f"ok on attempt {ctx.attempt}"


FLOWS = [confirm, sleeper, chatty, ask, flaky]
