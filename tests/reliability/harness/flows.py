"""Flows for the reliability scenarios; worker processes load them from `FLOWS_PATH`.

Every code step writes its start and end to the executions log and commits one effect with its
result (see ledgers), so the checker can tell what ran from what was recorded.

    rel_wide    WIDE independent zero-work steps (claim races: many jobs from few runs)
    rel_agent   one step that runs the fake CLI agent (tests/fakes/fake_agent.py) as a subprocess
                group whose every process carries MARKER_ENV=<run>:<step>:<attempt>
    rel_chain   a (code) → think (agent, offline engine) → shell (subprocess) → d (code)
    rel_input   a (code) → ask (input, expires after the run input `ask_timeout_s`... fixed 1 s) → d
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from baton.domain.errors import StepFailed
from baton.flows.spec import Flow

HERE = Path(__file__).resolve()
FLOWS_PATH = HERE
FAKE_AGENT = HERE.parents[2] / "fakes" / "fake_agent.py"
#: Every process a reliability step spawns carries this variable (faults.marked_processes finds them).
MARKER_ENV = "BATON_RELIABILITY_MARKER"
WIDE = 20
INPUT_TIMEOUT_S = 1.0


def _ledgers() -> Any:
    # Loaded by path in worker processes, where `tests` is not a package on sys.path.
    sys.path.insert(0, str(HERE.parent))
    try:
        import ledgers
    finally:
        sys.path.pop(0)
    return ledgers


ledgers = _ledgers()


def marker(ctx: Any) -> str:
    return f"{ctx.run_id}:{ctx.step_key}:{ctx.attempt}"


def _zero_work(ctx: Any) -> int:
    ledgers.record_execution(ctx, "start")
    ledgers.record_effect(ctx, "done")
    ledgers.record_execution(ctx, "end")
    return int(ctx.attempt)


# --- rel_wide ----------------------------------------------------------------------------------

wide = Flow("rel_wide", title=f"{WIDE} independent zero-work steps")
for _i in range(WIDE):
    wide.step(f"w{_i:02d}", max_attempts=5)(_zero_work)


# --- rel_agent ---------------------------------------------------------------------------------

agent = Flow("rel_agent", title="One step that runs the fake CLI agent")


async def run_fake_agent(
    ctx: Any, *, lines: int, delay: float, trap_term: bool = False, grandchild: bool = False
) -> int:
    """The fake agent as the step's subprocess group, marked; returns its exit code.

    With `grandchild` it also leaves `sleep 60` behind holding its stdout, so the step only ends
    when that is killed: use it for attempts that are meant to be stopped.
    """
    args = ["env", f"{MARKER_ENV}={marker(ctx)}", sys.executable, str(FAKE_AGENT)]
    args += ["--lines", str(lines), "--delay", f"{delay:g}"]
    if grandchild:
        args.append("--grandchild")
    if trap_term:
        args.append("--trap-term")
    result = await ctx.run_command(args, grace_s=0.5)
    return int(result.exit_code)


@agent.step("work", max_attempts=5, backoff_s=0.1)
async def work(ctx: Any) -> str:
    ledgers.record_execution(ctx, "start")
    # The first attempt may be told to run longer (`first_lines`): a step to strand or to fence.
    lines = int(ctx.inputs.get("lines", 10))
    first = ctx.attempt == 1 and "first_lines" in ctx.inputs
    if first:
        lines = int(ctx.inputs["first_lines"])
    code = await run_fake_agent(ctx, lines=lines, delay=float(ctx.inputs.get("delay", 0.2)), grandchild=first)
    if code != 0:
        raise RuntimeError(f"fake agent exited with {code}")
    ledgers.record_effect(ctx, "agent")
    ledgers.record_execution(ctx, "end")
    return "worked"


# --- rel_chain ---------------------------------------------------------------------------------

chain = Flow("rel_chain", title="code → agent → subprocess → code")
# R2 kills a worker at six points, and each death costs an attempt of every step that worker
# held (up to 8 at once): one step can lose six attempts, and on a loaded machine a late
# heartbeat can cost one more. Fewer attempts than that would make failing the run right.
CHAIN_ATTEMPTS = 10


@chain.step("a", max_attempts=CHAIN_ATTEMPTS, backoff_s=0.1)
def step_a(ctx: Any) -> str:
    ledgers.record_execution(ctx, "start")
    ledgers.record_effect(ctx, "a")
    ledgers.record_execution(ctx, "end")
    return "a"


chain.agent(
    "think",
    engine="offline",
    prompt="Think about it.",
    needs=["a"],
    max_attempts=CHAIN_ATTEMPTS,
    backoff_s=0.1,
)


@chain.step("shell", needs=["think"], max_attempts=CHAIN_ATTEMPTS, backoff_s=0.1)
async def step_shell(ctx: Any) -> str:
    ledgers.record_execution(ctx, "start")
    code = await run_fake_agent(ctx, lines=3, delay=float(ctx.inputs.get("delay", 0.1)))
    if code != 0:
        raise RuntimeError(f"fake agent exited with {code}")
    ledgers.record_effect(ctx, "shell")
    ledgers.record_execution(ctx, "end")
    return "shell"


@chain.step("d", needs=["shell"], max_attempts=CHAIN_ATTEMPTS, backoff_s=0.1)
def step_d(ctx: Any) -> str:
    ledgers.record_execution(ctx, "start")
    ledgers.record_effect(ctx, "d")
    ledgers.record_execution(ctx, "end")
    return "d"


# --- rel_sleep: a step that sleeps (a run to cancel, a step to strand) ------------------------------

sleeper = Flow("rel_sleep", title="One step that sleeps")


@sleeper.step("nap", max_attempts=5, backoff_s=0.1)
async def nap(ctx: Any) -> str:
    ledgers.record_execution(ctx, "start")
    seconds = float(ctx.inputs.get("sleep_s", 2.0))
    if ctx.attempt == 1:
        seconds = float(ctx.inputs.get("first_sleep_s", seconds))  # an attempt to strand
    await asyncio.sleep(seconds)
    ledgers.record_effect(ctx, "nap")
    ledgers.record_execution(ctx, "end")
    return "rested"


# --- rel_input: a run that waits for a person who never answers ------------------------------------

asker = Flow("rel_input", title="Asks a question that expires")
asker.step("a")(step_a)
asker.input("ask", prompt="Go on?", needs=["a"], timeout_s=INPUT_TIMEOUT_S)


FLOWS = [wide, agent, chain, sleeper, asker]


# --- rel_flaky: fails its first attempt for good (a run to resume) ----------------------------------

flaky = Flow("rel_flaky", title="Fails on its first attempt, succeeds when resumed")


@flaky.step("wobble", max_attempts=3, backoff_s=0.1)
def wobble(ctx: Any) -> str:
    ledgers.record_execution(ctx, "start")
    if ctx.attempt == 1:
        # Not retryable: the run fails at once; a resume grants the step 3 more attempts.
        raise StepFailed("first attempt fails on purpose", retryable=False)
    ledgers.record_effect(ctx, "wobble")
    ledgers.record_execution(ctx, "end")
    return "steady"


FLOWS.append(flaky)
