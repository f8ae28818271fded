"""ModelEngine: one agent step through pydantic-ai, with streamed text, structured output, tools and usage.

Spec strings (see DESIGN.md "Agents and engines"): `openai:MODEL`, `anthropic:MODEL`, `ollama:MODEL` and
`openai-compatible:MODEL@URL` (vLLM, llama.cpp …). Keys and URLs come from the environment or from the
constructor, never from the step request, and never appear in an error or an output.

Structured output is asked for in the prompt and parsed and validated here (jsonschema), rather than
through a provider's tool-calling or `response_format` support, because that is what every
OpenAI-compatible server and small local model handles. A validation failure raises `OutputInvalid`
once: the step's next attempt sends the errors back as `feedback` (the step's attempts are the retries).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

import baton.agents
from baton.agents.base import (
    Engine,
    EngineUnavailable,
    OutputInvalid,
    PolicyRefused,
    StepContext,
    StepRequest,
    StepResult,
    ToolSpec,
)
from baton.domain.errors import BatonError, StepFailed
from baton.redaction import register as register_secret

try:
    from pydantic_ai import Agent, RunContext, Tool, ToolFailed, UsageLimits, exceptions
    from pydantic_ai.messages import AgentStreamEvent, PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta
    from pydantic_ai.settings import ModelSettings
    from pydantic_ai.toolsets import FunctionToolset, ToolsetTool, WrapperToolset
except ImportError as _import_error:  # pragma: no cover - depends on the install
    raise ImportError('model engines need pydantic-ai: pip install "baton[models]"') from _import_error

if TYPE_CHECKING:
    from pydantic_ai.models import Model

__all__ = ["ModelEngine", "ModelSpec", "build_prompt", "model_for", "parse_output", "parse_spec"]

PROVIDERS = ("openai", "anthropic", "ollama", "openai-compatible")
#: the environment variable holding each provider's key; only openai and anthropic require one
KEY_VARS: Mapping[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "ollama": "OLLAMA_API_KEY",
    "openai-compatible": "OPENAI_COMPATIBLE_API_KEY",
}
_KEY_REQUIRED = frozenset({"openai", "anthropic"})
_URL_VARS: Mapping[str, str] = {
    "openai": "OPENAI_BASE_URL",
    "anthropic": "ANTHROPIC_BASE_URL",
    "ollama": "OLLAMA_BASE_URL",
}
_DEFAULT_URLS: Mapping[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "ollama": "http://127.0.0.1:11434/v1",
}
_SPEC_HELP = (
    "write openai:MODEL, anthropic:MODEL, ollama:MODEL or openai-compatible:MODEL@http://HOST:PORT/v1"
)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A parsed engine spec. `url` is set only for `openai-compatible`, where the spec carries it."""

    provider: str
    model: str
    url: str | None = None


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model engine spec; a malformed one raises `EngineUnavailable` (not retryable)."""
    provider, sep, rest = spec.strip().partition(":")
    shown = re.sub(r"//[^/@\s]*@", "//***@", spec)  # never repeat credentials written into a URL
    if not sep or provider not in PROVIDERS:
        raise EngineUnavailable(f"engine {shown!r} is not a model engine: {_SPEC_HELP}", retryable=False)
    url = None
    if provider == "openai-compatible":
        match = re.fullmatch(r"(?P<model>[^@\s]+?)@(?P<url>https?://\S+)", rest.strip())
        if match is None:
            raise EngineUnavailable(
                f"engine {shown!r} needs a model and the server's base URL: "
                "openai-compatible:MODEL@http://HOST:PORT/v1",
                retryable=False,
            )
        rest, url = match["model"], match["url"]
        parts = urlsplit(url)
        if parts.username or parts.password:
            # the spec is stored with the run; a credential in it would leak into runs and events
            raise EngineUnavailable(
                f"engine spec for model {rest!r} puts credentials in the URL; "
                "remove them and set OPENAI_COMPATIBLE_API_KEY instead",
                retryable=False,
            )
    model = rest.strip()
    if not model or any(ch.isspace() for ch in model):
        raise EngineUnavailable(f"engine {shown!r} names no valid model: {_SPEC_HELP}", retryable=False)
    return ModelSpec(provider, model, url)


@dataclass(frozen=True, slots=True)
class _Endpoint:
    base_url: str
    api_key: str | None


def _endpoint(
    parsed: ModelSpec, env: Mapping[str, str], api_key: str | None, base_url: str | None
) -> _Endpoint:
    key_var = KEY_VARS[parsed.provider]
    key = api_key or env.get(key_var) or None
    register_secret(key)  # a key given in code or a custom env is cut out of output and logs too
    if key is None and parsed.provider in _KEY_REQUIRED:
        raise EngineUnavailable(
            f"engine {parsed.provider}:{parsed.model} needs an API key: set {key_var} in the environment "
            "of the process that runs steps (baton worker, baton serve or baton run)",
            retryable=False,
        )
    url = base_url or parsed.url
    if url is None:
        url = env.get(_URL_VARS[parsed.provider]) or _DEFAULT_URLS[parsed.provider]
    if parsed.provider == "ollama" and urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/v1"  # OLLAMA_BASE_URL is often given without Ollama's /v1 prefix
    return _Endpoint(url, key)


def _build(parsed: ModelSpec, endpoint: _Endpoint) -> Model:
    # Providers are imported here so that an install with only one SDK can use the others' engines.
    try:
        if parsed.provider == "anthropic":
            from pydantic_ai.models.anthropic import AnthropicModel
            from pydantic_ai.providers.anthropic import AnthropicProvider

            provider = AnthropicProvider(api_key=endpoint.api_key, base_url=endpoint.base_url)
            return AnthropicModel(parsed.model, provider=provider)
        from pydantic_ai.models.openai import OpenAIChatModel

        # The OpenAI client insists on a key; local servers ignore this placeholder.
        key = endpoint.api_key or "no-key-needed"
        if parsed.provider == "ollama":
            from pydantic_ai.models.ollama import OllamaModel
            from pydantic_ai.providers.ollama import OllamaProvider

            return OllamaModel(parsed.model, provider=OllamaProvider(base_url=endpoint.base_url, api_key=key))
        if parsed.provider == "openai-compatible":
            from pydantic_ai.providers.openai_compatible import OpenAICompatibleProvider

            compatible = OpenAICompatibleProvider(
                "openai-compatible", base_url=endpoint.base_url, api_key=key
            )
            return OpenAIChatModel(parsed.model, provider=compatible)
        from pydantic_ai.providers.openai import OpenAIProvider

        return OpenAIChatModel(parsed.model, provider=OpenAIProvider(base_url=endpoint.base_url, api_key=key))
    except ImportError as error:
        raise EngineUnavailable(
            f"engine {parsed.provider}:{parsed.model} needs the {parsed.provider} SDK: "
            f'pip install "pydantic-ai-slim[{"anthropic" if parsed.provider == "anthropic" else "openai"}]"',
            retryable=False,
        ) from error


def model_for(
    spec: str,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Model, str, str]:
    """The pydantic-ai model for a spec, its provider label and its model name.

    Keys and URLs come from `env` (default: `os.environ`) unless given explicitly. A missing key raises
    `EngineUnavailable` (not retryable) naming the variable to set.
    """
    parsed = parse_spec(spec)
    model = _build(parsed, _endpoint(parsed, os.environ if env is None else env, api_key, base_url))
    return model, parsed.provider, parsed.model


# --- the prompt ------------------------------------------------------------------------------


def _render(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > limit:
        text = f"{text[:limit]}… [{len(text) - limit} more characters not shown]"
    return text


def build_prompt(request: StepRequest, *, max_value_chars: int = 4000) -> str:
    """The user prompt: the task, the inputs, earlier steps' outputs, the output format and any feedback.

    Each input or upstream value longer than `max_value_chars` is cut, with a note saying so.
    """
    sections = [request.prompt.strip() or f"Do the work of the {request.agent} agent."]
    if request.inputs:
        lines = (f"- {name}: {_render(value, max_value_chars)}" for name, value in request.inputs.items())
        sections.append("Inputs:\n" + "\n".join(lines))
    if request.upstream:
        blocks = (f"## {key}\n{_render(value, max_value_chars)}" for key, value in request.upstream.items())
        sections.append("Results of earlier steps:\n\n" + "\n\n".join(blocks))
    if request.output_schema is not None:
        schema = json.dumps(request.output_schema, ensure_ascii=False)
        sections.append(
            "Answer with a single JSON value that matches this JSON Schema, and nothing else "
            f"(no prose, no code fences):\n{schema}"
        )
    if request.feedback:
        feedback = _render(request.feedback.strip().rstrip("."), max_value_chars)
        sections.append(f"Your previous answer was rejected: {feedback}. Answer again.")
    return "\n\n".join(sections)


def _model_settings(settings: Mapping[str, Any], timeout: float | None) -> ModelSettings:
    # max_retries=0: the provider SDK must not retry on its own; a step's attempts are its retries.
    out: ModelSettings = {"max_retries": 0}
    if timeout is not None:
        out["timeout"] = timeout
    if (temperature := _number(settings, "temperature")) is not None:
        out["temperature"] = temperature
    if (top_p := _number(settings, "top_p")) is not None:
        out["top_p"] = top_p
    if (max_tokens := _number(settings, "max_tokens", integer=True)) is not None:
        out["max_tokens"] = int(max_tokens)
    if (seed := _number(settings, "seed", integer=True)) is not None:
        out["seed"] = int(seed)
    return out


def _with_idempotency_key(settings: ModelSettings, key: str) -> ModelSettings:
    """Every attempt of a step sends the same `Idempotency-Key` (`run_id:step_key`, I6), so a provider
    or proxy that deduplicates requests can tell a retry from new work."""
    if key:
        settings["extra_headers"] = {"Idempotency-Key": key}
    return settings


def _number(settings: Mapping[str, Any], name: str, *, integer: bool = False) -> float | None:
    value = settings.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and value != int(value)):
        raise StepFailed(
            f"model setting {name} must be {'an integer' if integer else 'a number'}, got {value!r}",
            retryable=False,
        )
    return float(value)


# --- structured output -----------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def parse_output(text: str, schema: Mapping[str, Any]) -> Any:
    """Parse a model's JSON answer and validate it; `OutputInvalid` names each failing field.

    Tolerates code fences and prose around one JSON object or array, which small models often add.
    """
    value = _extract_json(text)
    if value is _NOT_JSON:
        if schema.get("type") == "string":
            value = text.strip()
        else:
            raise OutputInvalid(
                "the answer is not JSON: reply with only a JSON value that matches the output schema",
                retryable=True,
            )
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        shown = "; ".join(f"{_field(e)}: {_short(e.message)}" for e in errors[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise OutputInvalid(f"the output does not match the output schema: {shown}{more}", retryable=True)
    return value


_NOT_JSON = object()


def _extract_json(text: str) -> Any:
    candidates = [text.strip()]
    candidates += [m.strip() for m in _FENCE.findall(text)]
    for opener, closer in ("{}", "[]"):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    return _NOT_JSON


def _field(error: jsonschema.exceptions.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "required" and isinstance(error.validator_value, list):
        missing = re.match(r"'([^']*)' is a required property", error.message)
        if missing:
            return f"{path}.{missing[1]}" if path else missing[1]
    return path or "(root)"


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[:limit] + "…"


# --- tools -----------------------------------------------------------------------------------


@dataclass
class _ToolErrorsToModel(WrapperToolset[None]):
    """A tool's own exception goes back to the model as a failed tool result, so it can adapt.

    Baton's errors (a policy refusal, a failed step) still end the step.
    """

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[None], tool: ToolsetTool[None]
    ) -> Any:
        try:
            return await super().call_tool(name, tool_args, ctx, tool)
        except (BatonError, exceptions.ModelRetry, ToolFailed, exceptions.CallDeferred):
            raise
        except exceptions.ApprovalRequired:
            raise
        except Exception as error:
            raise ToolFailed(f"tool {name} failed: {type(error).__name__}: {error}") from error


def _toolset(tools: tuple[ToolSpec, ...]) -> _ToolErrorsToModel:
    functions = [
        Tool(spec.fn, takes_ctx=False, name=spec.name, description=spec.description or None) for spec in tools
    ]
    return _ToolErrorsToModel(FunctionToolset(functions, max_retries=1))


# --- the engine ------------------------------------------------------------------------------


class ModelEngine(Engine):
    """Runs an agent step on a language model through pydantic-ai, streaming its text to `ctx.emit`.

    `model` replaces the spec's model (pydantic-ai's `TestModel` or `FunctionModel` in tests); `api_key`,
    `base_url` and `env` override where keys and URLs are read from. `timeout` is how long, in seconds,
    the server may stay silent (connecting, or between streamed chunks) before the attempt fails as
    retryable. `max_requests` bounds the model turns of one attempt (tool calls need several).

    The output of a free-text step is the model's final answer, which equals the text streamed to
    `ctx.emit`; with tools, text the model writes before a tool call is streamed as well.
    """

    def __init__(
        self,
        spec: str,
        *,
        model: Model | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 120.0,
        max_requests: int = 20,
        max_value_chars: int = 4000,
    ) -> None:
        self.spec = spec
        self._parsed = None if model is not None else parse_spec(spec)
        self._model = model
        self._api_key = api_key
        self._base_url = base_url
        self._env = env
        self.timeout = timeout
        self.max_requests = max_requests
        self.max_value_chars = max_value_chars

    def supports_read_only(self) -> bool:
        # A model call has no side effects beyond the tools it is offered, and a read-only
        # policy offers only read-only tools (checked again in `run`).
        return True

    async def run(self, request: StepRequest, ctx: StepContext) -> StepResult:
        if request.read_only and (writers := [t.name for t in request.tools if not t.read_only]):
            raise PolicyRefused(
                f"the policy is read-only but tools {', '.join(writers)} are not marked read-only",
                rule="read_only",
            )
        schema = request.output_schema
        if schema is not None:
            try:
                jsonschema.validators.validator_for(schema).check_schema(dict(schema))
            except jsonschema.exceptions.SchemaError as error:
                raise StepFailed(
                    f"agent {request.agent!r} has an output_schema that is not a valid JSON Schema: "
                    f"{_short(error.message)}",
                    retryable=False,
                ) from None
        model, name, server, secret = self._resolve()
        agent: Agent[None, str] = Agent(
            model,
            system_prompt=request.persona.strip() or (),
            toolsets=[_toolset(request.tools)] if request.tools else None,
            retries={"tools": 1, "output": 0},
        )

        async def stream(_: RunContext[None], events: AsyncIterable[AgentStreamEvent]) -> None:
            async for event in events:
                piece = ""
                if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                    piece = event.part.content
                elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                    piece = event.delta.content_delta
                if piece:
                    ctx.emit(piece)

        try:
            # Entering the model opens its HTTP client and closes it on the way out, cancellation
            # included, so an aborted step does not leave a request running on the server.
            async with model:
                result = await agent.run(
                    build_prompt(request, max_value_chars=self.max_value_chars),
                    model_settings=_with_idempotency_key(
                        _model_settings(request.settings, self.timeout), request.idempotency_key
                    ),
                    usage_limits=UsageLimits(request_limit=self.max_requests),
                    event_stream_handler=stream,
                    infer_name=False,
                )
        except Exception as raised:
            cause = _first_leaf(raised)
            if isinstance(cause, BatonError):  # from a tool or from ctx.emit: Baton's own, unchanged
                raise cause from None
            raise _translate(cause, self.spec, name, server, secret) from None
        text = result.output
        output: Any = text if schema is None else parse_output(text, schema)
        usage = result.usage
        return StepResult(
            output=output,
            engine=self.spec,
            model=name,
            usage={"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
            mode="read-only" if request.read_only else "read-write",
        )

    def _resolve(self) -> tuple[Model, str, str, str | None]:
        """The model, its name, a description of its server (no credentials) and the key to redact."""
        if self._model is not None:
            return self._model, self._model.model_name, f"model {self._model.model_name}", None
        assert self._parsed is not None  # set whenever no model was given
        parsed = self._parsed
        env = os.environ if self._env is None else self._env
        endpoint = _endpoint(parsed, env, self._api_key, self._base_url)
        server = f"the {parsed.provider} server at {_public_url(endpoint.base_url)}"
        if not baton.agents.ALLOW_NETWORK_ENGINES and not _is_loopback(endpoint.base_url):
            # the test guard (STYLE.md 10): a test may reach a fake server on this machine, nothing else
            raise EngineUnavailable(
                f"engine {self.spec!r} would call {server}, and network engines are disabled "
                "(baton.agents.ALLOW_NETWORK_ENGINES is False, as the test suite sets it): "
                "only a server on 127.0.0.1 may be used",
                retryable=False,
            )
        return _build(parsed, endpoint), parsed.model, server, endpoint.api_key


# --- errors ----------------------------------------------------------------------------------


def _public_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret and len(secret) >= 4 else text


def _server_said(body: object) -> str:
    if isinstance(body, dict):
        body = body.get("message", body)
    return f": {_short(str(body))}" if body else ""


def _first_leaf(error: Exception) -> Exception:
    """The first real error inside exception groups (tools run in parallel raise them)."""
    while isinstance(error, ExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _translate(error: Exception, spec: str, model: str, server: str, secret: str | None) -> StepFailed:
    """Map a pydantic-ai failure to a step failure whose message says what failed and how to fix it."""
    e = exceptions
    provider = spec.partition(":")[0]
    status = getattr(error, "status_code", None)
    detail = f" (HTTP {status})" if status else ""
    said = _server_said(getattr(error, "body", None))
    message: str
    retryable = True
    if isinstance(error, e.ModelAuthenticationError):
        var = KEY_VARS.get(provider, "the API key variable")
        message, retryable = f"{server} refused the credentials{detail}{said}: check {var}", False
    elif isinstance(error, e.ModelRateLimitError):
        wait = f"; it asks to retry after {error.retry_after:g} s" if error.retry_after else ""
        message = f"{server} is rate limiting requests{detail}{wait}"
    elif isinstance(error, e.ModelQuotaExceededError):
        message, retryable = f"{server} says the account's quota is exhausted{detail}{said}", False
    elif isinstance(error, e.ModelNotFoundError):
        message = f"{server} does not know model {model!r}{detail}{said}: check the model name and the URL"
        retryable = False
    elif isinstance(error, e.ModelContextWindowExceededError):
        message, retryable = f"the prompt is too long for the model on {server}{detail}{said}", False
    elif isinstance(error, e.ModelRequestRejectedError):
        message, retryable = f"{server} rejected the request{detail}{said}", False
    elif isinstance(error, e.ModelTimeoutError | e.ModelRequestTimeout):
        message = f"{server} did not answer in time: is it overloaded or hanging?"
    elif isinstance(error, e.ModelConnectionError):
        where = _URL_VARS.get(provider)
        url = f"{where} (or its default)" if where else "the URL in the engine spec"
        message = f"cannot reach {server}: is it running, and is {url} right?"
    elif isinstance(error, e.ModelAPIError):
        retryable = not isinstance(status, int) or status >= 500 or status in (408, 409, 429)
        message = f"{server} failed{detail}{said}"
    elif isinstance(error, e.UsageLimitExceeded):
        message, retryable = f"the model used too many turns or tokens: {error}", False
    elif isinstance(error, e.UserError):
        message, retryable = f"engine {spec!r} is misconfigured: {error}", False
    elif isinstance(error, e.UnexpectedModelBehavior):
        message = f"the model's answer could not be used: {error}"
    else:
        message = f"engine {spec!r} failed: {type(error).__name__}: {error}"
    unavailable = isinstance(error, e.ModelAPIError)
    kind = EngineUnavailable if unavailable else StepFailed
    return kind(_redact(message, secret), retryable=retryable)
