"""The schedules API and `baton schedules` over --server, through a real `baton serve` on SQLite."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.server import Server, running_server
from tests.e2e.test_api_support import (
    FLOWS,
    Tenant,
    assert_problem,
    fresh_database,
    get_run,
    tenant,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`baton serve` whose in-process worker looks for due schedules every 0.1 s.

    SQLite only, to keep within the time budget: firing on PostgreSQL is covered by
    tests/integration/test_schedules.py, and these routes on PostgreSQL by the Schemathesis run.
    """
    home = tmp_path_factory.mktemp("sched")
    with (
        fresh_database("sqlite", home) as url,
        running_server(url, home, flows=FLOWS, extra_env={"BATON_SCHEDULE_TICK_S": "0.1"}) as srv,
    ):
        yield srv


@pytest.fixture
def me(api: Server) -> Iterator[Tenant]:
    who = tenant(api)
    yield who
    who.close()


def _when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_schedule_fires_runs_and_is_paused_resumed_deleted(me: Tenant) -> None:
    c = me.client
    resp = c.post(
        "/v1/schedules",
        json={"flow": "api_confirm", "project_id": me.project, "inputs": {"sleep_s": 0}, "interval_s": 1},
    )
    assert resp.status_code == 201, resp.text
    made = resp.json()
    assert (made["paused"], made["auto_confirm"], made["missed"], made["fires"]) == (False, True, "skip", 0)
    fires = [_when(t) for t in made["next_fires"]]
    assert len(fires) == 5 and fires[0] == _when(made["next_fire_at"])
    assert [round(b - a, 3) for a, b in itertools.pairwise(fires)] == [1.0] * 4

    def scheduled_run() -> dict[str, Any] | None:
        page = c.get("/v1/runs", params={"project_id": me.project}).json()["runs"]
        return next((r for r in page if r["schedule_id"] == made["id"]), None)

    summary = wait_until(scheduled_run, what="the schedule's first run")
    run = get_run(c, summary["id"])
    # api_confirm requires confirmation; a schedule's runs are confirmed automatically by default.
    assert run["status"] != "needs_confirmation"
    assert run["schedule_id"] == made["id"] and run["source"]["kind"] == "schedule"
    assert c.get(f"/v1/schedules/{made['id']}").json()["fires"] >= 1

    paused = c.post(f"/v1/schedules/{made['id']}/pause").json()
    assert (paused["paused"], paused["next_fire_at"], paused["next_fires"]) == (True, None, [])
    assert c.post(f"/v1/schedules/{made['id']}/pause").json()["paused"] is True  # a no-op
    resumed = c.post(f"/v1/schedules/{made['id']}/resume").json()
    assert resumed["paused"] is False and len(resumed["next_fires"]) == 5

    listed = c.get("/v1/schedules", params={"project_id": me.project}).json()
    assert [s["id"] for s in listed] == [made["id"]]
    deleted = c.delete(f"/v1/schedules/{made['id']}")
    assert deleted.status_code == 200 and deleted.json()["id"] == made["id"]
    assert_problem(c.get(f"/v1/schedules/{made['id']}"), 404, made["id"])
    # The runs it made stay, and still say which schedule made them (to `baton runs show` too).
    assert get_run(c, summary["id"])["schedule_id"] == made["id"]
    env = {**os.environ, "BATON_SERVER": me.server.url, "BATON_TOKEN": me.token, "COLUMNS": "200"}
    env.pop("BATON_DATABASE_URL", None)
    shown = subprocess.run(
        [sys.executable, "-m", "baton", "runs", "show", summary["id"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"^\s+schedule\s+{made['id']}$", shown.stdout, re.MULTILINE), shown.stdout


BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"flow": "no_such_flow", "interval_s": 60}, "no_such_flow"),
    ({"flow": "repo-review", "interval_s": 60, "inputs": {"colour": "red"}}, "colour"),
    ({"flow": "repo-review", "cron": "61 * * * *"}, "cron"),
    ({"flow": "repo-review", "cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"flow": "repo-review", "interval_s": 0.5}, "interval_s"),
    ({"flow": "repo-review", "interval_s": 60, "cron": "* * * * *"}, "exactly one"),
    ({"flow": "repo-review"}, "exactly one"),
    ({"flow": "repo-review", "interval_s": 60, "missed": "catch_up"}, "missed"),
]


def test_bad_schedules_are_clear_422_problems(me: Tenant) -> None:
    for body, mention in BAD_BODIES:
        resp = me.client.post("/v1/schedules", json={"project_id": me.project, **body})
        assert_problem(resp, 422, mention)
    assert me.client.get("/v1/schedules", params={"project_id": me.project}).json() == []


def test_schedules_are_project_scoped(api: Server, me: Tenant) -> None:
    made = me.client.post(
        "/v1/schedules",
        json={"flow": "repo-review", "project_id": me.project, "cron": "@daily", "paused": True},
    ).json()
    stranger = tenant(api)
    viewer = tenant(api, project=me.project, role="viewer")
    try:
        missing = stranger.client.get("/v1/schedules/sch_missing")
        assert_problem(missing, 404)
        for method, path in [
            ("GET", f"/v1/schedules/{made['id']}"),
            ("POST", f"/v1/schedules/{made['id']}/pause"),
            ("POST", f"/v1/schedules/{made['id']}/resume"),
            ("DELETE", f"/v1/schedules/{made['id']}"),
        ]:
            resp = stranger.client.request(method, path)
            assert_problem(resp, 404)
            # The same answer as for an id that does not exist: nothing leaks.
            assert resp.json()["detail"] == f"schedule {made['id']} not found"
        assert stranger.client.get("/v1/schedules").json() == []
        foreign = stranger.client.post(
            "/v1/schedules", json={"flow": "repo-review", "project_id": me.project, "interval_s": 60}
        )
        assert_problem(foreign, 404, me.project)
        assert viewer.client.get(f"/v1/schedules/{made['id']}").status_code == 200
        assert_problem(viewer.client.post(f"/v1/schedules/{made['id']}/pause"), 403, "member")
    finally:
        stranger.close()
        viewer.close()


def test_cli_over_http(api: Server, me: Tenant) -> None:
    env = {**os.environ, "BATON_SERVER": api.url, "BATON_TOKEN": me.token, "COLUMNS": "200"}
    env.pop("BATON_DATABASE_URL", None)

    def baton(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "baton", "schedules", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = baton(
        "create", "repo-review", "--cron", "0 9 * * MON-FRI", "--tz", "Europe/Paris", "--project", me.project
    )
    assert made.returncode == 0, made.stderr
    assert "cron 0 9 * * MON-FRI (Europe/Paris)" in made.stdout and "next fires" in made.stdout
    bad = baton("create", "repo-review", "--every", "0.5", "--project", me.project)
    assert bad.returncode == 2 and bad.stderr.startswith("error: interval_s"), bad.stderr
    listed = baton("ls", "--project", me.project)
    assert listed.returncode == 0 and "repo-review" in listed.stdout, listed.stderr
