"""/v1/webhooks: a project's signed webhooks, their deliveries, test pings and redeliveries.

Request and response shapes live here rather than in api/schemas.py: they serve these routes only.
Reading needs the member role in the webhook's project, changing needs admin; a webhook of a
project the caller is not in answers the same 404 as one that does not exist.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from baton.api.dependencies import Caller, Principal, Rt
from baton.api.schemas import Id, Strict, iso, iso_required
from baton.config import ServerSettings
from baton.domain.errors import Forbidden, InvalidInputs, NotFound
from baton.domain.webhooks import ALL_EVENTS, WEBHOOK_EVENT_TYPES, new_secret, normalize_event_types
from baton.engine.webhooks import check_target, resolve
from baton.store import webhooks as webhook_store

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

#: a name lookup at creation may not hold a request longer than this
_RESOLVE_TIMEOUT_S = 5.0

LINKS = {
    "GetWebhook": {"operationId": "get_webhook", "parameters": {"webhook_id": "$response.body#/id"}},
    "ListDeliveries": {
        "operationId": "list_webhook_deliveries",
        "parameters": {"webhook_id": "$response.body#/id"},
    },
    "PingWebhook": {"operationId": "ping_webhook", "parameters": {"webhook_id": "$response.body#/id"}},
    "DeleteWebhook": {"operationId": "delete_webhook", "parameters": {"webhook_id": "$response.body#/id"}},
}


class WebhookCreate(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "project_id": "p1",
                    "url": "https://example.com/hooks/baton",
                    "event_types": ["run.succeeded", "run.failed", "input.requested"],
                }
            ]
        },
    )

    project_id: str = Id
    url: str = Field(min_length=1, max_length=2000, description="http(s) URL on a public address")
    event_types: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        default_factory=lambda: [ALL_EVENTS],
        min_length=1,
        max_length=len(WEBHOOK_EVENT_TYPES) + 1,
        description=f"any of {', '.join(WEBHOOK_EVENT_TYPES)}; or '*' for all",
    )
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=200,
        description="signs deliveries; made by the server when omitted, and shown only in this response",
    )
    description: str = Field(default="", max_length=500)
    active: bool = True


class WebhookUpdate(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"active": False}]})

    url: str | None = Field(default=None, min_length=1, max_length=2000)
    event_types: list[Annotated[str, Field(min_length=1, max_length=40)]] | None = Field(
        default=None, min_length=1, max_length=len(WEBHOOK_EVENT_TYPES) + 1
    )
    description: str | None = Field(default=None, max_length=500)
    active: bool | None = None


class WebhookOut(BaseModel):
    id: str
    project_id: str
    url: str
    event_types: list[str]
    description: str
    active: bool
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="verifies the Baton-Signature header: shown once, store it now")


class DeliveryOut(BaseModel):
    id: str = Field(description="also sent as the Baton-Delivery header, the same on every retry")
    webhook_id: str
    event_id: int | None = Field(description="the logged event delivered; null for a test ping")
    event_type: str
    run_id: str | None
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(description="when a pending delivery is tried next")
    finished_at: datetime | None


def webhook_out(row: Any) -> WebhookOut:
    return WebhookOut(
        id=row.id,
        project_id=row.project_id,
        url=row.url,
        event_types=list(row.event_types or []),
        description=row.description or "",
        active=bool(row.active),
        created_by=row.created_by,
        created_at=iso_required(row.created_at),
        updated_at=iso_required(row.updated_at),
    )


def delivery_out(row: Any) -> DeliveryOut:
    return DeliveryOut(
        id=row.id,
        webhook_id=row.webhook_id,
        event_id=row.event_id,
        event_type=row.event_type,
        run_id=row.run_id,
        status=row.status,
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=iso_required(row.created_at),
        last_attempt_at=iso(row.last_attempt_at),
        next_attempt_at=iso(row.next_attempt_at) if row.status == webhook_store.PENDING else None,
        finished_at=iso(row.finished_at),
    )


def _require(who: Principal, project_id: str, role: str, what: str) -> None:
    if project_id not in who.roles:
        raise NotFound(f"{what} not found")
    if not who.can(project_id, role):
        raise Forbidden(f"your role in project {project_id} is {who.roles[project_id]}; this needs {role}")


async def _visible(rt: Rt, who: Principal, webhook_id: str, role: str) -> Any:
    row = await rt.db.read(webhook_store.get_webhook, webhook_id)
    if row is None:
        raise NotFound(f"webhook {webhook_id} not found")
    _require(who, row.project_id, role, f"webhook {webhook_id}")
    return row


async def _checked_url(request: Request, url: str) -> str:
    settings: ServerSettings = request.app.state.settings
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT_S):
            await check_target(url, allow_private=settings.webhooks.allow_private, resolver=resolve)
    except TimeoutError:
        why = f"looking up the host of {url!r} took over {_RESOLVE_TIMEOUT_S:g} s; check the URL"
        raise InvalidInputs(why, [{"field": "url", "message": why}]) from None
    return url.strip()


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    operation_id="create_webhook",
    responses={201: {"links": LINKS}},
)
async def create_webhook(body: WebhookCreate, request: Request, who: Caller, rt: Rt) -> WebhookCreated:
    """Subscribe a URL to a project's events. The response carries the signing secret, once."""
    _require(who, body.project_id, "admin", f"project {body.project_id}")
    event_types = normalize_event_types(body.event_types)
    url = await _checked_url(request, body.url)
    secret = body.secret or new_secret()
    row = await rt.db.write(
        webhook_store.create_webhook,
        project_id=body.project_id,
        url=url,
        event_types=event_types,
        secret=secret,
        description=body.description,
        active=body.active,
        created_by=who.user_id,
    )
    return WebhookCreated(**webhook_out(row).model_dump(), secret=secret)


@router.get("", response_model=list[WebhookOut], operation_id="list_webhooks")
async def list_webhooks(
    who: Caller,
    rt: Rt,
    project_id: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
) -> list[WebhookOut]:
    """Webhooks of the projects where the caller is a member or admin (or of one project)."""
    readable = [p for p in who.project_ids if who.can(p, "member")]
    if project_id is not None:
        _require(who, project_id, "member", f"project {project_id}")
        readable = [project_id]
    rows = await rt.db.read(webhook_store.list_webhooks, readable)
    return [webhook_out(r) for r in rows]


@router.get("/{webhook_id}", response_model=WebhookOut, operation_id="get_webhook")
async def get_webhook(webhook_id: str, who: Caller, rt: Rt) -> WebhookOut:
    return webhook_out(await _visible(rt, who, webhook_id, "member"))


@router.patch("/{webhook_id}", response_model=WebhookOut, operation_id="update_webhook")
async def update_webhook(
    webhook_id: str, body: WebhookUpdate, request: Request, who: Caller, rt: Rt
) -> WebhookOut:
    """Change the URL (checked again), the event types, the description, or pause it (`active`)."""
    await _visible(rt, who, webhook_id, "admin")
    event_types = normalize_event_types(body.event_types) if body.event_types is not None else None
    url = await _checked_url(request, body.url) if body.url is not None else None
    row = await rt.db.write(
        webhook_store.update_webhook,
        webhook_id,
        url=url,
        event_types=event_types,
        description=body.description,
        active=body.active,
    )
    if row is None:
        raise NotFound(f"webhook {webhook_id} not found")
    return webhook_out(row)


@router.delete("/{webhook_id}", status_code=204, response_class=Response, operation_id="delete_webhook")
async def delete_webhook(webhook_id: str, who: Caller, rt: Rt) -> Response:
    """Delete the webhook and its delivery records; deliveries in flight are dropped."""
    await _visible(rt, who, webhook_id, "admin")
    if not await rt.db.write(webhook_store.delete_webhook, webhook_id):
        raise NotFound(f"webhook {webhook_id} not found")
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries", response_model=list[DeliveryOut], operation_id="list_webhook_deliveries"
)
async def list_deliveries(
    webhook_id: str,
    who: Caller,
    rt: Rt,
    status: Literal["pending", "succeeded", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeliveryOut]:
    """Newest first: status, attempts, the last response code and error, and when it is tried next."""
    await _visible(rt, who, webhook_id, "member")
    rows = await rt.db.read(webhook_store.list_deliveries, webhook_id, status=status, limit=limit)
    return [delivery_out(r) for r in rows]


@router.post("/{webhook_id}/ping", status_code=202, response_model=DeliveryOut, operation_id="ping_webhook")
async def ping_webhook(webhook_id: str, who: Caller, rt: Rt) -> DeliveryOut:
    """Queue a signed `webhook.ping` delivery now; follow it in the deliveries list."""
    row = await _visible(rt, who, webhook_id, "admin")
    return delivery_out(await rt.db.write(webhook_store.add_ping, webhook_id, row.project_id))


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryOut,
    operation_id="redeliver_webhook_delivery",
)
async def redeliver(webhook_id: str, delivery_id: str, who: Caller, rt: Rt) -> DeliveryOut:
    """Send a delivery again now, with a fresh attempt budget (the same id, so receivers can dedupe)."""
    await _visible(rt, who, webhook_id, "admin")
    found = await rt.db.read(webhook_store.get_delivery, delivery_id)
    if found is None or found.webhook_id != webhook_id:
        raise NotFound(f"delivery {delivery_id} of webhook {webhook_id} not found")
    row = await rt.db.write(webhook_store.redeliver, delivery_id)
    if row is None:
        raise NotFound(f"delivery {delivery_id} of webhook {webhook_id} not found")
    return delivery_out(row)
