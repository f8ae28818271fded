"""Schemathesis against a real `baton serve` and its own /openapi.json, on SQLite and PostgreSQL.

Every operation but the two SSE streams (infinite by design) goes through all of Schemathesis'
phases: the schema's examples, coverage of each parameter's edges, fuzzed (valid and invalid)
bodies and parameters, and stateful sequences that follow the OpenAPI links (create -> get, cancel,
retry, resume...). With an admin token of project `p1` there must be no 5xx, and every response
must match its declared status code, content type and schema. Missing, made-up, expired and revoked
tokens are R13's (tests/reliability/test_r13_schemathesis.py), which rotates all six kinds.

The `st` CLI runs as a subprocess. With a valid token it loads this module as its hooks module
(SCHEMATHESIS_HOOKS): the auth provider below mints alice's token straight in the database and
mints a fresh one when a test revoked the one in use (DELETE /v1/tokens/{id} is fuzzed too, and
answers 401 from then on), so one revocation does not turn the rest of the run into 401s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.server import make_token, running_server

REPO = Path(__file__).resolve().parents[2]
ST = str(Path(sys.executable).with_name("st"))
#: set in the `st` process only: the database the auth provider mints tokens in
DATABASE_ENV = "BATON_TEST_ST_DATABASE"
HOOKS_MODULE = "tests.e2e.test_schemathesis"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
STREAMS = ("run_stream", "project_stream")
#: the fuzzer must reach the handlers, not the per-token rate limit (429 is still documented)
SERVER_ENV = {"BATON_RATE_PER_S": "100000", "BATON_RATE_BURST": "100000"}

pytestmark = pytest.mark.slow


if os.environ.get(DATABASE_ENV):  # imported by `st` as its hooks module
    import schemathesis

    @schemathesis.auth()
    class AliceToken:
        """alice, admin of p1; after a 401 (her token was revoked by a test) a new token."""

        def get(self, case: Any, context: Any) -> str:
            return make_token(os.environ[DATABASE_ENV], "alice", "p1", role="admin")

        def set(self, case: Any, data: str, context: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def run_schemathesis(
    url: str,
    workdir: Path,
    *,
    database_url: str,
    max_examples: int,
    phases: str = "examples,coverage,fuzzing,stateful",
) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, int]]]:
    """`st run` against the server; returns the process and the (path, status) of every response."""
    har = workdir / "requests.har"
    args = [
        ST, "run", f"{url}/openapi.json",
        "--checks", CHECKS,
        "--phases", phases,
        "--max-examples", str(max_examples),
        "--workers", "1",
        "--seed", "20240601",
        "--generation-database", "none",
        "--suppress-health-check", "all",
        "--request-timeout", "30",
        "--report", "har", "--report-har-path", str(har),
        "--no-color",
    ]  # fmt: skip
    for operation in STREAMS:
        args += ["--exclude-operation-id", operation]
    env = {k: v for k, v in os.environ.items() if k not in (DATABASE_ENV, "SCHEMATHESIS_HOOKS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env[DATABASE_ENV] = database_url
    env["SCHEMATHESIS_HOOKS"] = HOOKS_MODULE
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    responses = []
    if har.exists():
        for entry in json.loads(har.read_text())["log"]["entries"]:
            path = urlsplit(entry["request"]["url"]).path
            responses.append((path, int(entry["response"]["status"])))
    return result, responses


def explain(result: subprocess.CompletedProcess[str], responses: list[tuple[str, int]]) -> str:
    statuses = Counter(status for _, status in responses)
    return f"statuses {dict(sorted(statuses.items()))}\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"


def test_schemathesis_with_an_admin_token(database_url: str, tmp_path: Path) -> None:
    with running_server(database_url, tmp_path, extra_env=SERVER_ENV) as server:
        result, responses = run_schemathesis(server.url, tmp_path, database_url=database_url, max_examples=50)
    why = explain(result, responses)
    assert responses, why
    assert not [r for r in responses if r[1] >= 500], why
    assert result.returncode == 0, why
    # The token reached the handlers: /v1 calls succeeded, not only 401s and 422s.
    assert len([r for r in responses if r[0].startswith("/v1/") and r[1] < 300]) > 50, why
