"""Idempotency-Key on every run transition: a client retrying after a lost reply gets the first answer.

Resume, answer, cancel and retry accept the `Idempotency-Key` header (retry also its body field):
the same key again replays (2xx, the same run) instead of a 409; another key on a target that
already moved is still a 409 and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from baton.client import Client
from baton.domain.errors import Conflict
from tests.e2e.server import Server
from tests.e2e.test_api_support import (
    DIALECTS,
    Tenant,
    assert_problem,
    create_run,
    events_of,
    module_server,
    tenant,
    wait_status,
    wait_until,
)


@pytest.fixture(scope="module", params=DIALECTS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with module_server(request, tmp_path_factory) as srv:
        yield srv


@pytest.fixture
def me(api: Server) -> Iterator[Tenant]:
    who = tenant(api)
    yield who
    who.close()


def kinds(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def test_resume_with_the_same_key_replays_and_another_key_is_a_conflict(me: Tenant) -> None:
    c = me.client
    run = create_run(c, "api_flaky", me.project)
    wait_status(c, run["id"], "failed")
    first = c.post(f"/v1/runs/{run['id']}/resume", headers={"Idempotency-Key": "resume-1"})
    assert first.status_code == 200, first.text
    wait_status(c, run["id"], "succeeded")
    # The reply was lost; the client retries with its key: the same run, not a 409.
    again = c.post(f"/v1/runs/{run['id']}/resume", headers={"Idempotency-Key": "resume-1"})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"] == run["id"]
    assert_problem(c.post(f"/v1/runs/{run['id']}/resume", headers={"Idempotency-Key": "other"}), 409)
    assert_problem(c.post(f"/v1/runs/{run['id']}/resume"), 409, "succeeded")
    resumed = kinds(events_of(c, run["id"]), "run.resumed")
    assert [e["payload"].get("idempotency_key") for e in resumed] == ["resume-1"], "resumed once"


def test_answer_with_the_same_key_replays_and_the_first_answer_stands(me: Tenant) -> None:
    c = me.client
    run = create_run(c, "api_ask", me.project)
    wait_status(c, run["id"], "waiting_for_input")
    request_id = wait_until(lambda: c.get(f"/v1/runs/{run['id']}").json()["pending_inputs"])[0]["id"]
    path = f"/v1/inputs/{request_id}/answer"
    first = c.post(path, json={"answer": {"ok": True}}, headers={"Idempotency-Key": "answer-1"})
    assert first.status_code == 200, first.text
    replay = c.post(path, json={"answer": {"ok": False}}, headers={"Idempotency-Key": "answer-1"})
    assert replay.status_code == 200 and replay.json()["id"] == run["id"], replay.text
    assert_problem(c.post(path, json={"answer": {"ok": False}}, headers={"Idempotency-Key": "b"}), 409)
    assert_problem(c.post(path, json={"answer": {"ok": False}}), 409, "answered")
    done = wait_status(c, run["id"], "succeeded")
    assert next(s for s in done["steps"] if s["key"] == "after")["output"] == {"ok": True}
    answered = kinds(events_of(c, run["id"]), "input.answered")
    assert [e["payload"].get("idempotency_key") for e in answered] == ["answer-1"]


def test_retry_takes_the_key_from_the_header_or_the_body_and_refuses_two_different_keys(
    me: Tenant,
) -> None:
    c = me.client
    run = create_run(c, "api_flaky", me.project)
    wait_status(c, run["id"], "failed")
    url = f"/v1/runs/{run['id']}/retry"
    by_header = c.post(url, headers={"Idempotency-Key": "retry-h"})
    assert by_header.status_code == 201, by_header.text
    by_body = c.post(url, json={"idempotency_key": "retry-h"})
    both = c.post(url, json={"idempotency_key": "retry-h"}, headers={"Idempotency-Key": "retry-h"})
    assert by_body.json()["id"] == both.json()["id"] == by_header.json()["id"]
    assert_problem(
        c.post(url, json={"idempotency_key": "retry-x"}, headers={"Idempotency-Key": "retry-y"}),
        422,
        "Idempotency-Key",
        "differ",
    )
    retried = kinds(events_of(c, run["id"]), "run.retried")
    assert len(retried) == 1, retried


def test_create_and_cancel_are_already_idempotent(me: Tenant) -> None:
    c = me.client
    body = {"flow": "api_sleep", "project_id": me.project, "inputs": {"sleep_s": 30}}
    one = c.post("/v1/runs", json=body, headers={"Idempotency-Key": "create-1"})
    two = c.post("/v1/runs", json=body, headers={"Idempotency-Key": "create-1"})
    assert one.json()["id"] == two.json()["id"], (one.text, two.text)
    run_id = one.json()["id"]
    cancels = [c.post(f"/v1/runs/{run_id}/cancel", headers={"Idempotency-Key": "cancel-1"}) for _ in range(3)]
    assert [r.status_code for r in cancels] == [200, 200, 200], [r.text for r in cancels]
    assert {r.json()["id"] for r in cancels} == {run_id}
    wait_status(c, run_id, "cancelled")
    assert c.post(f"/v1/runs/{run_id}/cancel").status_code == 200
    assert len(kinds(events_of(c, run_id), "run.cancelled")) == 1


def test_the_client_sends_the_key(me: Tenant) -> None:
    run = create_run(me.client, "api_flaky", me.project)
    wait_status(me.client, run["id"], "failed")
    with Client(me.server.url, me.token) as client:
        assert client.resume(run["id"], idempotency_key="sdk-1")["id"] == run["id"]
        wait_status(me.client, run["id"], "succeeded")
        assert client.resume(run["id"], idempotency_key="sdk-1")["id"] == run["id"]
        with pytest.raises(Conflict):
            client.resume(run["id"], idempotency_key="sdk-2")
