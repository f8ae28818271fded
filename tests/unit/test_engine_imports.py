"""A model engine's SDKs are imported off the event loop: the first agent step stalls nothing else."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import asyncio, sys, time
from baton.agents import registry

assert "baton.agents.llm" not in sys.modules and "pydantic_ai" not in sys.modules
ticks = []

async def main():
    async def beat():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    beating = asyncio.create_task(beat())
    await asyncio.sleep(0.02)
    start = time.monotonic()
    await registry.import_engine_modules("openai:gpt-4o-mini")
    took = time.monotonic() - start
    beating.cancel()
    during = [t for t in ticks if t >= start]
    print(took, len(during), "pydantic_ai.models.openai" in sys.modules, "baton.agents.llm" in sys.modules)

asyncio.run(main())
"""


def test_the_first_model_engine_imports_its_sdk_while_the_loop_runs_on() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    took, ticks, sdk, engine = done.stdout.split()
    assert sdk == engine == "True", "the SDK and the engine module are imported"
    # Imports take about a second; a loop blocked by them would not tick at all meanwhile.
    assert int(ticks) >= 5, f"the loop ticked {ticks} times during {float(took):.2f} s of imports"


def test_engines_without_an_sdk_import_nothing() -> None:
    probe = (
        "import asyncio, sys; from baton.agents import registry; "
        "[asyncio.run(registry.import_engine_modules(s)) for s in ('offline', 'cli:x', 'function:f')]; "
        "print('pydantic_ai' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
