"""Tenancy through a real `baton serve`: another project's objects are a 404, never a leak.

The routes come from the server's own /openapi.json, so a route added later is probed too (or
fails the test until it is taught which foreign id to use).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, running_server
from tests.e2e.test_api_support import (
    DIALECTS,
    FLOWS,
    Tenant,
    assert_problem,
    create_run,
    events_of,
    fresh_database,
    get_run,
    sse_events,
    stream_timeout,
    tenant,
    unique,
    wait_status,
    wait_until,
)

#: path parameters that name something of a project; every route with one is probed
SCOPED_PARAMS = {
    "run_id",
    "artifact_id",
    "request_id",
    "project_id",
    "token_id",
    "name",
    "schedule_id",
    "webhook_id",
    "delivery_id",
}
#: routes whose parameter names something global, not of a project
GLOBAL_ROUTES = {("get", "/v1/flows/{name}")}
#: webhooks may target loopback (nothing listens on the discard port: every attempt fails at once),
#: and a failed attempt is final, so B's deliveries stay as they are while the tests compare them
SERVER_ENV = {
    "BATON_WEBHOOKS_ALLOW_PRIVATE": "1",
    "BATON_WEBHOOKS_MAX_ATTEMPTS": "1",
    "BATON_WEBHOOKS_POLL_S": "0.2",
}
#: nothing listens on the discard port; no event goes there but a ping (run.forked never happens)
HOOK_URL = "http://127.0.0.1:9/hooks"


@dataclass
class World:
    """Project B with runs in every state it can hold, and the people around it."""

    server: Server
    canary: str
    alice: Tenant  # member of project A
    ada: Tenant  # admin of project A
    bob: Tenant  # member of project B: owns B's runs
    bea: Tenant  # another member of B: owns B's running run
    vic: Tenant  # viewer of B
    bart: Tenant  # admin of B: owns B's webhook
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # state -> run (as bob sees it)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    request_id: str = ""
    token_id: str = ""
    alice_run: str = ""
    schedule_id: str = ""  # bob's
    webhook_id: str = ""  # bart's
    webhook_secret: str = ""
    delivery_id: str = ""  # the ping of B's webhook
    ada_webhook_id: str = ""  # A's own, to pair with B's delivery

    @property
    def b(self) -> str:
        return self.bob.project

    @property
    def never_shown(self) -> list[str]:
        """Strings that must never reach a user of project A."""
        return [
            self.canary,
            self.bob.token,
            self.bea.token,
            self.vic.token,
            self.bart.token,
            self.webhook_secret,
        ]


@pytest.fixture(scope="module", params=DIALECTS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp(f"tenancy-{request.param}")
    with (
        fresh_database(request.param, home) as url,
        running_server(url, home, flows=FLOWS, extra_env=SERVER_ENV) as srv,
    ):
        project_a, project_b = unique("proj-a"), unique("proj-b")
        people = World(
            server=srv,
            canary=f"CANARY{secrets.token_hex(6)}",
            alice=tenant(srv, project=project_a, user=unique("alice")),
            ada=tenant(srv, project=project_a, user=unique("ada"), role="admin"),
            bob=tenant(srv, project=project_b, user=unique("bob")),
            bea=tenant(srv, project=project_b, user=unique("bea")),
            vic=tenant(srv, project=project_b, user=unique("vic"), role="viewer"),
            bart=tenant(srv, project=project_b, user=unique("bart"), role="admin"),
        )
        try:
            _populate(people)
            yield people
            # Stop the sleeping run, or the server's shutdown waits for it to drain.
            running = people.runs["running"]["id"]
            assert people.bea.client.post(f"/v1/runs/{running}/cancel").status_code == 200
            wait_status(people.bea.client, running)
        finally:
            for who in (people.alice, people.ada, people.bob, people.bea, people.vic, people.bart):
                who.close()


def _populate(w: World) -> None:
    bob, b = w.bob.client, w.b

    def make(flow: str, state: str, **body: Any) -> dict[str, Any]:
        inputs = {"secret": w.canary, **body.pop("inputs", {})}
        return create_run(bob, flow, b, title=f"{state} {w.canary}", inputs=inputs, **body)

    done = make("api_confirm", "succeeded", confirm=True)
    w.runs["succeeded"] = wait_status(bob, done["id"])
    assert w.runs["succeeded"]["status"] == "succeeded"
    failed = make("api_flaky", "failed")
    assert wait_status(bob, failed["id"])["status"] == "failed"
    cancelled = make("api_confirm", "cancelled")
    assert bob.post(f"/v1/runs/{cancelled['id']}/cancel").status_code == 200
    asking = make("api_ask", "waiting")
    waiting = wait_status(bob, asking["id"], "waiting_for_input")
    w.request_id = waiting["pending_inputs"][0]["id"]
    # Bob's slot is held by the waiting run: his next confirmed run waits in the queue.
    queued = make("api_confirm", "queued", confirm=True)
    assert queued["status"] == "queued"
    unconfirmed = make("api_confirm", "unconfirmed")
    sleeping = create_run(
        w.bea.client, "api_sleep", b, title=f"running {w.canary}", inputs={"sleep_s": 600, "secret": w.canary}
    )
    wait_status(w.bea.client, sleeping["id"], "running")
    for state, run_id, who in (
        ("failed", failed["id"], bob),
        ("cancelled", cancelled["id"], bob),
        ("waiting_for_input", asking["id"], bob),
        ("queued", queued["id"], bob),
        ("needs_confirmation", unconfirmed["id"], bob),
        ("running", sleeping["id"], w.bea.client),
    ):
        w.runs[state] = get_run(who, run_id)
        assert w.runs[state]["status"] == state, w.runs[state]
    w.artifacts = bob.get(f"/v1/runs/{done['id']}/artifacts").json()
    assert {a["name"] for a in w.artifacts} == {"notes.txt", "report.md"}
    token = bob.post("/v1/tokens", json={"name": f"bob's {w.canary}", "project_id": b})
    assert token.status_code == 201, token.text
    w.token_id = token.json()["id"]
    _populate_schedules_and_webhooks(w)
    mine = create_run(w.alice.client, "api_confirm", w.alice.project, confirm=True, title="alice's own")
    assert wait_status(w.alice.client, mine["id"])["status"] == "succeeded"
    w.alice_run = mine["id"]


def _populate_schedules_and_webhooks(w: World) -> None:
    """B's schedule (never due), B's webhook with a failed ping delivery, and A's own webhook."""
    bob, bart, b = w.bob.client, w.bart.client, w.b
    schedule = bob.post(
        "/v1/schedules",
        json={
            "flow": "api_confirm",
            "project_id": b,
            "title": f"schedule {w.canary}",
            "inputs": {"secret": w.canary},
            "cron": "0 0 1 1 *",
        },
    )
    assert schedule.status_code == 201, schedule.text
    w.schedule_id = schedule.json()["id"]
    hook = bart.post(
        "/v1/webhooks",
        json={
            "project_id": b,
            "url": f"{HOOK_URL}/{w.canary}",
            "event_types": ["run.forked"],
            "description": f"hook {w.canary}",
        },
    )
    assert hook.status_code == 201, hook.text
    w.webhook_id, w.webhook_secret = hook.json()["id"], hook.json()["secret"]
    ping = bart.post(f"/v1/webhooks/{w.webhook_id}/ping")
    assert ping.status_code == 202, ping.text
    w.delivery_id = ping.json()["id"]
    # Its one attempt fails (nothing listens): then it no longer changes.
    wait_until(
        lambda: bart.get(f"/v1/webhooks/{w.webhook_id}/deliveries").json()[0]["status"] == "failed",
        what="the ping to fail",
    )
    own = w.ada.client.post(
        "/v1/webhooks", json={"project_id": w.alice.project, "url": HOOK_URL, "event_types": ["run.forked"]}
    )
    assert own.status_code == 201, own.text
    w.ada_webhook_id = own.json()["id"]


def b_state(w: World) -> dict[str, Any]:
    """Everything of project B as its own users see it, to compare before and after."""
    bob = w.bob.client
    state: dict[str, Any] = {}
    for run in w.runs.values():
        state[run["id"]] = get_run(bob, run["id"])
        state[f"{run['id']} events"] = events_of(bob, run["id"])
        state[f"{run['id']} artifacts"] = bob.get(f"/v1/runs/{run['id']}/artifacts").json()
    state["project"] = bob.get(f"/v1/projects/{w.b}").json()
    state["members"] = bob.get(f"/v1/projects/{w.b}/members").json()
    state["inputs"] = bob.get("/v1/inputs").json()
    state["tokens"] = [
        {k: v for k, v in t.items() if k != "last_used_at"} for t in bob.get("/v1/tokens").json()
    ]
    state["list"] = bob.get("/v1/runs", params={"project_id": w.b, "limit": 200}).json()
    state["schedules"] = bob.get("/v1/schedules", params={"project_id": w.b}).json()
    state["schedule"] = bob.get(f"/v1/schedules/{w.schedule_id}").json()
    state["webhooks"] = bob.get("/v1/webhooks", params={"project_id": w.b}).json()
    state["deliveries"] = bob.get(f"/v1/webhooks/{w.webhook_id}/deliveries").json()
    assert state["schedules"] and state["webhooks"] and state["deliveries"], state
    return state


# --- the OpenAPI sweep --------------------------------------------------------------------------------


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def minimal_body(schema: dict[str, Any], spec: dict[str, Any]) -> Any:
    """The smallest instance of a request body schema: its required fields with plain values."""
    schema = _resolve(schema, spec)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"]
            return minimal_body(options[0], spec) if options else None
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: minimal_body(props.get(name, {}), spec) for name in schema.get("required", [])}
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        return schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    return {}


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield method, path, operation


def _body(operation: dict[str, Any], spec: dict[str, Any], w: World, who: Tenant, run: dict[str, Any]) -> Any:
    """A body that would succeed if the caller were allowed, so a missing check changes B."""
    special = {
        "fork_run": {"from_step": run["steps"][0]["key"] if run.get("steps") else "first"},
        "answer_input": {"answer": {"ok": True}},
        "set_member": {"user": who.user, "role": "admin"},
        "set_project_policy": {"policy": {"read_only": True}},
        "confirm_run": {"reason": "probe"},
        "cancel_run": {"reason": "probe"},
        "resume_run": {"reason": "probe"},
        "retry_run": {"reason": "probe"},
        "update_webhook": {"description": "probe", "active": False, "event_types": ["*"]},
    }
    if operation.get("operationId") in special:
        return special[operation["operationId"]]
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    return minimal_body(content["schema"], spec) if content else None


def _call(client: httpx.Client, method: str, url: str, body: Any) -> tuple[int, str, str]:
    """Status, content type and body text; a stream is read for a moment only."""
    kwargs: dict[str, Any] = {"timeout": stream_timeout(3.0)}
    if body is not None:
        kwargs["json"] = body
    try:
        with client.stream(method.upper(), url, **kwargs) as resp:
            if resp.headers.get("content-type", "").startswith("text/event-stream"):
                text = ""
                for frame in sse_events(resp):
                    text += "\n".join(frame.lines)
                    break
            else:
                text = resp.read().decode(errors="replace")
            return resp.status_code, resp.headers.get("content-type", ""), text
    except httpx.ReadTimeout:
        return 200, "text/event-stream", "(an open stream)"


def _foreign_ids(w: World, path: str, who: Tenant) -> list[dict[str, str]]:
    """Every substitution of B's ids (and mixes with A's own) for the path's parameters."""
    params = set(re.findall(r"{(\w+)}", path))
    unknown = params - SCOPED_PARAMS
    assert not unknown, (
        f"{path} has parameter(s) {sorted(unknown)}: teach test_tenancy.py which foreign ids to use, "
        "so this route is probed too"
    )
    if "delivery_id" in params:
        pairs = [{"webhook_id": w.webhook_id, "delivery_id": w.delivery_id}]
        if who.role == "admin":  # only A's admin gets past its own webhook to the delivery check
            pairs.append({"webhook_id": w.ada_webhook_id, "delivery_id": w.delivery_id})
        return pairs
    if "webhook_id" in params:
        return [{"webhook_id": w.webhook_id}]
    if "schedule_id" in params:
        return [{"schedule_id": w.schedule_id}]
    if "artifact_id" in params:
        owner = w.runs["succeeded"]["id"]
        return [
            {"run_id": run_id, "artifact_id": a["id"]} for a in w.artifacts for run_id in (owner, w.alice_run)
        ]
    if "run_id" in params:
        return [{"run_id": run["id"]} for run in w.runs.values()]
    if "request_id" in params:
        return [{"request_id": w.request_id}]
    if "project_id" in params:
        return [{"project_id": w.b}]
    if "token_id" in params:
        return [{"token_id": w.token_id}]
    raise AssertionError(f"no foreign ids for {path}")


def _assert_no_leak(
    w: World, what: str, status: int, kind: str, text: str, expected: tuple[int, ...]
) -> None:
    assert status in expected, f"{what}: {status} {text[:300]}"
    if status == 404:
        assert kind.startswith("application/problem+json"), f"{what}: {kind}"
    for secret in w.never_shown:
        assert secret not in text, f"{what} leaked {secret!r}: {text[:300]}"


@pytest.mark.parametrize("attacker", ["alice", "ada"])
def test_every_route_naming_project_b_is_404_for_project_a(world: World, attacker: str) -> None:
    w = world
    who: Tenant = getattr(w, attacker)
    before = b_state(w)
    spec = httpx.get(f"{w.server.url}/openapi.json", timeout=10).json()
    expected: set[tuple[str, str]] = set()
    covered: set[tuple[str, str]] = set()
    calls = 0
    for method, path, operation in _operations(spec):
        params = set(re.findall(r"{(\w+)}", path))
        if not params:
            continue
        if (method, path) in GLOBAL_ROUTES:
            continue
        expected.add((method, path))
        for ids in _foreign_ids(w, path, who):
            run = next((r for r in w.runs.values() if r["id"] == ids.get("run_id")), {})
            url = path.format(**ids)
            status, kind, text = _call(who.client, method, url, _body(operation, spec, w, who, run))
            _assert_no_leak(w, f"{method.upper()} {url} as {attacker}", status, kind, text, (404,))
            calls += 1
        covered.add((method, path))
    assert covered == expected, f"routes not probed: {sorted(expected - covered)}"
    names = {op.get("operationId") for m, p, op in _operations(spec) if (m, p) in covered}
    assert {
        "get_run",
        "cancel_run",
        "fork_run",
        "run_events",
        "run_stream",
        "get_artifact",
        "answer_input",
        "get_project",
        "set_member",
        "revoke_token",
        "get_schedule",
        "pause_schedule",
        "resume_schedule",
        "delete_schedule",
        "get_webhook",
        "update_webhook",
        "delete_webhook",
        "list_webhook_deliveries",
        "ping_webhook",
        "redeliver_webhook_delivery",
    } <= names, names
    assert calls > 60

    # Project B named in a body or a query.
    c = who.client
    body_routes = {
        "create_run": ("POST", "/v1/runs", {"flow": "api_confirm", "project_id": w.b, "confirm": True}),
        "create_token": ("POST", "/v1/tokens", {"name": "sneaky", "project_id": w.b}),
        "create_schedule": (
            "POST",
            "/v1/schedules",
            {"flow": "api_confirm", "project_id": w.b, "cron": "0 0 1 1 *"},
        ),
        "create_webhook": ("POST", "/v1/webhooks", {"project_id": w.b, "url": HOOK_URL}),
    }
    for method, url, body in body_routes.values():
        status, kind, text = _call(c, method, url, body)
        _assert_no_leak(w, f"{method} {url} naming B", status, kind, text, (404,))
    status, kind, text = _call(c, "GET", f"/v1/stream?project_id={w.b}", None)
    _assert_no_leak(w, "the project stream of B", status, kind, text, (404,))
    status, kind, text = _call(c, "GET", f"/v1/runs?project_id={w.b}", None)
    _assert_no_leak(w, "GET /v1/runs?project_id=B", status, kind, text, (200, 404))
    if status == 200:
        assert httpx.Response(200, text=text).json()["runs"] == []
    for url in (f"/v1/schedules?project_id={w.b}", f"/v1/webhooks?project_id={w.b}"):
        status, kind, text = _call(c, "GET", url, None)
        _assert_no_leak(w, f"GET {url}", status, kind, text, (200, 404))
        if status == 200:
            assert httpx.Response(200, text=text).json() == []

    after = b_state(w)
    assert after == before, "a user of project A changed something of project B"
    # Bob's token survived the attempt to revoke it.
    assert w.bob.client.get("/v1/runs").status_code == 200
    assert w.bob.client.get(f"/v1/runs/{w.runs['succeeded']['id']}").status_code == 200


def test_lists_as_project_a_never_show_project_b(world: World) -> None:
    w = world
    c = w.alice.client
    b_ids = [run["id"] for run in w.runs.values()] + [a["id"] for a in w.artifacts]
    b_ids += [w.request_id, w.token_id, w.b, w.schedule_id, w.webhook_id, w.delivery_id]
    lists = {
        "runs": c.get("/v1/runs", params={"limit": 200}),
        "runs by status": c.get("/v1/runs", params={"status": "waiting_for_input"}),
        "runs by text": c.get("/v1/runs", params={"q": w.canary}),
        "runs by flow": c.get("/v1/runs", params={"flow": "api_ask"}),
        "inputs": c.get("/v1/inputs"),
        "answered inputs": c.get("/v1/inputs", params={"status": "answered"}),
        "projects": c.get("/v1/projects"),
        "tokens": c.get("/v1/tokens"),
        "schedules": c.get("/v1/schedules"),
        "webhooks": w.ada.client.get("/v1/webhooks"),
        "deliveries of A's webhook": w.ada.client.get(f"/v1/webhooks/{w.ada_webhook_id}/deliveries"),
    }
    for name, resp in lists.items():
        assert resp.status_code == 200, f"{name}: {resp.text}"
        for secret in [*w.never_shown, *b_ids]:
            assert secret not in resp.text, f"{name} shows {secret!r} of project B"
    assert [r["id"] for r in lists["runs"].json()["runs"]] == [w.alice_run]
    assert [p["id"] for p in lists["projects"].json()] == [w.alice.project]
    assert lists["inputs"].json() == []
    assert lists["schedules"].json() == []
    assert [h["id"] for h in lists["webhooks"].json()] == [w.ada_webhook_id]
    # B's people do see it: the lists are not simply empty.
    assert w.request_id in w.bob.client.get("/v1/inputs").text
    assert w.canary in w.vic.client.get("/v1/runs", params={"q": w.canary}).text
    assert w.canary in w.vic.client.get("/v1/schedules").text
    assert w.delivery_id in w.bob.client.get(f"/v1/webhooks/{w.webhook_id}/deliveries").text
    assert w.canary in w.bob.client.get("/v1/webhooks").text


def test_project_streams_are_scoped(world: World) -> None:
    w = world
    c = w.alice.client
    assert_problem(c.get("/v1/stream", params={"project_id": w.b}), 404, w.b)
    assert_problem(c.get("/v1/stream", params={"project_id": "no-such-project"}), 404)
    # The unfiltered stream replays the caller's own projects only.
    own = create_run(c, "api_confirm", w.alice.project, confirm=True, title="alice streams")
    assert wait_status(c, own["id"])["status"] == "succeeded"
    seen: list[dict[str, Any]] = []
    with c.stream("GET", "/v1/stream", timeout=stream_timeout(15)) as resp:
        assert resp.status_code == 200
        for frame in sse_events(resp):
            seen.append(frame.data)
            assert w.canary not in "\n".join(frame.lines)
            if frame.data["run_id"] == own["id"] and frame.data["type"] == "run.succeeded":
                break
    assert {e["run_id"] for e in seen} == {w.alice_run, own["id"]}
    # Project B's own viewer does get B's events.
    with w.vic.client.stream(
        "GET", "/v1/stream", params={"project_id": w.b}, timeout=stream_timeout(15)
    ) as resp:
        assert resp.status_code == 200
        for frame in sse_events(resp):
            if frame.data["run_id"] == w.runs["succeeded"]["id"]:
                break


def test_viewer_reads_but_cannot_act(world: World) -> None:
    w = world
    v = w.vic.client
    before = b_state(w)
    waiting = w.runs["needs_confirmation"]["id"]
    assert get_run(v, waiting)["status"] == "needs_confirmation"
    assert v.get(f"/v1/runs/{waiting}/events").status_code == 200
    done = w.runs["succeeded"]["id"]
    assert v.get(f"/v1/runs/{done}/artifacts/{w.artifacts[0]['id']}").status_code == 200
    assert v.get(f"/v1/runs/{done}/export", params={"format": "md"}).status_code == 200
    with v.stream("GET", f"/v1/runs/{done}/stream", timeout=stream_timeout(10)) as resp:
        assert resp.status_code == 200
        assert list(sse_events(resp))[-1].data["type"] == "run.succeeded"
    assert w.request_id in v.get("/v1/inputs").text

    assert_problem(v.post(f"/v1/runs/{waiting}/confirm"), 403, "member")
    assert_problem(v.post(f"/v1/runs/{waiting}/cancel"), 403)
    assert_problem(v.post(f"/v1/runs/{w.runs['running']['id']}/cancel"), 403)
    assert_problem(v.post(f"/v1/runs/{w.runs['failed']['id']}/resume"), 403)
    assert_problem(v.post(f"/v1/runs/{done}/retry"), 403)
    assert_problem(v.post(f"/v1/runs/{done}/fork", json={"from_step": "second"}), 403)
    assert_problem(v.post(f"/v1/inputs/{w.request_id}/answer", json={"answer": {"ok": True}}), 403)
    assert_problem(v.post("/v1/runs", json={"flow": "api_confirm", "project_id": w.b}), 403)
    assert_problem(v.post(f"/v1/projects/{w.b}/members", json={"user": w.vic.user, "role": "admin"}), 403)
    assert v.get(f"/v1/schedules/{w.schedule_id}").status_code == 200
    assert_problem(v.post(f"/v1/schedules/{w.schedule_id}/pause"), 403, "member")
    assert_problem(v.delete(f"/v1/schedules/{w.schedule_id}"), 403)
    # Webhooks are for members and admins only; a viewer of B is told so, not told "not found".
    assert_problem(v.get(f"/v1/webhooks/{w.webhook_id}"), 403, "member")
    assert_problem(v.post(f"/v1/webhooks/{w.webhook_id}/ping"), 403)
    assert_problem(w.bob.client.post(f"/v1/webhooks/{w.webhook_id}/ping"), 403, "admin")
    assert b_state(w) == before

    # A member of B may act on B's runs (the viewer's refusals were about the role).
    resp = w.bea.client.post(f"/v1/runs/{waiting}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    w.runs["cancelled_by_member"] = resp.json()
    del w.runs["needs_confirmation"]
    wait_until(lambda: get_run(w.bob.client, waiting)["status"] == "cancelled", what="the cancel")
