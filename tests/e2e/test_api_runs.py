"""The runs API through a real `baton serve` on a loopback port, on SQLite and on PostgreSQL.

One server per database serves the whole module; every test works in a project of its own, so
the seed concurrency rule (one active run per project and user) never couples two tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server
from tests.e2e.test_api_support import (
    DIALECTS,
    Tenant,
    assert_problem,
    create_run,
    events_of,
    get_run,
    module_server,
    tenant,
    unique,
    wait_status,
    wait_until,
)


@pytest.fixture(scope="module", params=DIALECTS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with module_server(request, tmp_path_factory) as srv:
        yield srv


@pytest.fixture
def me(api: Server) -> Iterator[Tenant]:
    """A member of a project of its own."""
    who = tenant(api)
    yield who
    who.close()


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


# --- the happy path -------------------------------------------------------------------------------


def test_create_confirm_run_succeed_with_event_sequence(me: Tenant) -> None:
    c = me.client
    run = create_run(c, "api_confirm", me.project, title="happy path", inputs={"sleep_s": 0.5})
    assert run["status"] == "needs_confirmation"
    assert run["status_reason"].startswith("waiting for confirmation")
    # The plan is visible before confirming: the steps it will run and the policy snapshot.
    assert [(s["key"], s["status"], s["needs"]) for s in run["steps"]] == [
        ("first", "pending", []),
        ("second", "pending", ["first"]),
    ]
    policy = run["policy"]
    assert set(policy) >= {"effective", "layers", "overrides"}
    assert set(policy["effective"]) >= {
        "read_only",
        "require_confirmation",
        "allowed_engines",
        "max_steps",
        "max_tokens",
        "step_timeout_s",
    }
    assert set(policy["layers"]) >= {"server", "project", "flow", "run"}
    assert get_run(c, run["id"])["status"] == "needs_confirmation"
    assert types_of(events_of(c, run["id"])) == ["run.created"]

    confirmed = c.post(f"/v1/runs/{run['id']}/confirm", json={"reason": "looks right"})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] in ("queued", "running")
    wait_status(c, run["id"], "running")
    done = wait_status(c, run["id"])
    assert done["status"] == "succeeded", done
    assert [s["status"] for s in done["steps"]] == ["succeeded", "succeeded"]
    assert done["report"] and done["finished_at"]

    events = events_of(c, run["id"])
    kinds = types_of(events)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1)), "seq is dense from 1"
    assert kinds[:2] == ["run.created", "run.confirmed"]
    assert kinds[2] in ("run.queued", "run.started")
    assert "run.started" in kinds
    assert kinds[-1] == "run.succeeded"
    for key in ("first", "second"):
        mine = [e["type"] for e in events if e["payload"].get("step_key") == key]
        assert mine.index("step.started") < mine.index("step.succeeded"), (key, mine)
    started = kinds.index("run.started")
    assert all(k.startswith("run.") or k == "policy.override" for k in kinds[:started])
    assert sum(k in ("run.succeeded", "run.failed", "run.cancelled") for k in kinds) == 1
    for event in events:
        assert set(event) == {"type", "id", "timestamp", "run_id", "payload"}
        assert event["run_id"] == run["id"]

    again = c.post(f"/v1/runs/{run['id']}/confirm")
    body = assert_problem(again, 409, "succeeded")
    assert body["current_status"] == "succeeded"


# --- cancel from each cancellable state -----------------------------------------------------------


def test_cancel_needs_confirmation_run(me: Tenant) -> None:
    c = me.client
    run = create_run(c, "api_confirm", me.project)
    resp = c.post(f"/v1/runs/{run['id']}/cancel", json={"reason": "not today"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelled"
    assert "not today" in resp.json()["status_reason"]
    kinds = types_of(events_of(c, run["id"]))
    assert kinds[0] == "run.created" and kinds[-1] == "run.cancelled"
    assert "run.started" not in kinds
    assert_problem(c.post(f"/v1/runs/{run['id']}/confirm"), 409, "cancelled")


def test_cancel_queued_and_running_runs(me: Tenant) -> None:
    c = me.client
    first = create_run(c, "api_sleep", me.project, inputs={"sleep_s": 60}, title="long nap")
    wait_until(
        lambda: get_run(c, first["id"])["steps"][0]["status"] == "running",
        what="the nap step to be claimed",
    )
    second = create_run(c, "api_sleep", me.project, inputs={"sleep_s": 60})
    assert second["status"] == "queued"
    assert second["status_reason"].startswith("waiting for a concurrency slot"), second["status_reason"]

    # Queued: cancelled at once.
    resp = c.post(f"/v1/runs/{second['id']}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelled"
    assert resp.json()["started_at"] is None

    # Running: requested, then the worker stops the sleeping step.
    resp = c.post(f"/v1/runs/{first['id']}/cancel", json={"reason": "too slow"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] in ("running", "cancelled")
    assert resp.json()["cancel_requested"] is True
    # A second cancel while it settles is a no-op, not an error.
    assert c.post(f"/v1/runs/{first['id']}/cancel").status_code == 200
    done = wait_status(c, first["id"], timeout=15)
    assert done["status"] == "cancelled", done
    assert done["steps"][0]["status"] == "cancelled"
    kinds = types_of(events_of(c, first["id"]))
    assert kinds.count("run.cancel_requested") == 1
    assert kinds[-1] == "run.cancelled"

    # Cancelling a cancelled run again: 200, nothing changes.
    before = events_of(c, first["id"])
    again = c.post(f"/v1/runs/{first['id']}/cancel")
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "cancelled"
    assert events_of(c, first["id"]) == before


def test_cancel_of_finished_run_is_409_with_current_status(me: Tenant) -> None:
    c = me.client
    run = create_run(c, "api_confirm", me.project, confirm=True)
    assert wait_status(c, run["id"])["status"] == "succeeded"
    body = assert_problem(c.post(f"/v1/runs/{run['id']}/cancel"), 409, "succeeded")
    assert body["current_status"] == "succeeded"
    assert get_run(c, run["id"])["status"] == "succeeded"


def test_one_active_run_per_project_and_user(api: Server, me: Tenant) -> None:
    c = me.client
    first = create_run(c, "api_sleep", me.project, inputs={"sleep_s": 2})
    second = create_run(c, "api_confirm", me.project, confirm=True)
    assert second["status"] == "queued"
    assert "waiting for a concurrency slot" in second["status_reason"]
    # Another user of the same project is not held up by this user's run.
    other = tenant(api, project=me.project)
    try:
        theirs = create_run(other.client, "api_confirm", me.project, confirm=True)
        theirs = wait_status(other.client, theirs["id"])
        assert theirs["status"] == "succeeded"
    finally:
        other.close()

    done_first = wait_status(c, first["id"])
    done_second = wait_status(c, second["id"])
    assert done_first["status"] == done_second["status"] == "succeeded"
    assert theirs["started_at"] < done_first["finished_at"], "the other user's run did not wait"
    assert done_second["started_at"] >= done_first["finished_at"], "the second run waited for the first"
    kinds = types_of(events_of(c, second["id"]))
    assert kinds[:2] == ["run.created", "run.queued"]
    assert kinds.index("run.started") > 1 and kinds[-1] == "run.succeeded"


# --- retry, resume, fork ----------------------------------------------------------------------------


def test_retry_creates_a_new_run(me: Tenant) -> None:
    c = me.client
    old = create_run(c, "api_flaky", me.project, inputs={"tag": "retry-me"}, title="to retry")
    assert wait_status(c, old["id"])["status"] == "failed"
    resp = c.post(f"/v1/runs/{old['id']}/retry", json={"reason": "again"})
    assert resp.status_code == 201, resp.text
    new = resp.json()
    assert new["id"] != old["id"]
    assert new["retry_of"] == old["id"]
    assert new["flow"] == "api_flaky" and new["inputs"] == {"tag": "retry-me"}
    assert new["title"] == "to retry"
    assert "run.retried" in types_of(events_of(c, old["id"]))
    # The retry is a whole new run: its flaky step fails its first attempt again.
    assert wait_status(c, new["id"])["status"] == "failed"
    # A run that has not finished cannot be retried.
    pending = create_run(c, "api_confirm", me.project)
    assert_problem(c.post(f"/v1/runs/{pending['id']}/retry"), 409, "needs_confirmation")


def test_resume_of_failed_run_keeps_succeeded_steps(me: Tenant) -> None:
    c = me.client
    run = create_run(c, "api_flaky", me.project)
    failed = wait_status(c, run["id"])
    assert failed["status"] == "failed"
    steps = {s["key"]: s for s in failed["steps"]}
    assert steps["prepare"]["status"] == "succeeded" and steps["shaky"]["status"] == "failed"
    assert_problem(c.post(f"/v1/runs/{run['id']}/confirm"), 409, "failed")

    resp = c.post(f"/v1/runs/{run['id']}/resume", json={"reason": "fixed it"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] in ("queued", "running")
    done = wait_status(c, run["id"])
    assert done["status"] == "succeeded", done
    steps = {s["key"]: s for s in done["steps"]}
    assert steps["prepare"]["attempt"] == 1, "a succeeded step is kept, not run again"
    assert steps["shaky"]["attempt"] == 2 and steps["shaky"]["output"] == "ok on attempt 2"
    kinds = types_of(events_of(c, run["id"]))
    assert "run.failed" in kinds and "run.resumed" in kinds and kinds[-1] == "run.succeeded"
    starts = [
        e
        for e in events_of(c, run["id"])
        if e["type"] == "step.started" and e["payload"]["step_key"] == "prepare"
    ]
    assert len(starts) == 1
    # Only a failed run can be resumed.
    assert_problem(c.post(f"/v1/runs/{run['id']}/resume"), 409, "succeeded")


def test_fork_from_a_step_copies_upstream_results(me: Tenant) -> None:
    c = me.client
    source = create_run(c, "api_confirm", me.project, confirm=True, inputs={"sleep_s": 0})
    done = wait_status(c, source["id"])
    assert done["status"] == "succeeded"
    resp = c.post(f"/v1/runs/{source['id']}/fork", json={"from_step": "second"})
    assert resp.status_code == 201, resp.text
    fork = resp.json()
    assert fork["id"] != source["id"]
    assert fork["forked_from"] == source["id"] and fork["fork_step"] == "second"
    forked = wait_status(c, fork["id"])
    assert forked["status"] == "succeeded", forked
    steps = {s["key"]: s for s in forked["steps"]}
    assert steps["first"]["output"] == {"n": 1} and steps["second"]["output"] == {"n": 2}
    started = [e["payload"]["step_key"] for e in events_of(c, fork["id"]) if e["type"] == "step.started"]
    assert started == ["second"], "the upstream step is copied, not run again"

    bad = c.post(f"/v1/runs/{source['id']}/fork", json={"from_step": "nope"})
    assert bad.status_code in (400, 422), bad.text
    assert_problem(bad, bad.status_code, "nope")
    assert_problem(c.post(f"/v1/runs/{source['id']}/fork", json={}), 422, "from_step")


# --- idempotency ---------------------------------------------------------------------------------------


def test_idempotency_key_in_body_and_header_returns_the_same_run(me: Tenant) -> None:
    c = me.client
    title = unique("idem")
    body = {"flow": "api_confirm", "project_id": me.project, "title": title, "idempotency_key": "k-body"}
    first = c.post("/v1/runs", json=body)
    second = c.post("/v1/runs", json=body)
    assert first.status_code in (200, 201) and second.status_code in (200, 201), second.text
    assert first.json()["id"] == second.json()["id"]
    # The replay answers with the whole run, as the first create did.
    assert second.json()["steps"] == first.json()["steps"]
    assert second.json() == get_run(c, first.json()["id"])

    header_body = {"flow": "api_confirm", "project_id": me.project, "title": title}
    h1 = c.post("/v1/runs", json=header_body, headers={"Idempotency-Key": "k-header"})
    h2 = c.post("/v1/runs", json=header_body, headers={"Idempotency-Key": "k-header"})
    assert h1.status_code in (200, 201) and h2.status_code in (200, 201), h2.text
    assert h1.json()["id"] == h2.json()["id"] != first.json()["id"]

    listed = c.get("/v1/runs", params={"project_id": me.project, "q": title, "limit": 200}).json()["runs"]
    assert sorted(r["id"] for r in listed) == sorted({first.json()["id"], h1.json()["id"]})
    assert len(listed) == 2, "one row per key"
    assert len(events_of(c, first.json()["id"])) == 1

    # Another user with the same key gets a run of its own.
    other = tenant(me.server, project=me.project)
    try:
        theirs = other.client.post("/v1/runs", json=body)
        assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    finally:
        other.close()


# --- errors as problem+json ----------------------------------------------------------------------------


def test_problem_json_errors(api: Server, me: Tenant) -> None:
    c = me.client
    missing = assert_problem(c.post("/v1/runs", json={"project_id": me.project}), 422, "flow")
    assert any(e["field"] == "flow" for e in missing["errors"])
    wrong_type = assert_problem(c.post("/v1/runs", json={"flow": "api_confirm", "inputs": []}), 422, "inputs")
    assert any(e["field"] == "inputs" for e in wrong_type["errors"])
    extra = assert_problem(c.post("/v1/runs", json={"flow": "api_confirm", "bogus": 1}), 422, "bogus")
    assert any(e["field"] == "bogus" for e in extra["errors"])
    assert_problem(
        c.post("/v1/runs", content=b"{not json", headers={"content-type": "application/json"}), 422
    )
    assert_problem(
        c.post("/v1/runs", json={"flow": "no-such-flow", "project_id": me.project}), 422, "no-such-flow"
    )
    bad_inputs = assert_problem(
        c.post("/v1/runs", json={"flow": "repo-review", "project_id": me.project, "inputs": {"nope": 1}}), 422
    )
    assert "nope" in bad_inputs["detail"]
    assert_problem(c.get("/v1/runs/run_doesnotexist"), 404, "run_doesnotexist")
    assert_problem(c.post("/v1/runs/run_doesnotexist/cancel"), 404, "run_doesnotexist")
    assert_problem(c.get("/v1/no-such-route"), 404)
    assert_problem(c.post("/v1/runs", json={"flow": "api_confirm", "project_id": "no-such-project"}), 404)

    with httpx.Client(base_url=api.url, timeout=10) as anonymous:
        assert_problem(anonymous.get("/v1/runs"), 401, "Bearer")
        assert_problem(anonymous.get("/v1/runs", headers={"Authorization": "Bearer not-a-token"}), 401)
        assert_problem(anonymous.get("/v1/runs", headers={"Authorization": "Basic eDp5"}), 401)

    big = {"flow": "api_confirm", "project_id": me.project, "inputs": {"blob": "x" * 1_100_000}}
    assert_problem(c.post("/v1/runs", json=big), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        yield b'{"flow": "api_confirm", "inputs": {"blob": "'
        for _ in range(12):
            yield b"y" * 100_000
        yield b'"}}'

    assert_problem(c.post("/v1/runs", content=chunks(), headers={"content-type": "application/json"}), 413)
    # None of the refused requests made a run.
    assert c.get("/v1/runs", params={"project_id": me.project}).json()["runs"] == []


# --- lists ------------------------------------------------------------------------------------------------


def test_list_filters_and_cursor_pagination(me: Tenant) -> None:
    c = me.client
    created = [create_run(c, "api_confirm", me.project, title=f"Alpha {i}")["id"] for i in range(7)]
    review = create_run(c, "repo-review", me.project, title="a review", inputs={"path": "."})
    assert wait_status(c, review["id"])["status"] in ("succeeded", "failed")
    newest_first = [review["id"], *reversed(created)]

    everything = c.get("/v1/runs", params={"project_id": me.project}).json()
    assert [r["id"] for r in everything["runs"]] == newest_first
    assert everything["next_cursor"] is None
    stamps = [r["created_at"] for r in everything["runs"]]
    assert stamps == sorted(stamps, reverse=True)

    def ids(**params: Any) -> list[str]:
        resp = c.get("/v1/runs", params={"project_id": me.project, **params})
        assert resp.status_code == 200, resp.text
        return [r["id"] for r in resp.json()["runs"]]

    assert ids(status="needs_confirmation") == list(reversed(created))
    assert ids(flow="repo-review") == [review["id"]]
    assert ids(flow="api_confirm", status="succeeded") == []
    assert ids(q="alpha 3") == [created[3]]
    assert ids(q="ALPHA") == list(reversed(created))
    # Without project_id: every run the caller can see (here, the same ones).
    assert [r["id"] for r in c.get("/v1/runs").json()["runs"]] == newest_first

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"project_id": me.project, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/v1/runs", params=params).json()
        pages.append([r["id"] for r in page["runs"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10
    assert [len(p) for p in pages] == [3, 3, 2]
    flat = [run_id for page in pages for run_id in page]
    assert len(set(flat)) == len(flat), "pages do not overlap"
    assert flat == newest_first

    assert_problem(c.get("/v1/runs", params={"cursor": "!!not-a-cursor!!"}), 400, "cursor")
    assert_problem(c.get("/v1/runs", params={"limit": 0}), 422, "limit")


# --- artifacts and export -------------------------------------------------------------------------------


def test_artifacts_and_export(me: Tenant) -> None:
    c = me.client
    run = create_run(c, "api_confirm", me.project, confirm=True, title="with artifacts")
    done = wait_status(c, run["id"])
    assert done["status"] == "succeeded"
    artifacts = c.get(f"/v1/runs/{run['id']}/artifacts").json()
    by_name = {a["name"]: a for a in artifacts}
    assert set(by_name) == {"notes.txt", "report.md"}
    assert by_name["report.md"]["media_type"] == "text/markdown"
    assert by_name["notes.txt"]["step_key"] == "first" and by_name["notes.txt"]["attempt"] == 1

    report = c.get(f"/v1/runs/{run['id']}/artifacts/{by_name['report.md']['id']}")
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("text/markdown")
    assert report.text == done["report"]
    assert len(report.content) == by_name["report.md"]["size"]
    notes = c.get(f"/v1/runs/{run['id']}/artifacts/{by_name['notes.txt']['id']}")
    assert notes.headers["content-type"].startswith("text/plain")
    assert notes.text == f"notes of {run['id']}\n"
    assert_problem(c.get(f"/v1/runs/{run['id']}/artifacts/art_nope"), 404, "art_nope")

    exported = c.get(f"/v1/runs/{run['id']}/export", params={"format": "json"})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/json")
    document = exported.json()
    assert document["run"]["id"] == run["id"] and document["run"]["status"] == "succeeded"
    assert document["events"] == events_of(c, run["id"])
    assert {a["name"] for a in document["artifacts"]} == {"notes.txt", "report.md"}
    markdown = c.get(f"/v1/runs/{run['id']}/export", params={"format": "md"})
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert run["id"] in markdown.text and "with artifacts" in markdown.text
    assert "run.succeeded" in markdown.text
    assert_problem(c.get(f"/v1/runs/{run['id']}/export", params={"format": "pdf"}), 422, "format")


# --- the input inbox ------------------------------------------------------------------------------------


def test_inputs_inbox_and_answer(me: Tenant) -> None:
    c = me.client
    run = create_run(c, "api_ask", me.project, title="asks")
    waiting = wait_status(c, run["id"], "waiting_for_input")
    assert len(waiting["pending_inputs"]) == 1
    request = waiting["pending_inputs"][0]
    assert request["step_key"] == "approve" and request["prompt"] == "Approve the plan?"
    assert request["schema"]["required"] == ["ok"]

    inbox = c.get("/v1/inputs").json()
    assert [i["id"] for i in inbox] == [request["id"]]
    assert inbox[0]["run_id"] == run["id"] and inbox[0]["status"] == "pending"

    refused = assert_problem(
        c.post(f"/v1/inputs/{request['id']}/answer", json={"answer": {"ok": "yes"}}), 422
    )
    assert refused["errors"], refused
    assert_problem(c.post(f"/v1/inputs/{request['id']}/answer", json={"answer": {}}), 422, "ok")
    assert_problem(c.post(f"/v1/inputs/{request['id']}/answer", json={}), 422, "answer")
    assert get_run(c, run["id"])["status"] == "waiting_for_input"

    answered = c.post(f"/v1/inputs/{request['id']}/answer", json={"answer": {"ok": True}})
    assert answered.status_code == 200, answered.text
    done = wait_status(c, run["id"])
    assert done["status"] == "succeeded", done
    assert {s["key"]: s["output"] for s in done["steps"]}["after"] == {"ok": True}
    assert done["pending_inputs"] == []

    assert_problem(
        c.post(f"/v1/inputs/{request['id']}/answer", json={"answer": {"ok": False}}), 409, "answered"
    )
    assert c.get("/v1/inputs").json() == []
    history = c.get("/v1/inputs", params={"status": "answered"}).json()
    assert [(i["id"], i["answer"], i["answered_by"]) for i in history] == [
        (request["id"], {"ok": True}, me.user)
    ]
    assert_problem(c.post("/v1/inputs/inp_nope/answer", json={"answer": {"ok": True}}), 404, "inp_nope")
    kinds = types_of(events_of(c, run["id"]))
    assert kinds.index("input.requested") < kinds.index("input.answered") < kinds.index("run.succeeded")


# --- catalog, health, metrics -----------------------------------------------------------------------------


def test_catalog_health_and_metrics(api: Server, me: Tenant) -> None:
    c = me.client
    flows = {f["name"]: f for f in c.get("/v1/flows").json()}
    assert {"repo-review", "api_confirm", "api_sleep", "api_ask"} <= set(flows)
    review = flows["repo-review"]
    assert review["category"] == "Review" and review["bands"]
    assert set(review["input_schema"]["properties"]) == {"path", "focus"}
    assert flows["api_confirm"]["require_confirmation"] is True

    one = c.get("/v1/flows/repo-review")
    assert one.status_code == 200
    assert [s["key"] for s in one.json()["steps"]] == [
        "collect",
        "architecture",
        "risks",
        "tests",
        "synthesis",
    ]
    assert_problem(c.get("/v1/flows/no-such-flow"), 404, "no-such-flow")

    agents = c.get("/v1/agents").json()
    assert {("repo-review", "synthesis", "offline")} <= {(a["flow"], a["name"], a["engine"]) for a in agents}

    health = httpx.get(f"{api.url}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["database"] in ("sqlite", "postgresql")

    create_run(c, "api_confirm", me.project)
    metrics = httpx.get(f"{api.url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    lines = metrics.text.splitlines()
    waiting = [line for line in lines if line.startswith('baton_runs{status="needs_confirmation"}')]
    assert waiting and float(waiting[0].split()[-1]) >= 1
    assert any(line.startswith("baton_steps_queued") for line in lines)


# --- tokens ---------------------------------------------------------------------------------------------


def test_tokens_create_list_revoke(api: Server, me: Tenant) -> None:
    c = me.client
    resp = c.post("/v1/tokens", json={"name": "ci-bot"})
    assert resp.status_code == 201, resp.text
    made = resp.json()
    secret = made["token"]
    assert secret and made["name"] == "ci-bot" and made["revoked_at"] is None
    assert secret.startswith(made["prefix"])

    listing = c.get("/v1/tokens")
    assert listing.status_code == 200
    assert secret not in listing.text, "a secret is shown once, never listed"
    rows = {t["id"]: t for t in listing.json()}
    assert made["id"] in rows and "token" not in rows[made["id"]]

    with api.client(secret) as new:
        assert new.get("/v1/runs").status_code == 200
        gone = c.delete(f"/v1/tokens/{made['id']}")
        assert gone.status_code == 200, gone.text
        assert gone.json()["revoked_at"] is not None
        assert_problem(new.get("/v1/runs"), 401)
        assert_problem(new.post("/v1/runs", json={"flow": "api_confirm", "project_id": me.project}), 401)
    assert c.get("/v1/runs").status_code == 200, "the other token still works"
    assert_problem(c.delete("/v1/tokens/tok_nope"), 404)
