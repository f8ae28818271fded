"""Flows for reliability tests R1 and R6-R10, loaded by worker processes and `baton serve` from this path.

Every code step appends `start` and `end` lines to the executions ledger named by the run's `ledger`
input (see `_r_support.record`). Model steps use `openai:fake-model` (OPENAI_BASE_URL points the
worker at the test's fake server, which logs every request with its Idempotency-Key) and the agent
step uses `cli:rfake` / `cli:rtrap` (BATON_CLI_AGENTS, set by the test before workers start).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `tests.` imports in worker processes

from baton.domain.errors import StepFailed
from baton.flows.spec import Flow
from tests.reliability._r_support import record
from tests.reliability.harness import ledgers as hl

PATH = Path(__file__).resolve()
LLM = "openai:fake-model"

# --- R1: six steps of every kind ----------------------------------------------------------------

chain6 = Flow("r_chain6", title="Three model steps, a CLI agent, a DB-local effect and an event burst")
chain6.agent("llm1", engine=LLM, prompt="First model step.", max_attempts=10, backoff_s=0.1)
chain6.agent("agent", engine="cli:rfake", needs=["llm1"], max_attempts=10, backoff_s=0.1)


@chain6.step(needs=["agent"], max_attempts=10, backoff_s=0.1)
def effect(ctx: Any) -> str:
    """The DB-local effect: an artifact, which commits in the step's completion transaction."""
    record(ctx, "start")
    ctx.artifact("effect", f"{ctx.run_id}:{ctx.step_key}")
    record(ctx, "end")
    return "effect"


chain6.agent(
    "llm2", engine=LLM, prompt="Second model step.", needs=["effect"], max_attempts=10, backoff_s=0.1
)


@chain6.step(needs=["llm2"], max_attempts=10, backoff_s=0.1)
async def burst(ctx: Any) -> int:
    """An event burst: 40 log events and streamed text, spread over about 0.2 s."""
    record(ctx, "start")
    for index in range(40):
        ctx.log(f"burst {index}")
        if index % 10 == 9:
            ctx.emit(f"chunk {index}\n")
            await asyncio.sleep(0.05)
    record(ctx, "end")
    return 40


chain6.agent("llm3", engine=LLM, prompt="Third model step.", needs=["burst"], max_attempts=10, backoff_s=0.1)

# --- R6 / R7: short code chains -----------------------------------------------------------------

quick = Flow("r_quick", title="Three short code steps")


@quick.step(max_attempts=10, backoff_s=0.1)
def q1(ctx: Any) -> str:
    record(ctx, "start")
    ctx.artifact("effect", ctx.step_key)
    return "q1"


@quick.step(needs=["q1"], max_attempts=10, backoff_s=0.1)
async def q2(ctx: Any) -> str:
    record(ctx, "start")
    await asyncio.sleep(float(ctx.inputs.get("sleep_s", 0.2)))
    ctx.artifact("effect", ctx.step_key)
    return "q2"


@quick.step(needs=["q2"], max_attempts=10, backoff_s=0.1)
def q3(ctx: Any) -> str:
    record(ctx, "start")
    ctx.artifact("effect", ctx.step_key)
    return "q3"


# --- R8: a long model stream, a CLI agent with SIGTERM-trapping descendants, a long sleep ------

stream = Flow("r_stream", title="One slow model stream")
stream.agent("talk", engine=LLM, prompt="SLOW stream please.", max_attempts=1, timeout_s=600)

trap = Flow("r_trap", title="A CLI agent whose descendants trap SIGTERM")
trap.agent("agent", engine="cli:rtrap", max_attempts=1, timeout_s=600)

# --- R9: pause for a human ----------------------------------------------------------------------

pause = Flow("r_pause", title="A step, a question, a step")


@pause.step(max_attempts=10, backoff_s=0.1)
def pre(ctx: Any) -> str:
    record(ctx, "start")
    ctx.artifact("effect", ctx.step_key)
    return "pre"


pause.input(
    "ask",
    prompt="Which payload?",
    needs=["pre"],
    schema={"type": "object", "properties": {"pick": {"type": "integer"}}, "required": ["pick"]},
)


@pause.step(needs=["ask"], max_attempts=10, backoff_s=0.1)
def post(ctx: Any) -> Any:
    record(ctx, "start")
    ctx.artifact("effect", ctx.step_key)
    return ctx.upstream["ask"]


# --- R10: fail at step 4; a poison step -----------------------------------------------------------

fail4 = Flow("r_fail4", title="Step 4 fails on its first attempt")


def _ok(ctx: Any) -> str:
    record(ctx, "start")
    ctx.artifact("effect", ctx.step_key)
    return str(ctx.step_key)


fail4.step("s1", max_attempts=1)(_ok)
fail4.step("s2", needs=["s1"], max_attempts=1)(_ok)
fail4.step("s3", needs=["s2"], max_attempts=1)(_ok)


@fail4.step("s4", needs=["s3"], max_attempts=1)
def s4(ctx: Any) -> str:
    record(ctx, "start")
    if ctx.attempt == 1:
        raise StepFailed("step 4 fails on its first attempt (R10)", retryable=False)
    ctx.artifact("effect", ctx.step_key)
    return "s4"


fail4.step("s5", needs=["s4"], max_attempts=1)(_ok)

POISON_ATTEMPTS = 2
poison = Flow("r_poison", title="A step that kills its worker every time")


@poison.step(max_attempts=POISON_ATTEMPTS)
def die(ctx: Any) -> None:
    record(ctx, "start")
    os._exit(137)


# --- R6, R7, R9: flows over the harness ledgers (executions log + effects table, harness/ledgers.py) ---


def _ledgered(ctx: Any) -> str:
    """A zero-work step: its start and end in the executions log, its effect committed with it."""
    hl.record_execution(ctx, "start")
    hl.record_effect(ctx, str(ctx.step_key))
    hl.record_execution(ctx, "end")
    return str(ctx.step_key)


api_chain = Flow("r_api_chain", title="Three zero-work steps")
api_chain.step("c1", max_attempts=5, backoff_s=0.1)(_ledgered)
api_chain.step("c2", needs=["c1"], max_attempts=5, backoff_s=0.1)(_ledgered)
api_chain.step("c3", needs=["c2"], max_attempts=5, backoff_s=0.1)(_ledgered)

api_hold = Flow("r_api_hold", title="One step that holds until cancelled")


@api_hold.step("hold", max_attempts=5, backoff_s=0.1)
async def hold(ctx: Any) -> str:
    hl.record_execution(ctx, "start")
    await asyncio.sleep(float(ctx.inputs.get("sleep_s", 120)))
    hl.record_effect(ctx, "hold")
    hl.record_execution(ctx, "end")
    return "held"


api_flaky = Flow("r_api_flaky", title="The second step fails its first attempt for good; a resume succeeds")
api_flaky.step("f1", max_attempts=5, backoff_s=0.1)(_ledgered)


@api_flaky.step("f2", needs=["f1"], max_attempts=1)
def f2(ctx: Any) -> str:
    hl.record_execution(ctx, "start")
    if ctx.attempt == 1:
        hl.record_execution(ctx, "end")
        raise StepFailed("f2 fails its first attempt on purpose (R6/R7 resume)", retryable=False)
    hl.record_effect(ctx, "f2")
    hl.record_execution(ctx, "end")
    return "f2"


api_flaky.step("f3", needs=["f2"], max_attempts=5, backoff_s=0.1)(_ledgered)

ask = Flow("r_ask", title="A step, a question nobody times out, a step that returns the answer")
ask.step("pre", max_attempts=5, backoff_s=0.1)(_ledgered)
ask.input(
    "ask",
    prompt="Which payload?",
    needs=["pre"],
    schema={"type": "object", "properties": {"pick": {"type": "integer"}}, "required": ["pick"]},
)


@ask.step("post", needs=["ask"], max_attempts=5, backoff_s=0.1)
def post_answer(ctx: Any) -> Any:
    hl.record_execution(ctx, "start")
    hl.record_effect(ctx, "post")
    hl.record_execution(ctx, "end")
    return ctx.upstream["ask"]


FLOWS = [chain6, quick, stream, trap, pause, fail4, poison, api_chain, api_hold, api_flaky, ask]
