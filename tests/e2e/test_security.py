"""Security through a real `baton serve`: hashed tokens, the session cookie, CSRF, bounds, and secrets.

Each test would fail if its protection broke: a plaintext token in the database file, a cookie
without HttpOnly/SameSite/Secure (over TLS), a cookie-authenticated write accepted without the
CSRF header, a body over the limit accepted, or a planted model key or API token found anywhere a
run wrote (every table's rows, the server's log, the exports, every API answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import textwrap
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import MetaData, create_engine, select

from baton import auth
from baton.api import dependencies
from tests.e2e import apiflows
from tests.e2e.server import Server, make_token, running_server
from tests.e2e.test_api_support import TERMINAL, assert_problem, create_run, wait_status
from tests.fakes.openai_server import FakeOpenAIServer, error, text

pytestmark = pytest.mark.slow

FLOWS = [str(apiflows.PATH)]
WRITES = ("post", "put", "patch", "delete")


# --- tokens at rest ----------------------------------------------------------------------------------


def table_rows(database_url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, as plain dicts (reflected, so a table added later is read too)."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {
                name: [dict(row._mapping) for row in conn.execute(select(table))]
                for name, table in meta.tables.items()
            }
    finally:
        engine.dispose()


def dump(rows: dict[str, list[dict[str, Any]]]) -> str:
    def text_of(value: Any) -> str:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value).decode("utf-8", errors="replace")
        return json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)

    return "\n".join(
        f"{table} {column}={text_of(value)}"
        for table, items in rows.items()
        for row in items
        for column, value in row.items()
    )


def test_tokens_are_stored_only_as_hashes(database_url: str, tmp_path: Path) -> None:
    with running_server(database_url, tmp_path, flows=FLOWS) as server:
        token = make_token(database_url, "hasher", "p1", role="admin")
        with server.client(token) as client:
            made = client.post("/v1/tokens", json={"name": "second", "project_id": "p1"})
            assert made.status_code == 201, made.text
            second = made.json()["token"]
            assert client.get("/v1/runs").status_code == 200
            listed = client.get("/v1/tokens")
            assert listed.status_code == 200
        assert token not in listed.text and second not in listed.text
        stored = dump(table_rows(database_url))
        for secret in (token, second):
            assert secret not in stored
            # Not even the part after the shown prefix (a truncated copy would be as bad).
            assert secret[len(auth.token_display_prefix(secret)) :] not in stored
            assert auth.hash_token(secret) in stored
        if database_url.startswith("sqlite"):
            raw = b"".join(p.read_bytes() for p in tmp_path.glob("baton.db*") if p.is_file())
            assert raw and token.encode() not in raw and second.encode() not in raw


def test_token_and_csrf_checks_compare_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both secrets comparisons go through hmac.compare_digest (a `==` would leak by timing)."""
    calls: list[tuple[str, str]] = []
    real = auth.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((str(a), str(b)))
        return bool(real(a, b))

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    token = auth.new_token()
    assert auth.hashes_match(auth.hash_token(token), token)
    assert not auth.hashes_match(auth.hash_token(token), token + "x")
    assert len(calls) == 2
    calls.clear()
    signed = auth.sign(token, "s3cret")
    assert auth.unsign(signed, "s3cret") == token
    assert auth.unsign(signed, "other") is None
    assert len(calls) == 2
    calls.clear()
    assert dependencies.csrf_matches("abc", "abc") and not dependencies.csrf_matches("abc", "abd")
    assert not dependencies.csrf_matches(None, "abc") and not dependencies.csrf_matches("abc", None)
    assert len(calls) == 2


# --- the session cookie ------------------------------------------------------------------------------


def _cookies(response: httpx.Response) -> dict[str, dict[str, Any]]:
    """Every Set-Cookie of a response: name -> {value, and its attributes lowercased}."""
    out: dict[str, dict[str, Any]] = {}
    for header in response.headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            flags = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
            out[name] = {
                "value": morsel.value,
                "httponly": "httponly" in flags,
                "secure": "secure" in flags,
                "samesite": str(morsel["samesite"]).lower(),
                "path": morsel["path"],
            }
    return out


def _sign_in(server: Server, token: str, headers: dict[str, str] | None = None) -> httpx.Response:
    response = httpx.get(
        f"{server.url}/login", params={"token": token}, headers=headers or {}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return response


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """One SQLite server for the cookie, CSRF and bounds tests, and an admin of p1."""
    home = tmp_path_factory.mktemp("security")
    url = f"sqlite:///{home / 'baton.db'}"
    from baton.store.migrate import upgrade

    upgrade(url)
    with running_server(url, home, flows=FLOWS) as server:
        yield server, make_token(url, "cookie-admin", "p1", role="admin")


def test_session_cookie_is_signed_httponly_samesite_and_secure_only_over_tls(web: tuple[Server, str]) -> None:
    server, token = web
    plain = _cookies(_sign_in(server, token))
    session, csrf = plain["baton_session"], plain["baton_csrf"]
    assert session["httponly"] and session["samesite"] in ("lax", "strict") and session["path"] == "/"
    assert not csrf["httponly"] and csrf["samesite"] in ("lax", "strict")  # the page's script reads it
    assert not session["secure"] and not csrf["secure"]  # plain http: a Secure cookie would be dropped
    # Signed: the value is the token plus a MAC; a changed MAC or another server's secret is refused.
    assert session["value"] != token and session["value"].startswith(token + ".")
    assert auth.unsign(session["value"], "test-secret") == token
    api = f"{server.url}/v1/runs"
    assert httpx.get(api, cookies={"baton_session": session["value"]}).status_code == 200
    forged = session["value"][:-4] + ("0000" if not session["value"].endswith("0000") else "1111")
    assert_problem(httpx.get(api, cookies={"baton_session": forged}), 401)
    assert_problem(httpx.get(api, cookies={"baton_session": auth.sign(token, "another-secret")}), 401)
    assert_problem(httpx.get(api, cookies={"baton_session": token}), 401)  # unsigned
    # Behind a TLS-terminating proxy on a trusted address (uvicorn trusts loopback by default).
    tls = _cookies(_sign_in(server, token, {"X-Forwarded-Proto": "https"}))
    assert tls["baton_session"]["secure"] and tls["baton_csrf"]["secure"]
    assert tls["baton_session"]["httponly"] and tls["baton_session"]["samesite"] in ("lax", "strict")
    # The project switcher's cookie is the server's alone too.
    for headers, secure in (({}, False), ({"X-Forwarded-Proto": "https"}, True)):
        page = httpx.get(
            f"{server.url}/",
            params={"project": "p1"},
            cookies={"baton_session": session["value"]},
            headers=headers,
        )
        chosen = _cookies(page)["baton_project"]
        assert chosen["httponly"] and chosen["samesite"] == "lax" and chosen["secure"] is secure
    # The pasted-token form signs in the same way.
    form = httpx.post(
        f"{server.url}/login",
        data={"token": token, "next": "/"},
        headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert form.status_code == 303 and _cookies(form)["baton_session"]["secure"]


def test_forwarded_proto_from_an_untrusted_address_is_ignored(sqlite_url: str, tmp_path: Path) -> None:
    """Only a trusted proxy's X-Forwarded-Proto counts (FORWARDED_ALLOW_IPS names the proxies)."""
    env = {"FORWARDED_ALLOW_IPS": "192.0.2.7"}
    with running_server(sqlite_url, tmp_path, extra_env=env) as server:
        token = make_token(sqlite_url, "proxied", "p1")
        cookies = _cookies(_sign_in(server, token, {"X-Forwarded-Proto": "https"}))
        assert not cookies["baton_session"]["secure"]


# --- CSRF ------------------------------------------------------------------------------------------------


def _write_operations(server: Server) -> list[tuple[str, str, str]]:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    ops = [
        (method, path, operation["operationId"])
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if method in WRITES
    ]
    assert len(ops) >= 10, ops
    return ops


def _concrete(path: str, run_id: str) -> str:
    return (
        path.replace("{run_id}", run_id)
        .replace("{project_id}", "p1")
        .replace("{request_id}", "inp_missing")
        .replace("{token_id}", "tok_missing")
    )


def test_cookie_writes_need_the_csrf_header_and_bearer_writes_do_not(web: tuple[Server, str]) -> None:
    server, token = web
    jar = _cookies(_sign_in(server, token))
    session, csrf = jar["baton_session"]["value"], jar["baton_csrf"]["value"]
    ops = _write_operations(server)
    with (
        server.client(token) as bearer,
        httpx.Client(base_url=server.url, cookies={"baton_session": session, "baton_csrf": csrf}) as cookie,
        httpx.Client(base_url=server.url, cookies={"baton_session": session}) as no_csrf_cookie,
    ):
        run_id = create_run(bearer, "api_confirm", "p1")["id"]

        def snapshot() -> tuple[Any, ...]:
            return (
                bearer.get(f"/v1/runs/{run_id}").json(),
                bearer.get(f"/v1/runs/{run_id}/events").json(),
                bearer.get("/v1/tokens").json(),
                bearer.get("/v1/projects/p1").json(),
                bearer.get("/v1/projects/p1/members").json(),
            )

        before = snapshot()
        refused = 0
        for method, path, _ in ops:
            url = _concrete(path, run_id)
            for headers in ({}, {"X-Baton-CSRF": "wrong"}, {"X-Baton-CSRF": ""}):
                assert_problem(
                    cookie.request(method.upper(), url, json={}, headers=headers), 403, "X-Baton-CSRF"
                )
                refused += 1
            # Without the csrf cookie, the header alone proves nothing.
            alone = no_csrf_cookie.request(method.upper(), url, json={}, headers={"X-Baton-CSRF": csrf})
            assert_problem(alone, 403, "X-Baton-CSRF")
        assert refused == 3 * len(ops)
        after = snapshot()
        assert [_without_last_used(x) for x in after] == [_without_last_used(x) for x in before]
        for method, path, op in ops:
            # With the header, the request reaches the handler (which may still refuse the body);
            # a bearer token needs no CSRF header at all.
            url = _concrete(path, run_id)
            allowed = cookie.request(method.upper(), url, json={}, headers={"X-Baton-CSRF": csrf})
            assert allowed.status_code != 403 or "X-Baton-CSRF" not in allowed.text, (op, allowed.text)
            with_bearer = bearer.request(method.upper(), url, json={})
            assert with_bearer.status_code not in (401, 403), (op, with_bearer.text)
        # Dashboard forms: sign-out needs the CSRF value; a sign-in posted from another site is refused.
        out = cookie.post("/logout", data={"csrf": "wrong"}, follow_redirects=False)
        assert out.status_code == 303 and "baton_session" not in _cookies(out)
        foreign = httpx.post(
            f"{server.url}/login",
            data={"token": token},
            headers={"Origin": "https://evil.example"},
            follow_redirects=False,
        )
        assert foreign.status_code == 403 and "baton_session" not in _cookies(foreign)
        signed_out = cookie.post("/logout", data={"csrf": csrf}, follow_redirects=False)
        assert signed_out.status_code == 303 and signed_out.headers["location"] == "/login"


def _without_last_used(value: Any) -> Any:
    if isinstance(value, list):
        return [_without_last_used(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_last_used(v) for k, v in value.items() if k != "last_used_at"}
    return value


def test_bodies_over_the_limit_are_413_on_every_write(web: tuple[Server, str]) -> None:
    server, token = web
    big = b'{"pad": "' + b"x" * (1_048_576 + 10) + b'"}'
    with server.client(token) as client:
        for method, path, _ in _write_operations(server):
            url = _concrete(path, "run_missing")
            resp = client.request(
                method.upper(), url, content=big, headers={"content-type": "application/json"}
            )
            assert_problem(resp, 413, "over")


# --- project tokens ----------------------------------------------------------------------------------


def _server_admin_token(database_url: str, user: str) -> str:
    from baton.api.bootstrap import create_token_for
    from baton.runtime import open_runtime

    async def body() -> str:
        async with open_runtime(database_url, [], upgrade=None) as rt:
            token: str = await rt.db.write(
                create_token_for, user, project_id="p1", name="root", admin=True, role="admin"
            )
            return token

    return asyncio.run(body())


def test_a_project_token_never_widens_its_reach(web: tuple[Server, str]) -> None:
    """A token limited to p1 cannot mint a wider token, see or revoke the user's other tokens, or
    use its user's server-admin powers (each would reach the user's other projects)."""
    server, _ = web
    name = "root-" + secrets.token_hex(3)
    root = _server_admin_token(server.database_url, name)
    make_token(server.database_url, name, "p2")  # the user is in p1 and p2
    with server.client(root) as user:
        assert {p["id"] for p in user.get("/v1/projects").json()} >= {"p1", "p2"}
        wide = user.post("/v1/tokens", json={"name": "wide"}).json()
        narrow = user.post("/v1/tokens", json={"name": "narrow", "project_id": "p1"})
        assert narrow.status_code == 201, narrow.text
    with server.client(narrow.json()["token"]) as scoped:
        minted = scoped.post("/v1/tokens", json={"name": "escape"})
        assert minted.status_code == 201, minted.text
        assert minted.json()["project_id"] == "p1"  # not a user-wide token
        with server.client(minted.json()["token"]) as child:
            assert [p["id"] for p in child.get("/v1/projects").json()] == ["p1"]
        listed = scoped.get("/v1/tokens").json()
        assert listed and {t["project_id"] for t in listed} == {"p1"}, listed
        assert_problem(scoped.delete(f"/v1/tokens/{wide['id']}"), 404)
        assert_problem(scoped.post("/v1/projects", json={"id": "escaped"}), 403, "server admin")
    with server.client(root) as user:  # the user's own token keeps its powers
        assert user.post("/v1/projects", json={"id": f"made-{secrets.token_hex(3)}"}).status_code == 201


# --- secrets ---------------------------------------------------------------------------------------------

SECRET_FLOWS = '''
"""Flows that handle a model key carelessly, for the planted-secret test."""
import os

from baton.domain.errors import StepFailed
from baton.flows.spec import Flow

model = Flow("sec_model", title="One model step")
model.agent("ask", engine="openai:fake-model", prompt="Say something.", max_attempts=2, backoff_s=0.1)

careless = Flow("sec_careless", title="Steps that put the key in logs, output and errors")


@careless.step(max_attempts=1)
def chatter(ctx):
    key = os.environ["OPENAI_API_KEY"]
    ctx.log(f"calling the model with {key}")
    ctx.emit(f"key={key}\\n")
    ctx.artifact("debug.txt", f"OPENAI_API_KEY={key}\\n")
    return {"used": key}


@careless.step(needs=["chatter"], max_attempts=1)
def explode(ctx):
    raise RuntimeError("the model refused key " + os.environ["OPENAI_API_KEY"])


failing = Flow("sec_failing", title="A step failing with the key in its message")


@failing.step(max_attempts=1)
def refuse(ctx):
    raise StepFailed("401 from the model for key " + os.environ["OPENAI_API_KEY"], retryable=False)


shell = Flow("sec_shell", title="A command agent that prints its environment")
shell.agent("dump", engine="cli:envdump", max_attempts=1)
'''

ENVDUMP = {
    "envdump": {
        "command": ["sh", "-c", 'env; echo "stderr key: $OPENAI_API_KEY" >&2; exit 3'],
        "read_only_args": ["ro"],
    }
}


async def test_command_agents_get_no_inherited_secret_unless_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from baton.agents.command import CliAgentConfig
    from baton.domain.errors import UsageError
    from tests.integration.test_command_engine import FakeContext, fake_engine, step_request

    monkeypatch.setenv("FAKE_API_KEY", "sk-fake-planted-0123")
    monkeypatch.setenv("FAKE_SERVICE_TOKEN", "tok-fake-planted-4567")
    monkeypatch.setenv("FAKE_PLAIN", "visible")
    ctx: Any = FakeContext()
    plain = await fake_engine("--echo-args", output="json").run(step_request(tmp_path), ctx)
    assert plain.output["env"].get("FAKE_PLAIN") == "visible"
    assert "FAKE_API_KEY" not in plain.output["env"] and "FAKE_SERVICE_TOKEN" not in plain.output["env"]
    declared = await fake_engine("--echo-args", output="json", pass_env=["FAKE_API_KEY"]).run(
        step_request(tmp_path), ctx
    )
    assert declared.output["env"].get("FAKE_API_KEY") == "sk-fake-planted-0123"
    assert "FAKE_SERVICE_TOKEN" not in declared.output["env"]
    with pytest.raises(UsageError, match="pass_env"):
        CliAgentConfig(name="bad", command=["true"], pass_env="FAKE_API_KEY")


@contextlib.contextmanager
def recording(server: Server, token: str, seen: list[str]) -> Iterator[httpx.Client]:
    """A client whose every response (status line, headers, body) is kept for the grep."""

    def keep(response: httpx.Response) -> None:
        response.read()
        seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")

    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30.0,
        event_hooks={"response": [keep]},
    ) as client:
        yield client


def test_a_planted_model_key_and_token_appear_nowhere(sqlite_url: str, tmp_path: Path) -> None:
    key = f"sk-planted-{secrets.token_hex(12)}"
    flows = tmp_path / "secflows.py"
    flows.write_text(textwrap.dedent(SECRET_FLOWS))
    fake = FakeOpenAIServer(
        error(401, f"Incorrect API key provided: {key}. Find your key at platform.example"),
        error(500, f"upstream failed for {key}"),
        text("Your key is ", key, "."),
    ).start()
    env = {
        "OPENAI_API_KEY": key,
        "OPENAI_BASE_URL": fake.base_url,
        "BATON_CLI_AGENTS": json.dumps(ENVDUMP),
    }
    seen: list[str] = []
    try:
        with running_server(sqlite_url, tmp_path, flows=[str(flows)], extra_env=env) as server:
            token = make_token(sqlite_url, "keeper", "p1", role="admin")
            with recording(server, token, seen) as client:
                run_ids = []
                for flow in ("sec_model", "sec_model", "sec_careless", "sec_failing", "sec_shell"):
                    run_ids.append(create_run(client, flow, "p1", title=f"{flow} run")["id"])
                    wait_status(client, run_ids[-1], timeout=30)
                for run_id in run_ids:
                    assert client.get(f"/v1/runs/{run_id}").json()["status"] in TERMINAL
                    for fmt in ("json", "md"):
                        assert (
                            client.get(f"/v1/runs/{run_id}/export", params={"format": fmt}).status_code == 200
                        )
                    client.get(f"/v1/runs/{run_id}/events", params={"limit": 10_000})
                    for artifact in client.get(f"/v1/runs/{run_id}/artifacts").json():
                        client.get(f"/v1/runs/{run_id}/artifacts/{artifact['id']}")
                # Error answers: a made-up token shaped like the real one, bad ids, bad bodies.
                client.get("/v1/runs/run_missing")
                client.post("/v1/runs", json={"flow": "sec_model", "project_id": "p1", "inputs": 3})
                wrong = f"{token[:-4]}zzzz"
                resp = httpx.get(f"{server.url}/v1/runs", headers={"Authorization": f"Bearer {wrong}"})
                seen.append(resp.text)
                assert wrong not in resp.text
            statuses = {r: client_status for r, client_status in _statuses(server, token, run_ids).items()}
            log = server.log.read_text(errors="replace") if server.log else ""
        assert set(statuses.values()) <= set(TERMINAL), statuses
        assert fake.wait_for_requests(1), "the model engine never called the fake model"
        assert fake.last.headers.get("authorization") == f"Bearer {key}"  # the key went where it belongs
        rows = dump(table_rows(sqlite_url))
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("baton.db*") if p.is_file())
        places = {"database rows": rows, "server log": log, "api answers": "\n".join(seen)}
        places["database file"] = raw.decode("utf-8", errors="replace")
        leaks = [
            f"{what} in {where}: {line[:300]}"
            for where, text_ in places.items()
            for line in text_.splitlines()
            for what, secret in (("model key", key), ("api token", token))
            if secret in line
        ]
        assert not leaks, "\n".join(leaks[:40])
        # The runs really did handle the key: the redaction marker is what is left of it.
        assert "[redacted]" in rows
    finally:
        fake.stop()


def _statuses(server: Server, token: str, run_ids: list[str]) -> dict[str, str]:
    with server.client(token) as client:
        return {run_id: client.get(f"/v1/runs/{run_id}").json()["status"] for run_id in run_ids}
