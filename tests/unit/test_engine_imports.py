"""A model engine's SDKs are imported off the event loop: the first agent step stalls nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_an_embedded_run_loads_neither_httpx_nor_postgresql(tmp_path: Path) -> None:
    """`baton run` on SQLite with no webhook imports no HTTP client and no PostgreSQL dialect (start-up)."""
    probe = (
        "import runpy, sys\n"
        "database, flows = sys.argv[1:]\n"
        "sys.argv = ['baton', 'run', 'pair', '--no-confirm', '--flows', flows, '--database', database]\n"
        "try:\n"
        "    runpy.run_module('baton', run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "loaded = [m for m in ('httpx', 'sqlalchemy.dialects.postgresql', 'psycopg') if m in sys.modules]\n"
        "print('LOADED', *loaded)\n"
    )
    flows = tmp_path / "pair.yaml"
    flows.write_text(
        "name: pair\ntitle: Two offline steps\nsteps:\n"
        "  one: {agent: {persona: You write., engine: offline}, prompt: Write.}\n"
        "  two: {agent: {persona: You write., engine: offline}, prompt: Write., needs: [one]}\n"
    )
    args = [sys.executable, "-c", probe, f"sqlite:///{tmp_path / 'baton.db'}", str(flows)]
    env = {**os.environ, "BATON_HOME": str(tmp_path / "home")}
    # The first run creates the schema (Alembic loads every dialect); the next is the usual case.
    for _ in range(2):
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "LOADED", done.stdout[-500:]
