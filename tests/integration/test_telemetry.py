"""OpenTelemetry: one trace per run with the expected span tree, correlated logs, OTLP export, free when off.

Also a flow source (`--flows tests.integration.test_telemetry`) for the worker subprocesses below.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.openai_server import FakeOpenAIServer, text

from baton import telemetry
from baton.domain.errors import StepFailed
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import open_runtime

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("baton.tests.traced")

# --- flows ------------------------------------------------------------------------------------------

traced = Flow("otel_traced", title="A code step, an agent step on a model, a step that fails once")


@traced.step()
def prepare(ctx: Any) -> str:
    log.warning("preparing %s", ctx.run_id)
    return "notes"


traced.agent("write", engine="openai:fake-model", prompt="Write one line.", needs=["prepare"])


@traced.step(needs=["write"], max_attempts=2, backoff_s=0)
def publish(ctx: Any) -> str:
    if ctx.attempt == 1:
        raise StepFailed("the first attempt fails on purpose", retryable=True)
    return "published"


plain = Flow("otel_plain", title="Two code steps (no model engine)")


@plain.step()
def one(ctx: Any) -> int:
    return 1


@plain.step(needs=["one"])
def two(ctx: Any) -> int:
    return int(ctx.upstream["one"]) + 1


FLOWS = [traced, plain]


# --- in-memory exporters ----------------------------------------------------------------------------


@pytest.fixture
def exported() -> Iterator[tuple[Any, Any]]:
    """Tracing on in this process, into the SDK's in-memory span and log exporters."""
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans, logs = InMemorySpanExporter(), InMemoryLogRecordExporter()
    telemetry.configure(span_exporter=spans, log_exporter=logs, batch=False)
    try:
        yield spans, logs
    finally:
        telemetry.disable()


async def test_a_run_is_one_trace_with_a_span_per_step_attempt_and_model_call(
    database_url: str, exported: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    spans, logs = exported
    with FakeOpenAIServer(text("One ", "line.", input_tokens=42, output_tokens=7)) as model:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", model.base_url)
        async with open_runtime(database_url, catalog=Catalog(FLOWS), upgrade=False) as rt:
            run = await rt.lifecycle.create_run(RunRequest(flow="otel_traced"))
            await rt.worker(WorkerSettings(lease_s=5, poll_s=0.05)).run(until_idle=True)
            finished = await rt.lifecycle.get_run(run["id"])
    assert finished["status"] == "succeeded", finished.get("status_reason")

    run_id = run["id"]
    finished_spans = spans.get_finished_spans()
    assert {s.context.trace_id for s in finished_spans} == {telemetry.trace_id_of(run_id)}

    [root] = [s for s in finished_spans if s.name == "run otel_traced"]
    assert root.parent is None
    assert root.context.span_id == telemetry.run_span_id_of(run_id)
    assert root.attributes["baton.run.status"] == "succeeded"
    assert root.attributes["gen_ai.usage.input_tokens"] == 42
    assert root.start_time <= root.end_time

    steps = sorted(
        (s for s in finished_spans if s.name.startswith("step ")),
        key=lambda s: (s.attributes["baton.step.key"], s.attributes["baton.step.attempt"]),
    )
    assert [(s.attributes["baton.step.key"], s.attributes["baton.step.attempt"]) for s in steps] == [
        ("prepare", 1),
        ("publish", 1),
        ("publish", 2),
        ("write", 1),
    ]
    for span in steps:
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.attributes["baton.run.id"] == run_id
        assert span.attributes["baton.flow"] == "otel_traced"
        assert str(span.attributes["baton.worker.id"])
    outcomes = [s.attributes["baton.step.outcome"] for s in steps]
    assert outcomes == ["succeeded", "retrying", "succeeded", "succeeded"]
    assert steps[1].attributes["baton.step.error"] == "the first attempt fails on purpose"

    [chat] = [s for s in finished_spans if s.name == "chat fake-model"]
    write = steps[3]
    assert chat.parent is not None and chat.parent.span_id == write.context.span_id
    assert chat.attributes["gen_ai.request.model"] == "fake-model"
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 42
    assert chat.attributes["gen_ai.usage.output_tokens"] == 7
    assert chat.attributes["baton.step.attempt"] == 1
    assert chat.attributes["baton.status"] == "ok"

    # The log line written inside `prepare` is exported inside that step's span.
    [line] = [r.log_record for r in logs.get_finished_logs() if r.log_record.body == f"preparing {run_id}"]
    assert line.trace_id == telemetry.trace_id_of(run_id)
    assert line.span_id == steps[0].context.span_id


async def test_a_failed_model_call_is_an_error_span_and_the_run_span_says_why(
    sqlite_url: str, exported: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    spans, _logs = exported
    flow = Flow("otel_refused")
    flow.agent("write", engine="openai:fake-model", max_attempts=1)
    from tests.fakes.openai_server import error

    with FakeOpenAIServer(error(401, "bad key")) as model:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", model.base_url)
        async with open_runtime(sqlite_url, catalog=Catalog([flow]), upgrade=False) as rt:
            run = await rt.lifecycle.create_run(RunRequest(flow="otel_refused"))
            await rt.worker(WorkerSettings(lease_s=5, poll_s=0.05)).run(until_idle=True)

    by_name = {s.name: s for s in spans.get_finished_spans()}
    chat, step, root = by_name["chat fake-model"], by_name["step write"], by_name["run otel_refused"]
    assert chat.status.status_code.name == "ERROR"
    assert chat.attributes["baton.status"] == "error"
    assert chat.attributes["error.type"] == "EngineUnavailable"
    assert step.attributes["baton.step.outcome"] == "failed"
    assert "refused the credentials" in str(step.attributes["baton.step.error"])
    assert root.attributes["baton.run.status"] == "failed"
    assert root.status.status_code.name == "ERROR"
    assert root.context.trace_id == telemetry.trace_id_of(run["id"])


async def test_a_run_cancelled_before_any_step_ran_still_has_its_run_span(
    database_url: str, exported: tuple[Any, Any]
) -> None:
    spans, _ = exported
    async with open_runtime(database_url, catalog=Catalog(FLOWS), upgrade=False) as rt:
        run = await rt.lifecycle.create_run(RunRequest(flow="otel_plain"))
        cancelled = await rt.lifecycle.cancel(run["id"], reason="not needed", by="alice")
    assert cancelled["status"] == "cancelled"
    [root] = [s for s in spans.get_finished_spans() if s.name == "run otel_plain"]
    assert root.parent is None
    assert (root.context.trace_id, root.context.span_id) == (
        telemetry.trace_id_of(run["id"]),
        telemetry.run_span_id_of(run["id"]),
    )
    assert root.attributes["baton.run.status"] == "cancelled"
    assert root.status.description == "cancelled by alice: not needed"


# --- the real process: off costs nothing, on exports at exit ------------------------------------------


def _worker(database_url: str, env: dict[str, str]) -> list[str]:
    """`baton worker --until-idle` in a fresh interpreter; the opentelemetry modules it had loaded."""
    script = (
        "import json, sys\n"
        "from baton.cli import app\n"
        "try:\n"
        f"    app(['worker', '--until-idle', '--poll', '0.05', '--log-level', 'warning', '--database', "
        f"{database_url!r}, '--flows', 'tests.integration.test_telemetry'], standalone_mode=False)\n"
        "finally:\n"
        "    print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


async def _create_plain_run(database_url: str) -> str:
    async with open_runtime(database_url, catalog=Catalog(FLOWS), upgrade=False) as rt:
        run = await rt.lifecycle.create_run(RunRequest(flow="otel_plain"))
    return str(run["id"])


async def _status(database_url: str, run_id: str) -> str:
    async with open_runtime(database_url, catalog=Catalog(FLOWS), upgrade=False) as rt:
        return str((await rt.lifecycle.get_run(run_id))["status"])


def _env_without_otel(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, "BATON_HOME": str(ROOT / ".pytest_cache"), **extra}


async def test_with_no_endpoint_no_opentelemetry_module_is_loaded(sqlite_url: str) -> None:
    run_id = await _create_plain_run(sqlite_url)
    loaded = _worker(sqlite_url, _env_without_otel())
    assert await _status(sqlite_url, run_id) == "succeeded"
    assert loaded == []


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, str, int]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).received.append((self.path, self.headers.get("content-type", ""), len(body)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_an_otlp_endpoint_receives_the_traces_when_the_worker_exits(sqlite_url: str) -> None:
    run_id = await _create_plain_run(sqlite_url)
    _Receiver.received = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
        loaded = _worker(sqlite_url, _env_without_otel(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint))
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert await _status(sqlite_url, run_id) == "succeeded"
    assert "opentelemetry.sdk.trace" in loaded
    traces = [r for r in _Receiver.received if r[0] == "/v1/traces"]
    assert traces, f"no export reached the receiver: {_Receiver.received}"
    assert all(content_type == "application/x-protobuf" and size > 0 for _, content_type, size in traces)


def test_baton_run_in_local_mode_exports_its_trace_at_exit(sqlite_url: str) -> None:
    _Receiver.received = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "baton", "run", "otel_plain", "--no-confirm", "--database", sqlite_url]
            + ["--flows", "tests.integration.test_telemetry"],
            cwd=ROOT,
            env=_env_without_otel(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert done.returncode == 0, done.stdout + done.stderr
    traces = [r for r in _Receiver.received if r[0] == "/v1/traces"]
    assert traces, f"no export reached the receiver: {_Receiver.received}"


# --- pure decisions ---------------------------------------------------------------------------------


def test_ids_are_derived_from_the_run_id_alone() -> None:
    assert telemetry.trace_id_of("r1") == telemetry.trace_id_of("r1") != telemetry.trace_id_of("r2")
    assert 0 < telemetry.trace_id_of("r1") < 2**128
    assert 0 < telemetry.run_span_id_of("r1") < 2**64


def test_tracing_is_wanted_only_with_an_endpoint_or_the_flag() -> None:
    assert not telemetry.wanted({})
    assert telemetry.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert telemetry.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert telemetry.wanted({}, flag=True)
    assert not telemetry.wanted({"OTEL_SDK_DISABLED": "true"}, flag=True)


def test_model_engines_are_recognised_by_their_spec() -> None:
    assert telemetry.model_of("openai:gpt-4o") == ("openai", "gpt-4o")
    assert telemetry.model_of("openai-compatible:llama3@http://127.0.0.1:8080/v1") == (
        "openai-compatible",
        "llama3",
    )
    assert telemetry.model_of("offline") is None
    assert telemetry.model_of("cli:gemini") is None
