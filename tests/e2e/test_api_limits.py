"""Per-token limits: a request rate (429 with Retry-After) and a bound on open streams (429)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.e2e.server import make_token, running_server
from tests.e2e.test_api_support import assert_problem


def test_a_token_over_its_request_rate_gets_429_and_others_are_unaffected(
    sqlite_url: str, tmp_path: Path
) -> None:
    env = {"BATON_RATE_PER_S": "2", "BATON_RATE_BURST": "5"}
    with running_server(sqlite_url, tmp_path, extra_env=env) as server:
        greedy = make_token(sqlite_url, "greedy", "p1")
        calm = make_token(sqlite_url, "calm", "p1")
        with server.client(greedy) as client:
            statuses = [client.get("/v1/runs").status_code for _ in range(12)]
            assert statuses[:5] == [200] * 5  # the burst
            assert 429 in statuses[5:]
            refused = client.get("/v1/runs")
            body = assert_problem(refused, 429, "requests per second")
            assert refused.headers.get("Retry-After") == "1", body
        with server.client(calm) as client:
            assert client.get("/v1/runs").status_code == 200  # buckets are per token


def test_open_streams_per_token_are_bounded(sqlite_url: str, tmp_path: Path) -> None:
    env = {"BATON_MAX_STREAMS_PER_TOKEN": "2"}
    with running_server(sqlite_url, tmp_path, extra_env=env) as server:
        token = make_token(sqlite_url, "watcher", "p1")
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{server.url}/v1/stream?project_id=p1"
        timeout = httpx.Timeout(10.0, read=5.0)
        with httpx.Client(timeout=timeout) as first, httpx.Client(timeout=timeout) as second:
            with (
                first.stream("GET", url, headers=headers) as one,
                second.stream("GET", url, headers=headers) as two,
            ):
                assert one.status_code == two.status_code == 200
                third = httpx.get(url, headers=headers, timeout=timeout)
                assert_problem(third, 429, "open streams")
        # Closed streams give their slots back (the server notices within its revalidation period).
        with httpx.Client(timeout=timeout) as again:
            deadline = time.monotonic() + 10
            while True:
                with again.stream("GET", url, headers=headers) as resp:
                    if resp.status_code == 200:
                        break
                assert time.monotonic() < deadline, "stream slots were not released"
                time.sleep(0.5)
