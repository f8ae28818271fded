"""R13: Schemathesis, all phases (stateful included), on SQLite and PostgreSQL, with every kind of token.

One `st run` per backend against a real `baton serve` and its served /openapi.json. This module is
also the run's hooks module (SCHEMATHESIS_HOOKS): its auth provider gives each generated request
one of six credentials in turn: alice's user token (admin of p1), a token limited to p1, no
token, a made-up token, an expired and a revoked one. The stateful phase follows the spec's
OpenAPI links (create run -> get -> events -> cancel / resume / retry / confirm / fork).

Pass (RELIABILITY.md R13): 0 failures of not_a_server_error, status_code_conformance,
content_type_conformance and response_schema_conformance; 0 5xx for every kind of token; the
valid tokens reach the handlers (2xx), the others get only 401 from /v1. Examples per operation:
20 on PR, 100 nightly (tests/reliability/tier.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.test_api_support import DIALECTS, FLOWS, fresh_database
from tests.e2e.test_schemathesis import CHECKS, SERVER_ENV, STREAMS
from tests.reliability.tier import size

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ST = str(Path(sys.executable).with_name("st"))
HOOKS_MODULE = "tests.reliability.test_r13_schemathesis"
#: set in the `st` process only: JSON {"database": url, "tokens": {kind: secret}}
TOKENS_ENV = "BATON_TEST_R13_TOKENS"
EXAMPLES = size(20, 100)
#: the order credentials are handed out in, per ten requests: mostly valid, every kind each round
ROTATION = (
    "user",
    "project",
    "user",
    "missing",
    "project",
    "user",
    "invalid",
    "project",
    "expired",
    "revoked",
)
VALID = ("user", "project")


def mint_tokens(database_url: str) -> dict[str, str]:
    """alice's tokens of every kind, written straight into the database."""
    from baton.api.bootstrap import create_token_for
    from baton.auth import hash_token, new_token, token_display_prefix
    from baton.runtime import open_runtime
    from baton.store import tenancy as tenancy_store

    def write(conn: Any) -> dict[str, str]:
        tokens = {"user": create_token_for(conn, "alice", project_id="p1", name="r13", role="admin")}
        user = tenancy_store.get_user_by_name(conn, "alice")
        assert user is not None
        for kind, project, expires in (
            ("project", "p1", None),
            ("expired", None, 1.0),
            ("revoked", None, None),
        ):
            secret = new_token()
            token_id = tenancy_store.insert_token(
                conn,
                user.id,
                f"r13 {kind}",
                hash_token(secret),
                token_display_prefix(secret),
                project_id=project,
                expires_at=expires,
            )
            if kind == "revoked":
                tenancy_store.revoke_token(conn, token_id)
            tokens[kind] = secret
        tokens["invalid"] = new_token()  # well-formed, never stored
        return tokens

    async def body() -> dict[str, str]:
        async with open_runtime(database_url, [], upgrade=None) as rt:
            result: dict[str, str] = await rt.db.write(write)
            return result

    return asyncio.run(body())


if os.environ.get(TOKENS_ENV):  # imported by `st` as its hooks module
    import schemathesis

    _config = json.loads(os.environ[TOKENS_ENV])
    _lock = threading.Lock()
    _state: dict[str, Any] = {"n": 0, "tokens": dict(_config["tokens"])}

    @schemathesis.auth()
    class RotatingTokens:
        """Each request gets the next kind of credential of ROTATION (a revoked valid one is re-minted)."""

        def get(self, case: Any, context: Any) -> str:
            return "rotating"

        def set(self, case: Any, data: str, context: Any) -> None:
            with _lock:
                kind = ROTATION[_state["n"] % len(ROTATION)]
                _state["n"] += 1
                token = _state["tokens"].get(kind)
            headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            headers["X-R13-Kind"] = kind
            case.headers = headers

    @schemathesis.hook
    def after_call(context: Any, case: Any, response: Any) -> None:
        """A fuzzed DELETE /v1/tokens/{id} may revoke a valid token: mint a fresh one of that kind."""
        kind = (case.headers or {}).get("X-R13-Kind")
        if kind in VALID and response.status_code == 401:
            fresh = mint_tokens(_config["database"])
            with _lock:
                _state["tokens"].update({k: fresh[k] for k in VALID})


def run_st(
    url: str, database_url: str, workdir: Path
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    har = workdir / "r13.har"
    args = [
        ST, "run", f"{url}/openapi.json",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(EXAMPLES),
        "--workers", "1",  # st 4.32 under 2 threads hits a CPython ast race (SystemError)
        "--seed", "13",
        "--generation-database", "none",
        "--suppress-health-check", "all",
        "--request-timeout", "30",
        "--report", "har", "--report-har-path", str(har),
        # The auth hook hands out every kind of credential itself (missing ones included).
        "--generation-with-security-parameters", "false",
        "--no-color",
    ]  # fmt: skip
    for operation in STREAMS:
        args += ["--exclude-operation-id", operation]
    env = {k: v for k, v in os.environ.items() if k != "SCHEMATHESIS_HOOKS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env[TOKENS_ENV] = json.dumps({"database": database_url, "tokens": mint_tokens(database_url)})
    env["SCHEMATHESIS_HOOKS"] = HOOKS_MODULE
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    return result, entries


def _kind(entry: dict[str, Any]) -> str:
    for header in entry["request"]["headers"]:
        if header["name"].lower() == "x-r13-kind":
            return str(header["value"])
    return "unknown"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_schemathesis_all_phases_every_token_kind(dialect: str, tmp_path: Path) -> None:
    from tests.e2e.server import running_server

    with (
        fresh_database(dialect, tmp_path) as database_url,
        running_server(database_url, tmp_path, flows=FLOWS, extra_env=SERVER_ENV) as server,
    ):
        result, entries = run_st(server.url, database_url, tmp_path)
    by_kind: dict[str, Counter[int]] = {}
    for entry in entries:
        kind, status = _kind(entry), int(entry["response"]["status"])
        by_kind.setdefault(kind, Counter())[status] += 1
    summary = {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())}
    why = f"statuses by token kind {summary}\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
    print(f"R13 {dialect}: {sum(sum(c.values()) for c in by_kind.values())} requests; {summary}")
    assert entries, why
    assert not [e for e in entries if int(e["response"]["status"]) >= 500], why
    assert result.returncode == 0, why
    assert set(ROTATION) <= set(by_kind), why
    for kind in VALID:  # the valid tokens reached the handlers
        assert sum(n for s, n in by_kind[kind].items() if 200 <= s < 300) > 20, why
    for kind in set(ROTATION) - set(VALID):  # the others never got past authentication on /v1
        refused = [
            e
            for e in entries
            if _kind(e) == kind
            and urlsplit(e["request"]["url"]).path.startswith("/v1/")
            and int(e["response"]["status"]) < 300
        ]
        assert not refused, f"{kind}: {refused[:3]}\n{why}"
