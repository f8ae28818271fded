"""OpenTelemetry traces and logs of runs: one switch, decided once at startup; free when off.

When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, or
`baton serve --otel` is given, `configure_from_env` loads the OpenTelemetry SDK (`baton[otel]`) and
every step attempt becomes a span. Otherwise `ENABLED` stays False, the hooks below return shared
no-op objects, and no `opentelemetry` module is imported by this package.

One run is one trace even though its steps run in different processes at different times: the
trace id and the run's root span id are derived from the run id (`trace_id_of`, `run_span_id_of`),
so every process parents its step spans on the same run span without any propagation store. The run
span itself is emitted once, by the process whose transaction moved the run to a terminal status,
with the run's creation and finish times from the database (see docs/observability.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from baton.agents.base import StepRequest, StepResult

__all__ = [
    "OFF",
    "ModelCall",
    "StepTrace",
    "configure",
    "configure_from_env",
    "disable",
    "flush_on_sigterm",
    "model_of",
    "model_span",
    "run_span_id_of",
    "step_span",
    "trace_id_of",
    "wanted",
]

#: The switch: set once by `configure` / `configure_from_env`; every hook checks only this.
ENABLED = False

#: Environment variables that turn tracing on (the standard OTLP exporter settings).
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


# --- pure decisions ------------------------------------------------------------------------------


def trace_id_of(run_id: str) -> int:
    """The run's trace id: the first 16 bytes of sha256(run id), the same in every process."""
    value = int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:16], "big")
    return value or 1  # an all-zero id is invalid in OpenTelemetry


def run_span_id_of(run_id: str) -> int:
    """The run's root span id: the next 8 bytes of the same digest."""
    value = int.from_bytes(hashlib.sha256(run_id.encode()).digest()[16:24], "big")
    return value or 1


def wanted(env: Mapping[str, str], *, flag: bool = False) -> bool:
    """Whether tracing is on: `--otel` or an OTLP endpoint in the environment, unless the SDK is disabled."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return flag or any(env.get(name, "").strip() for name in ENDPOINT_VARS)


def model_of(engine_spec: str) -> tuple[str, str] | None:
    """(provider, model) of a model engine spec such as `openai:gpt-4o`; None for other engines."""
    provider, sep, rest = engine_spec.strip().partition(":")
    if not sep or provider not in ("openai", "anthropic", "ollama", "openai-compatible"):
        return None
    model = rest.split("@", 1)[0].strip() if provider == "openai-compatible" else rest.strip()
    return provider, model


# --- the hooks -----------------------------------------------------------------------------------


class StepTrace(Protocol):
    """A step attempt's span: a context manager, and a wrapper for the attempt's final write."""

    def __enter__(self) -> StepTrace: ...

    def __exit__(self, *exc: object) -> None: ...

    def watch(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """The final write's transaction body, wrapped to learn the step's outcome and the run's end."""
        ...


class ModelCall(Protocol):
    """An engine call's span: a context manager that takes the engine's result."""

    def __enter__(self) -> ModelCall: ...

    def __exit__(self, *exc: object) -> None: ...

    def done(self, result: StepResult) -> None: ...


class _Off:
    """The hooks when tracing is off: one shared object whose methods do nothing."""

    __slots__ = ()

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def watch(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn

    def done(self, result: StepResult) -> None:
        return None


OFF = _Off()


def step_span(row: Any, flow: str) -> StepTrace:
    """The span of one claimed step attempt (`row` is the claim row), parented on the run span."""
    if not ENABLED:
        return OFF
    from baton.telemetry import _otel

    return _otel.StepSpan(row, flow)


def model_span(request: StepRequest, run_id: str) -> ModelCall:
    """The span of one engine call of an agent step, a child of the current step span."""
    if not ENABLED:
        return OFF
    from baton.telemetry import _otel

    return _otel.ModelSpan(request, run_id)


def runs_ended(runs: list[Any]) -> None:
    """After a commit that ended these runs (rows as it left them): each run's root span.

    Whichever process ends a run emits its span: the worker whose step finished it, the API that
    cancelled it while it was queued or waiting, a reaper that failed it.
    """
    if not ENABLED:
        return
    from baton.telemetry import _otel

    for run in runs:
        _otel.emit_run_span(run)


# --- the switch ----------------------------------------------------------------------------------


def configure(
    *, span_exporter: Any = None, log_exporter: Any = None, batch: bool = True, service_name: str = "baton"
) -> None:
    """Turn tracing on in this process, exporting to the given exporters (default: OTLP over HTTP).

    Tests pass the SDK's in-memory exporters with `batch=False`. Calling it again replaces the
    previous set-up (which is flushed and shut down first).
    """
    global ENABLED
    try:
        from baton.telemetry import _otel
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            'OpenTelemetry tracing needs the SDK and the OTLP exporter: pip install "baton[otel]"'
        ) from error
    _otel.install(span_exporter=span_exporter, log_exporter=log_exporter, batch=batch, service=service_name)
    ENABLED = True


def configure_from_env(*, flag: bool = False, env: Mapping[str, str] | None = None) -> bool:
    """At process start: turn tracing on when `wanted`; returns whether it is on.

    The exporters read the standard `OTEL_EXPORTER_OTLP_*` variables; with `--otel` and no endpoint
    they send to http://localhost:4318. The service name is `OTEL_SERVICE_NAME`, default `baton`.
    """
    source = os.environ if env is None else env
    if not wanted(source, flag=flag):
        return False
    try:
        configure(service_name=source.get("OTEL_SERVICE_NAME") or "baton")
    except ImportError as error:
        from baton.domain.errors import UsageError

        why = "--otel was given" if flag else "an OTEL_EXPORTER_OTLP_*ENDPOINT variable is set"
        raise UsageError(f"{why}, but {error}; or unset the variable to run without tracing") from error
    return True


def flush_on_sigterm() -> None:
    """Flush the exporters before a SIGTERM ends the process (no-op when tracing is off).

    uvicorn shuts down gracefully on SIGTERM and then raises the signal again with the handler that
    was there before it, so the process dies by the signal and `atexit` never runs: this handler,
    installed before uvicorn's, flushes and then lets the signal do what it did before.
    """
    if not ENABLED:
        return
    import signal

    previous = signal.getsignal(signal.SIGTERM)

    def flush_then_exit(sig: int, frame: Any) -> None:
        disable()
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        signal.raise_signal(sig)

    signal.signal(signal.SIGTERM, flush_then_exit)


def disable() -> None:
    """Flush and shut down the exporters, and turn the hooks back into no-ops."""
    global ENABLED
    if not ENABLED:
        return
    ENABLED = False
    from baton.telemetry import _otel

    _otel.uninstall()
