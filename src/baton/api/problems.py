"""BatonError families and framework errors -> RFC 9457 problem+json, in one table."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from baton.domain import errors
from baton.redaction import redact

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"

#: error class -> (status, title); the first matching class in order wins
TABLE: list[tuple[type[errors.BatonError], int, str]] = [
    (errors.Unauthorized, 401, "Unauthorized"),
    (errors.Forbidden, 403, "Forbidden"),
    (errors.PolicyDenied, 403, "Denied by policy"),
    (errors.UnknownFlow, 422, "Unknown flow"),
    (errors.NotFound, 404, "Not found"),
    (errors.IllegalTransition, 409, "Illegal transition"),
    (errors.Conflict, 409, "Conflict"),
    (errors.InvalidInputs, 422, "Invalid inputs"),
    (errors.InvalidFlow, 422, "Invalid flow"),
    (errors.UsageError, 400, "Bad request"),
    (errors.StoreUnavailable, 503, "Database unavailable"),
    (errors.RuntimeFailure, 500, "Internal error"),
]


class TooManyRequests(errors.UsageError):
    """Too many requests for this token; slow down."""

    status_code = 429


class PayloadTooLarge(errors.UsageError):
    """The request body is too large."""

    status_code = 413


TABLE[:0] = [(TooManyRequests, 429, "Too many requests"), (PayloadTooLarge, 413, "Payload too large")]


class FieldProblem(BaseModel):
    field: str = Field(description="where: a body field path, a parameter name, or '(body)'")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error response."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank")
    title: str = Field(description="short, the same for every error of this kind")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what went wrong and what to do about it")
    errors: list[FieldProblem] | None = Field(
        default=None, description="on 422: every field that is not valid, and why"
    )
    current_status: str | None = Field(default=None, description="on 409: the object's status now")


#: what each error status means, for the OpenAPI document
ERROR_STATUSES: dict[int, str] = {
    400: "Bad request: a malformed body, cursor or Last-Event-ID",
    401: "Missing, unknown, revoked or expired token",
    403: "Authenticated, but the role or the policy does not allow it (or a cookie write lacks CSRF)",
    404: "No such object, or it belongs to a project you are not a member of",
    409: "Illegal transition or conflict; `current_status` says where the object is",
    413: "The request body is too large",
    422: "The body, a parameter or the flow inputs are not valid; `errors` names each field",
    429: "Too many requests or open streams for this token; honour Retry-After",
    503: "The database is unavailable; retry later",
}
_READ_ERRORS = (400, 401, 403, 404, 422, 429, 503)
_WRITE_ERRORS = (400, 401, 403, 404, 409, 413, 422, 429, 503)


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the problem+json error responses of every operation in an OpenAPI document.

    /v1 operations need a bearer token and may answer any status of `ERROR_STATUSES` their method
    allows; /healthz and /metrics need no token, so only 503. FastAPI's default 422
    (`HTTPValidationError` as application/json) is replaced: validation errors are problems too.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    defs = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(defs.pop("$defs", {}))
    components["Problem"] = defs
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    schema["components"].setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an API token: `baton token create`, POST /v1/tokens, or the first-start login token",
    }
    ref = {"$ref": "#/components/schemas/Problem"}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            codes: tuple[int, ...] = (503,)
            if path.startswith("/v1/"):
                operation.setdefault("security", [{"bearer": []}])
                codes = _READ_ERRORS if method in ("get", "head") else _WRITE_ERRORS
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses[str(code)] = {
                    "description": ERROR_STATUSES[code],
                    "content": {MEDIA_TYPE: {"schema": ref}},
                }
    return schema


def problem(
    status: int, title: str, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    # An error may quote what it failed on; a known secret in it (a model key) is cut out.
    body = redact({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra})
    sent = dict(headers or {})
    if status == 429:
        sent.setdefault("Retry-After", "1")
    elif status == 401:  # RFC 9110: a 401 names the scheme that would work
        sent.setdefault("WWW-Authenticate", 'Bearer realm="baton"')
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=sent or None)


def baton_problem(error: errors.BatonError) -> JSONResponse:
    for cls, status, title in TABLE:
        if isinstance(error, cls):
            extra: dict[str, Any] = {}
            if isinstance(error, errors.InvalidInputs) and error.problems:
                extra["errors"] = error.problems
            if isinstance(error, errors.IllegalTransition):
                extra["current_status"] = str(error.current)
            if status >= 500:
                logger.error("request failed: %s", error, extra={"action": "api.error"})
            return problem(status, title, error.message, **extra)
    return problem(500, "Internal error", "the server could not complete the request")


def install(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(errors.BatonError)
    async def on_baton_error(_request: Request, error: errors.BatonError) -> JSONResponse:
        return baton_problem(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        found = [_field_problem(e) for e in error.errors()]
        detail = "; ".join(f"{f['field']}: {f['message']}" for f in found) or "the request is not valid"
        return problem(422, "Invalid request", detail, errors=found)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else "request failed"
        if error.status_code == 404 and detail == "Not Found":
            detail = "no such route; see /openapi.json for the API"
        elif error.status_code == 400 and detail == "There was an error parsing the body":
            detail = "the request body could not be read: send UTF-8 JSON with Content-Type: application/json"
        # The exception's headers are kept: a 405 must say which methods are allowed (Allow).
        return problem(error.status_code, _title(error.status_code), detail, headers=error.headers)

    @app.exception_handler(Exception)
    async def on_unexpected(_request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error", extra={"action": "api.crash"})
        return problem(500, "Internal error", "the server could not complete the request; see its log")


def _field_problem(error: dict[str, Any]) -> dict[str, str]:
    if error.get("type") == "json_invalid":  # loc is ("body", offset), not a field
        reason = (error.get("ctx") or {}).get("error")
        return {"field": "(body)", "message": f"not valid JSON ({reason})" if reason else "not valid JSON"}
    field = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "(body)"
    return {"field": field, "message": str(error.get("msg") or "not valid")}


def _title(status: int) -> str:
    return {
        400: "Bad request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not found",
        405: "Method not allowed",
        409: "Conflict",
        413: "Payload too large",
        422: "Invalid request",
        429: "Too many requests",
    }.get(status, "Error")
