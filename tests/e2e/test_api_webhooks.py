"""Webhooks through a real `baton serve`: create, deliver signed with a retry, ping, tenancy, refusals."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e import apiflows
from tests.e2e.server import make_token, running_server
from tests.integration.test_webhooks import FAST_ENV, SECRET, receiver


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} never happened; last: {value}"
        time.sleep(0.1)


def test_webhooks_over_http(sqlite_url: str, tmp_path: Path) -> None:
    """One dialect here: tests/integration/test_webhooks.py runs delivery on both."""
    database_url = sqlite_url
    with (
        receiver(fail_first=1) as rec,
        running_server(database_url, tmp_path, flows=[str(apiflows.PATH)], extra_env=FAST_ENV) as srv,
    ):
        admin = srv.client(make_token(database_url, "alice", "p1", role="admin"))
        member = srv.client(make_token(database_url, "bob", "p1", role="member"))
        outsider = srv.client(make_token(database_url, "mallory", "p2", role="admin"))

        bad = admin.post(
            "/v1/webhooks", json={"project_id": "p1", "url": rec.url, "event_types": ["run.done"]}
        )
        assert bad.status_code == 422 and "'run.done'" in bad.json()["detail"]
        assert "run.succeeded" in bad.json()["detail"], "the error lists the valid types"
        assert member.post("/v1/webhooks", json={"project_id": "p1", "url": rec.url}).status_code == 403

        made = admin.post(
            "/v1/webhooks",
            json={"project_id": "p1", "url": rec.url, "event_types": ["run.succeeded"], "secret": SECRET},
        )
        assert made.status_code == 201, made.text
        hook = made.json()
        assert hook["secret"] == SECRET and hook["event_types"] == ["run.succeeded"]
        generated = admin.post("/v1/webhooks", json={"project_id": "p1", "url": rec.url}).json()
        assert generated["secret"].startswith("whsec_") and generated["event_types"] == ["*"]
        assert admin.delete(f"/v1/webhooks/{generated['id']}").status_code == 204
        assert admin.get(f"/v1/webhooks/{generated['id']}").status_code == 404

        listed = admin.get("/v1/webhooks", params={"project_id": "p1"})
        assert [h["id"] for h in listed.json()] == [hook["id"]]
        assert SECRET not in listed.text and SECRET not in admin.get(f"/v1/webhooks/{hook['id']}").text
        # Another project's webhook answers like a missing one.
        foreign = outsider.get(f"/v1/webhooks/{hook['id']}")
        missing = outsider.get("/v1/webhooks/whk_missing")
        assert foreign.status_code == missing.status_code == 404
        assert outsider.get("/v1/webhooks").json() == []

        run = admin.post("/v1/runs", json={"flow": "api_sleep", "project_id": "p1", "inputs": {"sleep_s": 0}})
        run_id = run.json()["id"]

        def deliveries() -> list[dict[str, Any]]:
            return list(member.get(f"/v1/webhooks/{hook['id']}/deliveries").json())

        rows = wait_for(deliveries, lambda rows: [r["status"] for r in rows] == ["succeeded"], "delivery")
        assert rows[0]["event_type"] == "run.succeeded" and rows[0]["run_id"] == run_id
        assert rows[0]["attempts"] == 2 and rows[0]["last_status_code"] == 200, "a 500 first, then a retry"
        assert len(rec.requests) == 2 and all(r.signed for r in rec.requests)

        ping = admin.post(f"/v1/webhooks/{hook['id']}/ping")
        assert ping.status_code == 202 and ping.json()["event_type"] == "webhook.ping"
        wait_for(
            deliveries,
            lambda rows: any(r["id"] == ping.json()["id"] and r["status"] == "succeeded" for r in rows),
            "ping",
        )
        assert rec.requests[-1].headers["Baton-Event"] == "webhook.ping" and rec.requests[-1].signed

        paused = admin.patch(f"/v1/webhooks/{hook['id']}", json={"active": False})
        assert paused.status_code == 200 and paused.json()["active"] is False

        cli = subprocess.run(
            [sys.executable, "-m", "baton", "webhooks", "deliveries", hook["id"], "--server", srv.url],
            capture_output=True,
            text=True,
            env={"BATON_TOKEN": admin.headers["Authorization"][7:], "COLUMNS": "200", "PATH": ""},
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert "run.succeeded" in cli.stdout and "webhook.ping" in cli.stdout


def test_a_private_target_is_refused_with_a_clear_error(sqlite_url: str, tmp_path: Path) -> None:
    with running_server(sqlite_url, tmp_path) as srv:
        admin = srv.client(make_token(sqlite_url, "alice", "p1", role="admin"))
        refused = admin.post("/v1/webhooks", json={"project_id": "p1", "url": "http://127.0.0.1:9/hook"})
        assert refused.status_code == 422
        assert refused.json()["detail"] == (
            "127.0.0.1 is a loopback address; webhook targets must be public unless the server sets "
            "BATON_WEBHOOKS_ALLOW_PRIVATE=1"
        )
        named = admin.post("/v1/webhooks", json={"project_id": "p1", "url": "http://localhost:9/hook"})
        assert named.status_code == 422 and "localhost resolves to" in named.json()["detail"]
        assert "a loopback address" in named.json()["detail"]
        metadata = admin.post("/v1/webhooks", json={"project_id": "p1", "url": "http://169.254.169.254/"})
        assert "a link-local address" in metadata.json()["detail"]
        assert admin.get("/v1/webhooks").json() == [], "nothing half-made"
