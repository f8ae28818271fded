"""resolve_engine: the only place engine spec strings (`offline`, `python:mod:fn`, …) are parsed."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from baton.agents.base import Engine, StepContext, StepRequest, StepResult
from baton.agents.offline import OfflineEngine
from baton.domain.errors import StepFailed


class CallableEngine(Engine):
    """An agent implemented by a Python function `fn(request, ctx)`, sync or async."""

    def __init__(self, fn: Callable[..., Any], spec: str) -> None:
        self.fn = fn
        self.spec = spec

    async def run(self, request: StepRequest, ctx: StepContext) -> StepResult:
        if inspect.iscoroutinefunction(self.fn):
            value = await self.fn(request, ctx)
        else:
            value = await asyncio.to_thread(self.fn, request, ctx)
        if isinstance(value, StepResult):
            return value
        return StepResult(output=value, engine=self.spec)


def resolve_engine(spec: str, functions: Mapping[str, Callable[..., Any]] | None = None) -> Engine:
    """`offline`, `python:module:function`, or `function:NAME` (a function registered on the flow)."""
    if spec == "offline":
        return OfflineEngine()
    if spec.startswith("python:"):
        _, _, target = spec.partition(":")
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
    if spec.startswith("function:"):
        name = spec.partition(":")[2]
        if functions is None or name not in functions:
            raise StepFailed(f"engine {spec!r}: the flow registers no function {name!r}", retryable=False)
        return CallableEngine(functions[name], spec)
    raise StepFailed(
        f"engine {spec!r} is not known: use offline, python:module:function, or a callable on the flow",
        retryable=False,
    )
