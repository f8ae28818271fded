"""BatonError families and framework errors -> RFC 9457 problem+json, in one table."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from baton.domain import errors

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


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {"Retry-After": "1"} if status == 429 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


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
    @app.exception_handler(errors.BatonError)
    async def on_baton_error(_request: Request, error: errors.BatonError) -> JSONResponse:
        return baton_problem(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        found = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "(body)",
                "message": e.get("msg"),
            }
            for e in error.errors()
        ]
        detail = "; ".join(f"{f['field']}: {f['message']}" for f in found) or "the request is not valid"
        return problem(422, "Invalid request", detail, errors=found)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else "request failed"
        if error.status_code == 404 and detail == "Not Found":
            detail = "no such route; see /openapi.json for the API"
        return problem(error.status_code, _title(error.status_code), detail)

    @app.exception_handler(Exception)
    async def on_unexpected(_request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error", extra={"action": "api.crash"})
        return problem(500, "Internal error", "the server could not complete the request; see its log")


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
