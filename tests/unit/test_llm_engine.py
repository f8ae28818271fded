"""ModelEngine without a network: spec parsing, prompts, settings, tools and output checks.

The model is pydantic-ai's own FunctionModel or TestModel, injected through `ModelEngine(model=...)`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest, SystemPromptPart, ToolReturnPart, UserPromptPart
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.models.ollama import OllamaModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.models.test import TestModel

from baton.agents.base import EngineUnavailable, OutputInvalid, PolicyRefused, StepRequest, ToolSpec
from baton.agents.llm import ModelEngine, ModelSpec, build_prompt, model_for, parse_output, parse_spec
from baton.domain.errors import StepFailed

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]},
    },
    "required": ["title"],
}


class Ctx:
    run_id = "run-1"
    step_key = "s"
    attempt = 1
    inputs: Mapping[str, Any] = {}
    upstream: Mapping[str, Any] = {}
    cancelled = False

    def __init__(self) -> None:
        self.deltas: list[str] = []

    def emit(self, text: str) -> None:
        self.deltas.append(text)

    def log(self, message: str) -> None:
        pass

    def artifact(self, name: str, content: bytes | str, media_type: str = "text/plain") -> None:
        pass


def request(**overrides: Any) -> StepRequest:
    values: dict[str, Any] = {
        "agent": "writer",
        "prompt": "Summarise the findings.",
        "inputs": {},
        "upstream": {},
        "engine": "test",
    }
    values.update(overrides)
    return StepRequest(**values)


# --- spec strings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("openai:gpt-4o-mini", ModelSpec("openai", "gpt-4o-mini")),
        ("anthropic:claude-sonnet-4-5", ModelSpec("anthropic", "claude-sonnet-4-5")),
        ("ollama:qwen2.5:7b", ModelSpec("ollama", "qwen2.5:7b")),
        (
            "openai-compatible:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1",
            ModelSpec("openai-compatible", "Qwen/Qwen2.5-7B-Instruct", "http://127.0.0.1:8000/v1"),
        ),
        (
            "openai-compatible:local@https://llm.example.com:8443/v1",
            ModelSpec("openai-compatible", "local", "https://llm.example.com:8443/v1"),
        ),
    ],
)
def test_specs_parse(spec: str, expected: ModelSpec) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("openai", "not a model engine"),
        ("gemini:pro", "not a model engine"),
        ("offline", "not a model engine"),
        ("openai:", "names no valid model"),
        ("ollama:two words", "names no valid model"),
        ("openai-compatible:model", "needs a model and the server's base URL"),
        ("openai-compatible:@http://127.0.0.1:8000/v1", "needs a model"),
        ("openai-compatible:model@ftp://host/v1", "needs a model"),
        ("openai-compatible:m@http://user:pw@127.0.0.1:8000/v1", "OPENAI_COMPATIBLE_API_KEY"),
        ("openai-compatible:@http://user:pw@127.0.0.1:8000/v1", "needs a model"),
    ],
)
def test_bad_specs_are_refused_for_good(spec: str, complaint: str) -> None:
    with pytest.raises(EngineUnavailable, match=complaint) as caught:
        parse_spec(spec)
    assert not caught.value.retryable
    assert "pw" not in caught.value.message


def test_model_for_builds_each_provider_from_the_environment() -> None:
    env = {
        "OPENAI_API_KEY": "sk-openai",
        "OPENAI_BASE_URL": "http://proxy.local/v1",
        "ANTHROPIC_API_KEY": "sk-ant",
        "OLLAMA_BASE_URL": "http://gpu-box:11434",
    }
    openai, label, name = model_for("openai:gpt-4o-mini", env=env)
    assert isinstance(openai, OpenAIChatModel) and (label, name) == ("openai", "gpt-4o-mini")
    assert openai.client.base_url == "http://proxy.local/v1/"
    assert openai.client.api_key == "sk-openai"

    anthropic, label, _ = model_for("anthropic:claude-sonnet-4-5", env=env)
    assert isinstance(anthropic, AnthropicModel) and label == "anthropic"

    ollama, label, name = model_for("ollama:qwen2.5", env=env)
    assert isinstance(ollama, OllamaModel) and (label, name) == ("ollama", "qwen2.5")
    assert str(ollama.client.base_url) == "http://gpu-box:11434/v1/"

    compatible, label, name = model_for("openai-compatible:llama@http://127.0.0.1:8080/v1", env={})
    assert isinstance(compatible, OpenAIChatModel) and (label, name) == ("openai-compatible", "llama")
    assert str(compatible.client.base_url) == "http://127.0.0.1:8080/v1/"


def test_ollama_defaults_to_the_local_server() -> None:
    model, _, _ = model_for("ollama:llama3.2", env={})
    assert isinstance(model, OllamaModel)
    assert str(model.client.base_url) == "http://127.0.0.1:11434/v1/"


def test_explicit_arguments_beat_the_environment() -> None:
    model, _, _ = model_for(
        "openai:gpt-4o", env={"OPENAI_API_KEY": "from-env"}, api_key="explicit", base_url="http://x.local/v1"
    )
    assert isinstance(model, OpenAIChatModel)
    assert model.client.api_key == "explicit"
    assert str(model.client.base_url) == "http://x.local/v1/"


@pytest.mark.parametrize(
    ("spec", "var"), [("openai:gpt-4o", "OPENAI_API_KEY"), ("anthropic:c", "ANTHROPIC_API_KEY")]
)
def test_a_missing_key_names_the_variable(spec: str, var: str) -> None:
    with pytest.raises(EngineUnavailable, match=f"set {var}") as caught:
        model_for(spec, env={})
    assert not caught.value.retryable


def test_the_engine_parses_its_spec_when_built_but_reads_keys_only_when_run() -> None:
    with pytest.raises(EngineUnavailable):
        ModelEngine("openai-compatible:nourl")
    engine = ModelEngine("openai:gpt-4o", env={})  # no key yet: listing agents must not fail
    assert engine.spec == "openai:gpt-4o"
    assert engine.supports_read_only()


async def test_the_network_guard_refuses_real_engines_in_tests() -> None:
    # tests/conftest.py sets baton.agents.ALLOW_NETWORK_ENGINES = False
    engine = ModelEngine("openai:gpt-4o", env={"OPENAI_API_KEY": "sk-x"})
    with pytest.raises(EngineUnavailable, match="ALLOW_NETWORK_ENGINES") as caught:
        await engine.run(request(engine=engine.spec), Ctx())
    assert not caught.value.retryable


# --- the prompt -------------------------------------------------------------------------------


def test_the_prompt_renders_task_inputs_upstream_schema_and_feedback_in_that_order() -> None:
    prompt = build_prompt(
        request(
            inputs={"path": "src/", "depth": 2},
            upstream={"scan": {"files": 3}, "notes": "all good"},
            output_schema=SCHEMA,
            feedback="the output does not match the output schema: title: 'title' is a required property.",
        )
    )
    task = prompt.index("Summarise the findings.")
    inputs = prompt.index("Inputs:\n- path: src/\n- depth: 2")
    upstream = prompt.index('Results of earlier steps:\n\n## scan\n{"files": 3}\n\n## notes\nall good')
    schema = prompt.index(json.dumps(SCHEMA))
    feedback = prompt.index(
        "Your previous answer was rejected: the output does not match the output schema: "
        "title: 'title' is a required property. Answer again."
    )
    assert task < inputs < upstream < schema < feedback
    assert prompt.endswith("Answer again.")


def test_long_upstream_values_are_cut_with_a_note() -> None:
    prompt = build_prompt(request(upstream={"big": "x" * 10_000}), max_value_chars=100)
    assert "x" * 100 + "… [9900 more characters not shown]" in prompt
    assert "x" * 101 not in prompt


def test_a_plain_request_has_no_schema_or_feedback_sections() -> None:
    assert build_prompt(request(prompt="  Hello.  ")) == "Hello."
    assert build_prompt(request(prompt="")) == "Do the work of the writer agent."


# --- structured output ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        '{"title": "T", "tags": ["a"]}',
        '```json\n{"title": "T", "tags": ["a"]}\n```',
        'Here you go:\n{"title": "T", "tags": ["a"]}\nHope that helps!',
    ],
)
def test_json_is_found_in_common_wrappings(answer: str) -> None:
    assert parse_output(answer, SCHEMA) == {"title": "T", "tags": ["a"]}


def test_validation_errors_name_each_field() -> None:
    with pytest.raises(OutputInvalid) as caught:
        parse_output('{"tags": ["a", 3], "meta": {}}', SCHEMA)
    message = caught.value.message
    assert caught.value.retryable
    assert "title: 'title' is a required property" in message
    assert "tags.1: 3 is not of type 'string'" in message
    assert "meta.score: 'score' is a required property" in message


def test_a_string_schema_accepts_plain_text() -> None:
    assert parse_output("just words", {"type": "string"}) == "just words"


def test_not_json_is_invalid() -> None:
    with pytest.raises(OutputInvalid, match="not JSON"):
        parse_output("no braces here", SCHEMA)


# --- running on pydantic-ai's own test models -------------------------------------------------


def last_request(messages: list[ModelMessage]) -> ModelRequest:
    requests = [m for m in messages if isinstance(m, ModelRequest)]
    return requests[-1]


async def test_a_run_streams_with_persona_as_system_prompt_and_passes_settings() -> None:
    seen: dict[str, Any] = {}

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        first = messages[0]
        assert isinstance(first, ModelRequest)
        seen["system"] = [p.content for p in first.parts if isinstance(p, SystemPromptPart)]
        seen["user"] = [p.content for p in first.parts if isinstance(p, UserPromptPart)]
        seen["settings"] = info.model_settings
        seen["tools"] = info.function_tools
        for piece in ("alpha ", "beta ", "gamma"):
            yield piece

    engine = ModelEngine("test", model=FunctionModel(stream_function=stream), timeout=30)
    ctx = Ctx()
    result = await engine.run(
        request(
            persona="You are terse.",
            inputs={"q": "why"},
            settings={"temperature": 0.1, "max_tokens": 50, "top_p": 0.5, "base_url": "http://evil"},
        ),
        ctx,
    )

    assert ctx.deltas == ["alpha ", "beta ", "gamma"]
    assert result.output == "alpha beta gamma"
    assert seen["system"] == ["You are terse."]
    assert seen["user"] == ["Summarise the findings.\n\nInputs:\n- q: why"]
    assert seen["tools"] == []
    settings = seen["settings"]
    assert settings["temperature"] == 0.1 and settings["max_tokens"] == 50 and settings["top_p"] == 0.5
    assert settings["max_retries"] == 0 and settings["timeout"] == 30
    assert "base_url" not in settings


@pytest.mark.parametrize(
    "settings", [{"temperature": "hot"}, {"max_tokens": 10.5}, {"top_p": True}], ids=["str", "float", "bool"]
)
async def test_bad_model_settings_fail_the_step_for_good(settings: dict[str, Any]) -> None:
    engine = ModelEngine("test", model=TestModel())
    with pytest.raises(StepFailed, match="model setting") as caught:
        await engine.run(request(settings=settings), Ctx())
    assert not caught.value.retryable


async def test_exactly_the_offered_tools_reach_the_model_and_run() -> None:
    def read_file(path: str) -> str:
        """Read a file."""
        return f"contents of {path}"

    def list_files() -> list[str]:
        return ["a.txt"]

    tools = (
        ToolSpec("read_file", "Read a file under the workspace.", read_file, read_only=True),
        ToolSpec("list_files", "List the workspace.", list_files, read_only=True),
    )
    offered: list[tuple[str, str | None]] = []

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        returns = [p for p in last_request(messages).parts if isinstance(p, ToolReturnPart)]
        if not returns:
            offered.extend((t.name, t.description) for t in info.function_tools)
            yield {0: DeltaToolCall("read_file", json.dumps({"path": "a.txt"}), tool_call_id="c1")}
        else:
            yield f"The file says: {returns[0].content}"

    result = await ModelEngine("test", model=FunctionModel(stream_function=stream)).run(
        request(tools=tools, read_only=True), Ctx()
    )
    assert sorted(offered) == [
        ("list_files", "List the workspace."),
        ("read_file", "Read a file under the workspace."),
    ]
    assert result.output == "The file says: contents of a.txt"
    assert result.mode == "read-only"


async def test_a_failing_tool_is_reported_to_the_model_not_raised() -> None:
    def read_file(path: str) -> str:
        raise PermissionError(f"{path} is outside the workspace")

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        returns = [p for p in last_request(messages).parts if isinstance(p, ToolReturnPart)]
        if not returns:
            yield {0: DeltaToolCall("read_file", json.dumps({"path": "../etc/passwd"}), tool_call_id="c1")}
        else:
            yield f"Could not read it: {returns[0].content}"

    tool = ToolSpec("read_file", "Read a file.", read_file, read_only=True)
    result = await ModelEngine("test", model=FunctionModel(stream_function=stream)).run(
        request(tools=(tool,)), Ctx()
    )
    assert "PermissionError: ../etc/passwd is outside the workspace" in result.output


async def test_a_policy_refusal_from_a_tool_ends_the_step() -> None:
    def write_file(path: str) -> str:
        raise PolicyRefused("writing is not allowed", rule="read_only")

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[DeltaToolCalls]:
        yield {0: DeltaToolCall("write_file", json.dumps({"path": "x"}), tool_call_id="c1")}

    tool = ToolSpec("write_file", "Write a file.", write_file, read_only=False)
    with pytest.raises(PolicyRefused, match="writing is not allowed"):
        await ModelEngine("test", model=FunctionModel(stream_function=stream)).run(
            request(tools=(tool,)), Ctx()
        )


async def test_a_read_only_request_with_a_writing_tool_is_refused_before_any_model_call() -> None:
    model = TestModel()
    tool = ToolSpec("write_file", "Write a file.", lambda path: path, read_only=False)
    with pytest.raises(PolicyRefused, match="write_file") as caught:
        await ModelEngine("test", model=model).run(request(tools=(tool,), read_only=True), Ctx())
    assert caught.value.rule == "read_only"
    assert model.last_model_request_parameters is None


async def test_structured_output_through_test_model_and_usage_is_reported() -> None:
    engine = ModelEngine("test", model=TestModel(custom_output_text='{"title": "From TestModel"}'))
    ctx = Ctx()
    result = await engine.run(request(output_schema=SCHEMA), ctx)
    assert result.output == {"title": "From TestModel"}
    assert "".join(ctx.deltas) == '{"title": "From TestModel"}'
    assert set(result.usage) == {"input_tokens", "output_tokens"}
    assert result.usage["input_tokens"] > 0 and result.usage["output_tokens"] > 0
    assert (result.engine, result.model, result.mode) == ("test", "test", "read-write")


async def test_an_invalid_output_schema_fails_for_good_without_calling_the_model() -> None:
    model = TestModel()
    with pytest.raises(StepFailed, match="not a valid JSON Schema") as caught:
        await ModelEngine("test", model=model).run(request(output_schema={"type": "banana"}), Ctx())
    assert not caught.value.retryable
    assert model.last_model_request_parameters is None
