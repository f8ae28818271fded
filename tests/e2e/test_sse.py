"""Server-Sent Events through a real `baton serve`: resume with Last-Event-ID, restarts, replays.

The oracle is always the events table (GET /v1/runs/{id}/events): a client that reconnects must
end up with every event exactly once and in order, whatever happened to its connection or to the
server in between.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, make_token, running_server
from tests.e2e.test_api_support import (
    DIALECTS,
    FLOWS,
    Frame,
    Tenant,
    assert_problem,
    create_run,
    events_of,
    frames,
    module_server,
    sse_events,
    stream_timeout,
    tenant,
    wait_status,
)

CHATTY = {"count": 300, "interval_s": 0.01}


@pytest.fixture(scope="module", params=DIALECTS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with module_server(request, tmp_path_factory) as srv:
        yield srv


@pytest.fixture
def me(api: Server) -> Iterator[Tenant]:
    who = tenant(api)
    yield who
    who.close()


def run_stream(
    client: httpx.Client,
    run_id: str,
    *,
    last_event_id: str | None = None,
    after: str | None = None,
    stop_after: int | None = None,
    read_timeout: float = 30.0,
) -> tuple[list[Frame], bool]:
    """Read a run's stream; returns its events and whether the server ended the stream.

    With `stop_after`, the client drops the connection after that many events.
    """
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    params = {"after": after} if after is not None else {}
    got: list[Frame] = []
    with client.stream(
        "GET",
        f"/v1/runs/{run_id}/stream",
        headers=headers,
        params=params,
        timeout=stream_timeout(read_timeout),
    ) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for frame in sse_events(resp):
            got.append(frame)
            if stop_after is not None and len(got) >= stop_after:
                return got, False
    return got, True


def assert_exactly_the_table(got: list[Frame], table: list[dict[str, Any]]) -> None:
    ids = [frame.id for frame in got]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    for frame in got:
        assert frame.id == str(frame.data["id"]), "the SSE id is the event's seq"
        assert set(frame.data) == {"type", "id", "timestamp", "run_id", "payload"}
    assert ids == [str(e["id"]) for e in table], "every event once, in order"
    assert [frame.data for frame in got] == table


# --- one server per database ------------------------------------------------------------------------


def test_reconnect_with_last_event_id_mid_run(me: Tenant) -> None:
    c = me.client
    run = create_run(c, "api_chatty", me.project, inputs=CHATTY)
    got, ended = run_stream(c, run["id"], stop_after=40)
    assert not ended
    assert get_status(c, run["id"]) == "running", "the client dropped mid-run"
    more, ended = run_stream(c, run["id"], last_event_id=got[-1].id, stop_after=100)
    got += more
    assert not ended
    # `?after=` is the same resume point for clients that cannot set headers.
    rest, ended = run_stream(c, run["id"], after=got[-1].id)
    got += rest
    assert ended, "the stream ends after the run's final event"
    assert got[-1].data["type"] == "run.succeeded"
    table = events_of(c, run["id"])
    assert len(table) > 300
    assert_exactly_the_table(got, table)


def test_late_subscriber_gets_full_replay_then_close(me: Tenant) -> None:
    c = me.client
    run = create_run(c, "api_chatty", me.project, inputs={"count": 50, "interval_s": 0})
    assert wait_status(c, run["id"])["status"] == "succeeded"
    table = events_of(c, run["id"])
    got, ended = run_stream(c, run["id"], read_timeout=10)
    assert ended
    assert_exactly_the_table(got, table)
    half = len(table) // 2
    rest, ended = run_stream(c, run["id"], last_event_id=str(table[half]["id"]), read_timeout=10)
    assert ended
    assert_exactly_the_table(rest, table[half + 1 :])
    # At the head of a finished run there is nothing more: the stream closes at once.
    nothing, ended = run_stream(c, run["id"], last_event_id=str(table[-1]["id"]), read_timeout=10)
    assert ended and nothing == []


def test_last_event_id_beyond_the_head_waits(me: Tenant) -> None:
    c = me.client
    run = create_run(c, "api_sleep", me.project, inputs={"sleep_s": 60})
    wait_status(c, run["id"], "running")
    started = time.monotonic()
    got: list[Frame] = []
    with (
        pytest.raises(httpx.ReadTimeout),
        c.stream(
            "GET",
            f"/v1/runs/{run['id']}/stream",
            headers={"Last-Event-ID": "1000000"},
            timeout=stream_timeout(1.5),
        ) as resp,
    ):
        assert resp.status_code == 200, resp.read()
        for frame in sse_events(resp):
            got.append(frame)
    assert got == [], "nothing after an id beyond the head, and no error"
    assert time.monotonic() - started >= 1.4
    assert_problem(
        c.get(f"/v1/runs/{run['id']}/stream", headers={"Last-Event-ID": "not-a-number"}), 400, "Last-Event-ID"
    )
    assert c.post(f"/v1/runs/{run['id']}/cancel").status_code == 200
    assert wait_status(c, run["id"])["status"] == "cancelled"


def test_foreign_and_unknown_run_streams_are_404(api: Server, me: Tenant) -> None:
    run = create_run(me.client, "api_confirm", me.project, title="private")
    stranger = tenant(api)
    try:
        with stranger.client.stream("GET", f"/v1/runs/{run['id']}/stream", timeout=stream_timeout(5)) as resp:
            resp.read()
            assert_problem(resp, 404, run["id"])
            assert "private" not in resp.text
        with stranger.client.stream("GET", "/v1/runs/run_nope/stream", timeout=stream_timeout(5)) as resp:
            resp.read()
            assert_problem(resp, 404)
    finally:
        stranger.close()


def test_project_stream_delivers_and_resumes_without_duplicates(api: Server, me: Tenant) -> None:
    c = me.client
    other_project = tenant(api, user=me.user)  # the same user, a member of a second project too
    mine: list[str] = []
    theirs: list[str] = []

    def launch() -> None:
        mine.append(create_run(c, "api_chatty", me.project, inputs={"count": 20, "interval_s": 0})["id"])
        theirs.append(create_run(c, "api_confirm", other_project.project, confirm=True)["id"])

    def read_until(resp: httpx.Response, run_id: str, sink: list[Frame]) -> None:
        for frame in sse_events(resp):
            sink.append(frame)
            if frame.data["run_id"] == run_id and frame.data["type"] in ("run.succeeded", "run.failed"):
                return

    first: list[Frame] = []
    with c.stream("GET", "/v1/stream", params={"project_id": me.project}, timeout=stream_timeout(20)) as resp:
        assert resp.status_code == 200, resp.read()
        launcher = threading.Thread(target=launch)
        launcher.start()  # the runs start after the subscription: these events arrive live
        launcher.join(20)
        read_until(resp, mine[0], first)
    # While nobody listens, a second run of the project happens.
    mine.append(create_run(c, "api_confirm", me.project, confirm=True)["id"])
    assert wait_status(c, mine[1])["status"] == "succeeded"
    assert wait_status(c, theirs[0])["status"] == "succeeded"

    second: list[Frame] = []
    with c.stream(
        "GET",
        "/v1/stream",
        params={"project_id": me.project},
        headers={"Last-Event-ID": first[-1].id or ""},
        timeout=stream_timeout(20),
    ) as resp:
        assert resp.status_code == 200, resp.read()
        read_until(resp, mine[1], second)
    # Nothing more after the last id: the reader is at the head.
    extra: list[Frame] = []
    with (
        pytest.raises(httpx.ReadTimeout),
        c.stream(
            "GET",
            "/v1/stream",
            params={"project_id": me.project},
            headers={"Last-Event-ID": second[-1].id or ""},
            timeout=stream_timeout(1.0),
        ) as resp,
    ):
        for frame in sse_events(resp):
            extra.append(frame)
    assert extra == []

    got = first + second
    cursors = [f.id for f in got]
    assert all(cursors) and len(set(cursors)) == len(cursors), "no duplicates across the reconnect"
    seen = [(f.data["run_id"], f.data["id"]) for f in got]
    assert len(set(seen)) == len(seen)
    assert {run_id for run_id, _ in seen} == set(mine), "only this project's runs"
    assert not any(f.data["type"] == "step.delta" for f in got)
    for run_id in mine:
        table = [e for e in events_of(c, run_id) if e["type"] != "step.delta"]
        delivered = [f.data for f in got if f.data["run_id"] == run_id]
        assert delivered == table, f"run {run_id}: every non-delta event once, in order"
        assert any(e["type"] == "run.created" for e in delivered)
    assert any(e["type"] == "step.delta" for e in events_of(c, mine[0])), "deltas were left out"
    other_project.close()


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_keepalives_are_comments_without_id(me: Tenant) -> None:
    """sqlite only: the keep-alive is the same code on both databases and takes 15 s to appear."""
    c = me.client
    run = create_run(c, "api_sleep", me.project, inputs={"sleep_s": 60})
    comment: Frame | None = None
    events: list[Frame] = []
    with c.stream("GET", f"/v1/runs/{run['id']}/stream", timeout=stream_timeout(25)) as resp:
        assert resp.status_code == 200
        for frame in frames(resp):
            if frame.is_comment:
                comment = frame
                break
            events.append(frame)
    assert comment is not None
    assert comment.id is None and all(line.startswith(":") for line in comment.lines), comment.lines
    assert [e.data["type"] for e in events][:2] == ["run.created", "run.started"]
    # The client resumes after the keep-alive from its last real id.
    assert c.post(f"/v1/runs/{run['id']}/cancel").status_code == 200
    rest, ended = run_stream(c, run["id"], last_event_id=events[-1].id, read_timeout=15)
    assert ended
    assert_exactly_the_table(events + rest, events_of(c, run["id"]))


def get_status(client: httpx.Client, run_id: str) -> str:
    return str(client.get(f"/v1/runs/{run_id}").json()["status"])


# --- across a server restart ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_resume_across_server_restart(database_url: str, tmp_path: Path, how: str) -> None:
    with running_server(database_url, tmp_path, flows=FLOWS) as srv:
        token = make_token(database_url, "sam", "restarts")
        with srv.client(token) as c:
            run = create_run(c, "api_chatty", "restarts", inputs={"count": 120, "interval_s": 0.02})
            got: list[Frame] = []
            with c.stream("GET", f"/v1/runs/{run['id']}/stream", timeout=stream_timeout(30)) as resp:
                assert resp.status_code == 200
                try:
                    for frame in sse_events(resp):
                        got.append(frame)
                        if len(got) == 40:
                            # Down while this client is still connected; it keeps reading what
                            # reached it, then sees its connection end.
                            if how == "restart":
                                srv.stop()
                            else:
                                srv.kill()
                except httpx.TransportError:
                    pass
            assert got[-1].data["type"] not in ("run.succeeded", "run.failed", "run.cancelled")
            srv.start()
            rest, ended = run_stream(c, run["id"], last_event_id=got[-1].id, read_timeout=30)
            assert ended
            got += rest
            assert got[-1].data["type"] == "run.succeeded"
            assert_exactly_the_table(got, events_of(c, run["id"]))
            if how == "kill":
                kinds = [f.data["type"] for f in got]
                assert "step.lease_expired" in kinds or kinds.count("step.started") > 2


# --- two API processes and a worker process on PostgreSQL -------------------------------------------


def _parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@pytest.mark.postgres
def test_api_replica_sees_worker_events_within_250ms(postgres_url: str, tmp_path: Path) -> None:
    homes = [tmp_path / "a", tmp_path / "b", tmp_path / "w"]
    for home in homes:
        home.mkdir()
    with (
        running_server(postgres_url, homes[0], workers=0, flows=FLOWS) as api_a,
        running_server(postgres_url, homes[1], workers=0, flows=FLOWS) as api_b,
    ):
        token = make_token(postgres_url, "pat", "replicas")
        log = open(homes[2] / "worker.log", "wb")  # closed below
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "baton", "worker",
                "--database", postgres_url, "--flows", FLOWS[0], "--lease", "3",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BATON_HOME": str(homes[2])},
            start_new_session=True,
        )  # fmt: skip
        try:
            with api_a.client(token) as a, api_b.client(token) as b:
                run = create_run(
                    b,
                    "api_chatty",
                    "replicas",
                    inputs={"count": 40, "interval_s": 0.05},
                    policy={"require_confirmation": True},
                )
                assert run["status"] == "needs_confirmation"
                received: list[Frame] = []
                failure: list[BaseException] = []
                subscribed = threading.Event()

                def follow() -> None:
                    try:
                        with a.stream(
                            "GET", f"/v1/runs/{run['id']}/stream", timeout=stream_timeout(30)
                        ) as resp:
                            assert resp.status_code == 200
                            for frame in sse_events(resp):
                                received.append(frame)
                                subscribed.set()
                    except BaseException as error:  # reported by the main thread
                        failure.append(error)
                        subscribed.set()

                reader = threading.Thread(target=follow)
                reader.start()
                assert subscribed.wait(20), "the stream from API process A did not start"
                confirmed = b.post(f"/v1/runs/{run['id']}/confirm")
                assert confirmed.status_code == 200, confirmed.text
                reader.join(60)
                assert not reader.is_alive(), "the stream did not end with the run"
                assert not failure, failure
                assert worker.poll() is None, (homes[2] / "worker.log").read_text()
                table = events_of(a, run["id"])
                assert_exactly_the_table(received, table)
                assert received[-1].data["type"] == "run.succeeded"
                workers = {e["payload"]["worker"] for e in table if e["type"] == "step.started"}
                assert workers and all(f":{worker.pid}:" in w for w in workers), workers

                live = [f for f in received if f.data["id"] > 1]  # run.created was a replay
                delays = [f.received - _parse_time(f.data["timestamp"]) for f in live]
                assert len(delays) >= 20
                p95 = statistics.quantiles(delays, n=20)[-1]
                report = f"n={len(delays)} p50={statistics.median(delays) * 1000:.0f}ms " + (
                    f"p95={p95 * 1000:.0f}ms max={max(delays) * 1000:.0f}ms"
                )
                assert min(delays) > -0.05, f"clocks disagree: {report}"
                assert p95 <= 0.25, f"commit to receipt too slow: {report}"
                print(report)
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
            log.close()
