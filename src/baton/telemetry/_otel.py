"""The OpenTelemetry side of `baton.telemetry`: providers, exporters, spans and the log bridge.

Imported only once tracing is switched on, so an install without `baton[otel]` (or a process with
tracing off) never loads the SDK.
"""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from baton.telemetry import model_of, run_span_id_of, trace_id_of

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from baton.agents.base import StepRequest, StepResult

SCOPE = "baton"

#: (trace id, span id) the next span must have: set only while the run span is started.
_FORCED_IDS: ContextVar[tuple[int, int] | None] = ContextVar("baton_forced_ids", default=None)


class _RunIds(RandomIdGenerator):
    """Random ids, except for a run span, whose ids are derived from its run id."""

    def generate_trace_id(self) -> int:
        forced = _FORCED_IDS.get()
        return forced[0] if forced is not None else super().generate_trace_id()

    def generate_span_id(self) -> int:
        forced = _FORCED_IDS.get()
        return forced[1] if forced is not None else super().generate_span_id()


class _State:
    tracer_provider: TracerProvider | None = None
    logger_provider: LoggerProvider | None = None
    handler: logging.Handler | None = None
    old_factory: Callable[..., logging.LogRecord] | None = None
    at_exit = False


def _tracer() -> trace.Tracer:
    provider = _State.tracer_provider
    return provider.get_tracer(SCOPE) if provider is not None else trace.NoOpTracer()


def install(*, span_exporter: Any, log_exporter: Any, batch: bool, service: str) -> None:
    """Build the tracer and logger providers and hook Baton's logs in; replaces an earlier set-up."""
    uninstall()
    if span_exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    if log_exporter is None and batch:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        log_exporter = OTLPLogExporter()
    resource = Resource.create({"service.name": service})
    # Our own atexit hook flushes, so repeated set-ups (tests) do not pile up exit handlers.
    tracer_provider = TracerProvider(resource=resource, id_generator=_RunIds(), shutdown_on_exit=False)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(span_exporter) if batch else SimpleSpanProcessor(span_exporter)
    )
    _State.tracer_provider = tracer_provider
    if log_exporter is not None:
        logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(log_exporter) if batch else SimpleLogRecordProcessor(log_exporter)
        )
        _State.logger_provider = logger_provider
        _State.handler = _LogBridge(logger_provider)
        logging.getLogger("baton").addHandler(_State.handler)
    _State.old_factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(_with_trace_ids(_State.old_factory))
    if not _State.at_exit:
        atexit.register(uninstall)
        _State.at_exit = True


def uninstall() -> None:
    """Flush what is buffered and stop exporting (at exit, or before a new set-up)."""
    if _State.old_factory is not None:
        logging.setLogRecordFactory(_State.old_factory)
        _State.old_factory = None
    if _State.handler is not None:
        logging.getLogger("baton").removeHandler(_State.handler)
        _State.handler = None
    if _State.logger_provider is not None:
        _State.logger_provider.shutdown()
        _State.logger_provider = None
    if _State.tracer_provider is not None:
        _State.tracer_provider.shutdown()
        _State.tracer_provider = None


# --- spans ---------------------------------------------------------------------------------------


def run_context(run_id: str) -> otel_context.Context:
    """A context whose current span is the run's (remote, not recorded here): the parent of step spans."""
    parent = SpanContext(
        trace_id_of(run_id),
        run_span_id_of(run_id),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


#: step status after the final write → the attempt's outcome
_OUTCOMES = {"succeeded": "succeeded", "queued": "retrying", "failed": "failed", "cancelled": "cancelled"}


class StepSpan:
    """One step attempt: a span under the run span, current while the attempt runs."""

    def __init__(self, row: Any, flow: str) -> None:
        self.run_id: str = row.run_id
        self.step_id: str = row.id
        self.attempt: int = row.attempt
        self.flow = flow
        self.attributes: dict[str, Any] = {
            "baton.run.id": row.run_id,
            "baton.flow": flow,
            "baton.step.key": row.key,
            "baton.step.kind": row.kind,
            "baton.step.attempt": row.attempt,
            "baton.worker.id": getattr(row, "claimed_by", None) or "",
        }
        self.name = f"step {row.key}"
        self.span: trace.Span | None = None
        self.token: object = None
        #: what the final write found: the step's outcome and error
        self.outcome: str | None = None
        self.error: str | None = None

    def __enter__(self) -> StepSpan:
        self.span = _tracer().start_span(
            self.name, context=run_context(self.run_id), kind=SpanKind.INTERNAL, attributes=self.attributes
        )
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.span is not None
        otel_context.detach(self.token)  # type: ignore[arg-type]
        outcome = self.outcome or "unrecorded"
        self.span.set_attribute("baton.step.outcome", outcome)
        if self.error:
            self.span.set_attribute("error.type", "step_failed")
            self.span.set_attribute("baton.step.error", self.error)
        if outcome == "succeeded":
            self.span.set_status(Status(StatusCode.OK))
        elif outcome == "unrecorded":
            self.span.set_status(
                Status(StatusCode.ERROR, "ended without a recorded result (lease lost or worker stopping)")
            )
        elif outcome != "stale":
            self.span.set_status(Status(StatusCode.ERROR, self.error or outcome))
        self.span.end()

    def watch(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def body(conn: Connection, *args: Any) -> Any:
            from baton.store import steps as step_store

            self.outcome = self.error = None  # the store may retry the transaction
            result = fn(conn, *args)
            # If the write ended the run, its span comes from the store's run-end hook.
            step = step_store.get_step(conn, self.step_id)
            if step is not None:
                mine = step.attempt == self.attempt and step.status != "running"
                self.outcome = _OUTCOMES.get(step.status, step.status) if mine else "stale"
                self.error = step.error if mine and step.status != "succeeded" else None
            return result

        return body


def emit_run_span(run: Any) -> None:
    """The run's root span, with its derived ids and the database's creation and finish times."""
    start_ns = int(float(run.created_at) * 1e9)
    end_ns = int(float(run.finished_at or time.time()) * 1e9)
    attributes: dict[str, Any] = {
        "baton.run.id": run.id,
        "baton.flow": run.flow,
        "baton.project.id": run.project_id or "",
        "baton.run.status": run.status,
    }
    usage = run.usage or {}
    if usage.get("input_tokens") is not None:
        attributes["gen_ai.usage.input_tokens"] = int(usage["input_tokens"])
    if usage.get("output_tokens") is not None:
        attributes["gen_ai.usage.output_tokens"] = int(usage["output_tokens"])
    token = _FORCED_IDS.set((trace_id_of(run.id), run_span_id_of(run.id)))
    try:
        span = _tracer().start_span(
            f"run {run.flow}",
            context=otel_context.Context(),  # a root span: no parent
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=start_ns,
        )
    finally:
        _FORCED_IDS.reset(token)
    if run.status == "succeeded":
        span.set_status(Status(StatusCode.OK))
    else:
        span.set_status(Status(StatusCode.ERROR, run.status_reason or run.status))
    span.end(end_time=max(end_ns, start_ns))


class ModelSpan:
    """One engine call of an agent step; follows the GenAI semantic conventions for model engines."""

    def __init__(self, request: StepRequest, run_id: str) -> None:
        model = model_of(request.engine)
        self.attributes: dict[str, Any] = {
            "baton.run.id": run_id,
            "baton.engine": request.engine,
            "baton.agent": request.agent,
            "baton.step.attempt": request.attempt,
        }
        if model is not None:
            provider, name = model
            self.name = f"chat {name}"
            self.attributes.update(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": provider,
                    "gen_ai.request.model": name,
                }
            )
        else:
            self.name = f"engine {request.engine}"
        self.span: trace.Span | None = None
        self.token: object = None

    def __enter__(self) -> ModelSpan:
        self.span = _tracer().start_span(self.name, kind=SpanKind.CLIENT, attributes=self.attributes)
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self

    def done(self, result: StepResult) -> None:
        assert self.span is not None
        if result.model:
            self.span.set_attribute("gen_ai.response.model", result.model)
        usage = result.usage or {}
        if "input_tokens" in usage:
            self.span.set_attribute("gen_ai.usage.input_tokens", int(usage["input_tokens"]))
        if "output_tokens" in usage:
            self.span.set_attribute("gen_ai.usage.output_tokens", int(usage["output_tokens"]))
        self.span.set_attribute("baton.status", "ok")
        self.span.set_status(Status(StatusCode.OK))

    def __exit__(self, *exc_info: object) -> None:
        assert self.span is not None
        otel_context.detach(self.token)  # type: ignore[arg-type]
        exc = exc_info[1] if len(exc_info) > 1 else None
        if isinstance(exc, BaseException):
            # Engine errors are already redacted (no keys); the message says what failed.
            status = "cancelled" if type(exc).__name__ == "CancelledError" else "error"
            self.span.set_attribute("baton.status", status)
            self.span.set_attribute("error.type", type(exc).__name__)
            self.span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
        self.span.end()


# --- logs ----------------------------------------------------------------------------------------


def _with_trace_ids(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """Every log record gets `otelTraceID` and `otelSpanID` (as LoggingInstrumentor names them)."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        span = trace.get_current_span().get_span_context()
        record.otelTraceID = format(span.trace_id, "032x") if span.is_valid else "0"
        record.otelSpanID = format(span.span_id, "016x") if span.is_valid else "0"
        return record

    return make


#: LogRecord attributes that are not `extra` fields
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "otelTraceID",
    "otelSpanID",
}


class _LogBridge(logging.Handler):
    """Sends Baton's log records to the OTLP log exporter, inside the current span's trace.

    A record logged outside any span but carrying a `run_id` extra (Baton's structured logs do) is
    put in that run's trace, under the run span.
    """

    def __init__(self, provider: LoggerProvider) -> None:
        super().__init__()
        self.provider = provider

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ctx = otel_context.get_current()
            run_id = getattr(record, "run_id", None)
            if not trace.get_current_span(ctx).get_span_context().is_valid and isinstance(run_id, str):
                ctx = run_context(run_id)
            attributes = {
                key: value if isinstance(value, str | int | float | bool) else str(value)
                for key, value in vars(record).items()
                if key not in _RESERVED and value is not None
            }
            attributes["code.function.name"] = record.funcName
            from opentelemetry._logs import SeverityNumber

            self.provider.get_logger(record.name).emit(
                timestamp=int(record.created * 1e9),
                context=ctx,
                severity_number=_SEVERITY.get(record.levelno, SeverityNumber.UNSPECIFIED),
                severity_text=record.levelname,
                body=record.getMessage(),
                attributes=attributes,
            )
        except Exception:  # a log line must never break the code that logs it
            self.handleError(record)


def _severities() -> dict[int, Any]:
    from opentelemetry._logs import SeverityNumber

    return {
        logging.DEBUG: SeverityNumber.DEBUG,
        logging.INFO: SeverityNumber.INFO,
        logging.WARNING: SeverityNumber.WARN,
        logging.ERROR: SeverityNumber.ERROR,
        logging.CRITICAL: SeverityNumber.FATAL,
    }


_SEVERITY = _severities()
