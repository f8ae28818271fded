"""`baton.client`: `stream` (sync and async) and `wait` ride out a killed and restarted server.

The oracle is the events table (`Client.events`): each consumer must have seen seq 1..N exactly once,
in order, ending at the run's terminal event, although the server was SIGKILLed mid-run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from baton.client import TERMINAL_EVENTS, AsyncClient, Client
from tests.e2e.server import make_token, running_server
from tests.e2e.test_api_support import FLOWS

CHATTY = {"count": 120, "interval_s": 0.01}


def _wait_for(check: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_stream_and_wait_survive_a_killed_server(database_url: str, tmp_path: Path) -> None:
    with running_server(database_url, tmp_path, flows=FLOWS) as srv:
        token = make_token(database_url, "cleo", "clients")
        with Client(srv.url, token) as client:
            run = client.create_run("api_chatty", CHATTY, project_id="clients")
            run_id = run["id"]
            seen: dict[str, list[dict[str, Any]]] = {"sync": [], "async": []}
            waited: dict[str, Any] = {}
            failures: list[BaseException] = []

            def read_sync() -> None:
                with Client(srv.url, token) as mine:
                    seen["sync"].extend(mine.stream(run_id, reconnect_s=0.1))

            def read_async() -> None:
                async def body() -> None:
                    async with AsyncClient(srv.url, token) as mine:
                        async for event in mine.stream(run_id, reconnect_s=0.1):
                            seen["async"].append(event)

                asyncio.run(body())

            def wait() -> None:
                with Client(srv.url, token) as mine:
                    waited["run"] = mine.wait(run_id, timeout=60, poll_s=0.1)

            def guarded(fn: Any) -> Any:
                def target() -> None:
                    try:
                        fn()
                    except BaseException as error:  # surfaced by the main thread's assertion
                        failures.append(error)

                return target

            threads = [
                threading.Thread(target=guarded(fn), daemon=True) for fn in (read_sync, read_async, wait)
            ]
            for thread in threads:
                thread.start()
            _wait_for(
                lambda: min(len(seen["sync"]), len(seen["async"])) >= 30 or failures,
                timeout=30,
                what="both streams to pass 30 events",
            )
            assert not failures, failures
            srv.kill()
            assert all(e["type"] not in TERMINAL_EVENTS for e in seen["sync"] + seen["async"])
            srv.start()
            for thread in threads:
                thread.join(timeout=60)
            assert not any(thread.is_alive() for thread in threads), "a consumer never finished"
            assert not failures, failures

            table = client.events(run_id, 0, 10_000)["events"]
            _check_reads(client, run_id)
            asyncio.run(_check_async_reads(srv.url, token, run_id))
    ids = [e["id"] for e in table]
    assert ids == list(range(1, len(ids) + 1))
    assert table[-1]["type"] == "run.succeeded"
    kinds = [e["type"] for e in table]
    assert "step.lease_expired" in kinds or kinds.count("step.started") > 2  # the kill cut a step short
    for name, events in seen.items():
        assert [e["id"] for e in events] == ids, f"{name} stream lost or repeated events"
        assert events == table or [e["type"] for e in events] == kinds, name
    assert waited["run"]["status"] == "succeeded"


def _check_reads(client: Client, run_id: str) -> None:
    """The typed reads of the catalog, artifacts, export and health answer on the sync client."""
    assert client.health()["status"] == "ok"
    assert "api_chatty" in [f["name"] for f in client.flows()]
    assert client.flow("api_chatty")["name"] == "api_chatty"
    assert isinstance(client.agents(), list)
    assert client.export(run_id)["run"]["id"] == run_id
    assert run_id in client.export_markdown(run_id)
    [first, *_] = client.artifacts(run_id)  # the run's report
    assert len(client.artifact(run_id, first["id"])) == first["size"]
    assert client.list_runs(project_id="clients")["runs"][0]["id"] == run_id


async def _check_async_reads(server: str, token: str, run_id: str) -> None:
    async with AsyncClient(server, token) as client:
        assert (await client.health())["status"] == "ok"
        assert (await client.flow("api_chatty"))["name"] == "api_chatty"
        assert len(await client.flows()) >= 1
        assert isinstance(await client.agents(), list)
        assert (await client.export(run_id))["run"]["id"] == run_id
        assert run_id in await client.export_markdown(run_id)
        assert (await client.events(run_id, 0, 5))["events"][0]["id"] == 1
        assert (await client.list_runs(project_id="clients"))["runs"][0]["id"] == run_id
        assert await client.inputs() == []
        [first, *_] = await client.artifacts(run_id)
        assert len(await client.artifact(run_id, first["id"])) == first["size"]
