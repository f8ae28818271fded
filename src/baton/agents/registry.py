"""resolve_engine: the only place engine spec strings (`offline`, `openai:…`, `cli:NAME`, …) are parsed."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import baton.agents
from baton.agents.base import Engine, EngineUnavailable, StepContext, StepRequest, StepResult
from baton.agents.offline import OfflineEngine
from baton.domain.errors import StepFailed

MODEL_PROVIDERS = ("openai", "anthropic", "ollama", "openai-compatible")

#: what a model engine imports on its first use, by provider: a second or more of cold imports
_MODEL_MODULES: Mapping[str, tuple[str, ...]] = {
    "anthropic": ("baton.agents.llm", "pydantic_ai.models.anthropic", "pydantic_ai.providers.anthropic"),
    "openai": ("baton.agents.llm", "pydantic_ai.models.openai", "pydantic_ai.providers.openai"),
}


async def import_engine_modules(spec: str) -> None:
    """Import a model engine's SDKs on a thread the first time one is used.

    On the event loop, those imports would stall every stream, request and step the process
    serves for as long as they take (seconds on a busy machine). A missing SDK is left for
    `resolve_engine` to report.
    """
    provider = spec.partition(":")[0]
    if provider not in MODEL_PROVIDERS:
        return
    modules = _MODEL_MODULES.get(provider, _MODEL_MODULES["openai"])
    if any(name not in sys.modules for name in modules):
        await asyncio.to_thread(_import_if_installed, modules)


def _import_if_installed(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            return


class CallableEngine(Engine):
    """An agent implemented by a Python function `fn(request, ctx)`, sync or async."""

    def __init__(self, fn: Callable[..., Any], spec: str) -> None:
        self.fn = fn
        self.spec = spec

    def supports_read_only(self) -> bool:
        # Arbitrary Python can write anywhere: a read-only run refuses it unless the function
        # declares itself read-only (`fn.baton_read_only = True`), which its author vouches for.
        return bool(getattr(self.fn, "baton_read_only", False))

    async def run(self, request: StepRequest, ctx: StepContext) -> StepResult:
        if inspect.iscoroutinefunction(self.fn):
            value = await self.fn(request, ctx)
        else:
            value = await asyncio.to_thread(self.fn, request, ctx)
        if isinstance(value, StepResult):
            return value
        return StepResult(output=value, engine=self.spec)


def resolve_engine(spec: str, functions: Mapping[str, Callable[..., Any]] | None = None) -> Engine:
    """The engine a spec names. An engine that cannot be had fails the step; nothing falls back."""
    provider = spec.partition(":")[0]
    if spec == "offline":
        return OfflineEngine()
    if provider in MODEL_PROVIDERS:
        from baton.agents.llm import ModelEngine, parse_spec

        if not baton.agents.ALLOW_NETWORK_ENGINES:
            _refuse_unless_loopback(spec, parse_spec(spec))
        return ModelEngine(spec)
    if provider == "cli":
        from baton.agents.command import CommandEngine

        name = spec.partition(":")[2]
        configs = cli_agent_configs()
        if name not in configs:
            known = ", ".join(sorted(configs)) or "none"
            raise EngineUnavailable(
                f"cli engine {name!r} is not configured (configured: {known}): add it under cli_agents: in "
                "agents.yaml (BATON_AGENTS) or in BATON_CLI_AGENTS",
                retryable=False,
            )
        return CommandEngine(configs[name])
    if provider == "python":
        target = spec.partition(":")[2]
        module_name, _, attr = target.partition(":")
        if not module_name or not attr:
            raise StepFailed(
                f"engine {spec!r} is not valid: write python:package.module:function", retryable=False
            )
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise StepFailed(f"engine {spec!r} cannot be loaded: {error}", retryable=False) from error
        return CallableEngine(fn, spec)
    if provider == "function":
        name = spec.partition(":")[2]
        if functions is None or name not in functions:
            raise StepFailed(f"engine {spec!r}: the flow registers no function {name!r}", retryable=False)
        return CallableEngine(functions[name], spec)
    raise EngineUnavailable(
        f"engine {spec!r} is not known: use offline, openai:MODEL, anthropic:MODEL, ollama:MODEL, "
        "openai-compatible:MODEL@URL, cli:NAME, python:module:function, or a callable on the flow",
        retryable=False,
    )


@lru_cache(maxsize=1)
def cli_agent_configs() -> Mapping[str, Any]:
    """CLI agents from BATON_AGENTS files' `cli_agents:` and from BATON_CLI_AGENTS (which wins)."""
    from baton.agents.command import cli_agents_from_env, load_cli_agents
    from baton.agents.personas import default_agent_sources, load_agent_sources

    configs: dict[str, Any] = {}
    sources = default_agent_sources()
    if sources:
        catalog = load_agent_sources(sources)
        if catalog.cli_agents:
            configs.update(load_cli_agents(catalog.cli_agents, source="agents.yaml cli_agents"))
    configs.update(cli_agents_from_env())
    return configs


def _refuse_unless_loopback(spec: str, parsed: Any) -> None:
    """The test guard: with network engines off, only a model server on this machine may be used."""
    url = parsed.url or os.environ.get(
        {"openai": "OPENAI_BASE_URL", "ollama": "OLLAMA_BASE_URL", "openai-compatible": ""}.get(
            parsed.provider, ""
        ),
        "",
    )
    host = urlsplit(url).hostname if url else None
    if host is not None and (host == "localhost" or _is_loopback(host)):
        return
    raise EngineUnavailable(
        f"engine {spec!r} would call a model over the network, which this process forbids "
        "(baton.agents.ALLOW_NETWORK_ENGINES is False); point it at a server on 127.0.0.1",
        retryable=False,
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
