"""ModelEngine over the real OpenAI client and wire format, against a scripted server on loopback."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from tests.fakes.openai_server import FakeOpenAIServer, ToolCall, error, hang, stall, text, tool_calls

import baton.agents
from baton.agents.base import EngineUnavailable, OutputInvalid, StepRequest, StepResult, ToolSpec
from baton.agents.llm import ModelEngine
from baton.domain.errors import StepFailed

KEY = "sk-test-0123456789abcdef-secret"

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "score": {"type": "integer", "minimum": 0}},
    "required": ["title", "score"],
}


class FakeContext:
    """A StepContext that records what the engine streams, with arrival times."""

    def __init__(self) -> None:
        self.run_id = "run-1"
        self.step_key = "write"
        self.attempt = 1
        self.inputs: Mapping[str, Any] = {}
        self.upstream: Mapping[str, Any] = {}
        self.deltas: list[str] = []
        self.times: list[float] = []
        self.logs: list[str] = []

    def emit(self, text: str) -> None:
        self.deltas.append(text)
        self.times.append(time.monotonic())

    def log(self, message: str) -> None:
        self.logs.append(message)

    def artifact(self, name: str, content: bytes | str, media_type: str = "text/plain") -> None:
        pass

    @property
    def cancelled(self) -> bool:
        return False


def request(**overrides: Any) -> StepRequest:
    values: dict[str, Any] = {
        "agent": "writer",
        "prompt": "Write a one-line summary of the topic.",
        "inputs": {"topic": "durable workflows"},
        "upstream": {"research": "Durable workflows survive crashes."},
        "engine": "openai:fake-model",
        "persona": "You are a careful technical writer.",
    }
    values.update(overrides)
    return StepRequest(**values)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


def engine_for(server: FakeOpenAIServer, **kwargs: Any) -> ModelEngine:
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.base_url}
    return ModelEngine("openai:fake-model", env=env, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def other_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]


# --- streaming and prompts --------------------------------------------------------------------


async def test_text_streams_as_ordered_deltas_and_output_is_their_concatenation(
    server: FakeOpenAIServer,
) -> None:
    chunks = ("Durable ", "workflows ", "keep ", "going", " after a crash.")
    server.add(text(*chunks, input_tokens=42, output_tokens=9, delay=0.05))
    ctx = FakeContext()

    result = await engine_for(server).run(request(settings={"temperature": 0.2, "max_tokens": 64}), ctx)
    finished = time.monotonic()

    assert ctx.deltas == list(chunks)
    assert result.output == "".join(ctx.deltas)
    # streamed live, as the chunks arrived: not all delivered together at the end of the run
    assert ctx.times[-1] - ctx.times[0] >= 0.15
    assert finished - ctx.times[0] >= 0.15
    assert result == StepResult(
        output="Durable workflows keep going after a crash.",
        engine="openai:fake-model",
        model="fake-model",
        usage={"input_tokens": 42, "output_tokens": 9},
        mode="read-write",
    )


async def test_the_request_carries_persona_task_inputs_upstream_and_settings(
    server: FakeOpenAIServer,
) -> None:
    server.add(text("ok"))
    settings = {"temperature": 0.2, "max_tokens": 64, "top_p": 0.9, "api_key": "ignored"}
    await engine_for(server).run(request(settings=settings), FakeContext())

    sent = server.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "fake-model"
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert (sent.body["temperature"], sent.body["max_completion_tokens"], sent.body["top_p"]) == (
        0.2,
        64,
        0.9,
    )
    assert "api_key" not in sent.body
    assert sent.text_of("system") == "You are a careful technical writer."
    user = sent.text_of("user")
    assert "Write a one-line summary of the topic." in user
    assert "topic: durable workflows" in user
    assert "## research\nDurable workflows survive crashes." in user
    assert "tools" not in sent.body


async def test_usage_is_summed_over_tool_turns_and_only_the_offered_tools_are_sent(
    server: FakeOpenAIServer,
) -> None:
    calls: list[str] = []

    def count_words(text: str) -> int:
        """Count the words in a text."""
        calls.append(text)
        return len(text.split())

    tool = ToolSpec("count_words", "Count the words in a text.", count_words, read_only=True)
    server.add(
        tool_calls(ToolCall("count_words", {"text": "one two three"}), input_tokens=30, output_tokens=7),
        text("It has ", "3 words.", input_tokens=45, output_tokens=4),
    )
    ctx = FakeContext()

    result = await engine_for(server).run(request(tools=(tool,), read_only=True), ctx)

    assert calls == ["one two three"]
    assert result.output == "It has 3 words." == "".join(ctx.deltas)
    assert result.usage == {"input_tokens": 75, "output_tokens": 11}
    assert result.mode == "read-only"
    first, second = server.requests
    assert first.tool_names == ["count_words"]
    tool_results = [m for m in second.messages if m.get("role") == "tool"]
    assert tool_results and tool_results[0]["content"] == "3"


# --- structured output ------------------------------------------------------------------------


async def test_invalid_structured_output_fails_then_feedback_reaches_the_model_and_is_accepted(
    server: FakeOpenAIServer,
) -> None:
    server.add(text('{"title": "Durable', ' runs", "score": "high"}'))
    engine = engine_for(server)

    with pytest.raises(OutputInvalid) as caught:
        await engine.run(request(output_schema=SCHEMA), FakeContext())
    assert caught.value.retryable
    assert "score" in caught.value.message
    assert "is not of type 'integer'" in caught.value.message
    assert "json schema" in server.last.text_of("user").lower()
    assert '"required": ["title", "score"]' in server.last.text_of("user")

    # the step's next attempt: the worker passes the previous error back as feedback
    server.add(text('```json\n{"title": "Durable runs", "score": 4}\n```'))
    ctx = FakeContext()
    result = await engine.run(request(output_schema=SCHEMA, attempt=2, feedback=caught.value.message), ctx)

    assert result.output == {"title": "Durable runs", "score": 4}
    second_prompt = server.last.text_of("user")
    assert "Your previous answer was rejected: the output does not match the output schema" in second_prompt
    assert "score: 'high' is not of type 'integer'" in second_prompt
    assert second_prompt.rstrip().endswith("Answer again.")
    assert "".join(ctx.deltas).startswith("```json")


async def test_a_missing_field_is_named(server: FakeOpenAIServer) -> None:
    server.add(text('{"score": 2}'))
    with pytest.raises(OutputInvalid, match="title: 'title' is a required property"):
        await engine_for(server).run(request(output_schema=SCHEMA), FakeContext())


async def test_prose_instead_of_json_is_invalid_output(server: FakeOpenAIServer) -> None:
    server.add(text("Sure! The title is Durable runs."))
    with pytest.raises(OutputInvalid, match="not JSON"):
        await engine_for(server).run(request(output_schema=SCHEMA), FakeContext())


# --- failures ---------------------------------------------------------------------------------


async def test_a_server_error_is_a_retryable_engine_failure_naming_the_server(
    server: FakeOpenAIServer,
) -> None:
    server.add(error(500, "the GPU caught fire"))
    with pytest.raises(EngineUnavailable) as caught:
        await engine_for(server).run(request(), FakeContext())
    assert caught.value.retryable
    assert f"127.0.0.1:{server.port}/v1" in caught.value.message
    assert "HTTP 500" in caught.value.message
    assert "the GPU caught fire" in caught.value.message
    assert len(server.requests) == 1  # no hidden SDK retries: the step's attempts are the retries


async def test_rate_limiting_is_retryable_and_reports_retry_after(server: FakeOpenAIServer) -> None:
    server.add(error(429, "slow down", headers={"Retry-After": "7"}))
    with pytest.raises(EngineUnavailable, match="retry after 7 s") as caught:
        await engine_for(server).run(request(), FakeContext())
    assert caught.value.retryable
    assert len(server.requests) == 1


async def test_rejected_credentials_are_not_retryable_and_the_key_is_not_repeated(
    server: FakeOpenAIServer,
) -> None:
    server.add(error(401, f"Incorrect API key provided: {KEY}"))
    with pytest.raises(EngineUnavailable) as caught:
        await engine_for(server).run(request(), FakeContext())
    assert not caught.value.retryable
    assert "OPENAI_API_KEY" in caught.value.message
    assert "Incorrect API key provided" in caught.value.message
    assert KEY not in caught.value.message


async def test_an_unreachable_server_is_a_retryable_failure_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = ModelEngine(f"openai-compatible:tiny@{url}", env={})
    with pytest.raises(EngineUnavailable) as caught:
        await engine.run(request(engine=engine.spec), FakeContext())
    assert caught.value.retryable
    assert "cannot reach" in caught.value.message
    assert url in caught.value.message


async def test_a_hanging_server_ends_at_the_workers_timeout_without_leaking(server: FakeOpenAIServer) -> None:
    server.add(hang())
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await engine_for(server).run(request(), FakeContext())
    assert time.monotonic() - started < 3
    # The wait ends as soon as the server sees the client leave; 15 s only matters on a loaded
    # CI machine, where the fake server's thread noticed after more than 3 s (one CI run).
    assert await asyncio.to_thread(server.wait_for_disconnect, 15), "the HTTP request was left open"
    await asyncio.sleep(0)
    assert other_tasks() == []


async def test_a_hanging_server_ends_at_the_engines_timeout_as_retryable(server: FakeOpenAIServer) -> None:
    server.add(hang())
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match="did not answer in time") as caught:
        await engine_for(server, timeout=0.3).run(request(), FakeContext())
    assert caught.value.retryable
    assert time.monotonic() - started < 3
    assert await asyncio.to_thread(server.wait_for_disconnect, 15)


async def test_a_stream_that_stalls_midway_times_out_after_its_deltas(server: FakeOpenAIServer) -> None:
    server.add(stall("Half an ", "answer"))
    ctx = FakeContext()
    with pytest.raises(EngineUnavailable, match="did not answer in time"):
        await engine_for(server, timeout=0.3).run(request(), ctx)
    assert ctx.deltas == ["Half an ", "answer"]


async def test_cancelling_mid_stream_closes_the_connection(server: FakeOpenAIServer) -> None:
    server.add(stall("Hello ", "wor"))
    ctx = FakeContext()
    task = asyncio.create_task(engine_for(server).run(request(), ctx))
    for _ in range(200):
        if len(ctx.deltas) == 2:
            break
        await asyncio.sleep(0.01)
    assert ctx.deltas == ["Hello ", "wor"]

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(server.wait_for_disconnect, 15), "the server never saw the client leave"
    assert other_tasks() == []


# --- keys -------------------------------------------------------------------------------------


async def test_a_missing_openai_key_names_the_variable(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    with pytest.raises(EngineUnavailable, match="set OPENAI_API_KEY") as caught:
        await ModelEngine("openai:fake-model").run(request(), FakeContext())
    assert not caught.value.retryable
    assert server.requests == []


async def test_keys_are_read_from_the_process_environment(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", KEY)
    server.add(text("fine"))
    engine = ModelEngine(f"openai-compatible:fake-model@{server.base_url}")
    result = await engine.run(request(engine=engine.spec), FakeContext())
    assert result.output == "fine"
    assert server.last.headers["authorization"] == f"Bearer {KEY}"


async def test_ollama_needs_no_key_and_finds_its_v1_api(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    monkeypatch.setenv("OLLAMA_BASE_URL", server.base_url.removesuffix("/v1"))
    server.add(text("local ", "answer"))
    result = await ModelEngine("ollama:qwen2.5").run(request(engine="ollama:qwen2.5"), FakeContext())
    assert (result.output, result.model) == ("local answer", "qwen2.5")
    assert server.last.path == "/v1/chat/completions"
    assert server.last.body["model"] == "qwen2.5"


@pytest.mark.parametrize(
    "reply",
    [
        error(500, f"upstream said {KEY}"),
        error(400, f"bad request with key {KEY}"),
        error(404, f"no model; key was {KEY}"),
        error(403, f"forbidden: {KEY}"),
        text("not json at all"),
    ],
    ids=["500", "400", "404", "403", "invalid-output"],
)
async def test_the_key_never_appears_in_an_error(server: FakeOpenAIServer, reply: Any) -> None:
    server.add(reply)
    with pytest.raises(StepFailed) as caught:
        await engine_for(server).run(request(output_schema=SCHEMA), FakeContext())
    failure = caught.value
    for shown in (str(failure), repr(failure), failure.message, str(pickle.loads(pickle.dumps(failure)))):
        assert KEY not in shown
    assert failure.__cause__ is None


async def test_the_test_guard_allows_only_loopback_servers(server: FakeOpenAIServer) -> None:
    # tests/conftest.py sets ALLOW_NETWORK_ENGINES = False: the fake server on 127.0.0.1 is allowed ...
    assert baton.agents.ALLOW_NETWORK_ENGINES is False
    server.add(text("local"))
    assert (await engine_for(server).run(request(), FakeContext())).output == "local"
    # ... a server elsewhere is not, and nothing is sent
    remote = ModelEngine(
        "openai:fake-model", env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://10.9.9.9/v1"}
    )
    with pytest.raises(EngineUnavailable, match="ALLOW_NETWORK_ENGINES") as caught:
        await remote.run(request(), FakeContext())
    assert not caught.value.retryable
    assert KEY not in caught.value.message


# --- live (optional) --------------------------------------------------------------------------

LIVE_MODEL = os.environ.get("BATON_LIVE_MODEL")


@pytest.mark.skipif(
    not LIVE_MODEL,
    reason="set BATON_LIVE_MODEL (for example ollama:qwen2.5) to run against a real model server",
)
async def test_live_model_streams_text_and_structured_output(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LIVE_MODEL is not None
    monkeypatch.setattr(baton.agents, "ALLOW_NETWORK_ENGINES", True)  # the live server may be remote
    engine = ModelEngine(LIVE_MODEL)
    ctx = FakeContext()
    async with asyncio.timeout(180):
        result = await engine.run(
            request(engine=LIVE_MODEL, prompt="Reply with one short sentence.", settings={"max_tokens": 60}),
            ctx,
        )
    assert isinstance(result.output, str) and result.output.strip()
    assert result.output == "".join(ctx.deltas)
    assert result.usage["output_tokens"] > 0

    feedback = None
    for attempt in (1, 2, 3):  # the step's attempts, as the worker would make them
        try:
            async with asyncio.timeout(180):
                structured = await engine.run(
                    request(engine=LIVE_MODEL, output_schema=SCHEMA, attempt=attempt, feedback=feedback),
                    FakeContext(),
                )
            break
        except OutputInvalid as invalid:
            feedback = invalid.message
    else:
        pytest.fail(f"no valid structured output in 3 attempts; last error: {feedback}")
    assert set(structured.output) >= {"title", "score"}
