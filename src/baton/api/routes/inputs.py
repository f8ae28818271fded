"""/v1/inputs: the human input inbox and answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy import Connection, select

from baton.api.convert import input_out, run_out
from baton.api.dependencies import Caller, Rt, visible_run
from baton.api.routes.runs import IdempotencyKey
from baton.api.schemas import AnswerBody, InputRequestOut, RunOut
from baton.domain.errors import NotFound
from baton.store import inputs as input_store
from baton.store.schema import input_requests, runs

router = APIRouter(prefix="/v1/inputs", tags=["inputs"])


def _visible_requests(conn: Connection, status: str | None, project_ids: list[str], owner: str) -> list[Any]:
    visible = runs.c.project_id.in_(project_ids) | (
        runs.c.project_id.is_(None) & (runs.c.created_by == owner)
    )
    query = select(input_requests).join(runs, runs.c.id == input_requests.c.run_id).where(visible)
    if status:
        query = query.where(input_requests.c.status == status)
    return list(conn.execute(query.order_by(input_requests.c.created_at).limit(500)))


@router.get("", response_model=list[InputRequestOut], operation_id="list_inputs")
async def list_inputs(
    who: Caller,
    rt: Rt,
    status: Annotated[Literal["pending", "answered", "cancelled", "expired"] | None, Query()] = "pending",
) -> list[InputRequestOut]:
    """Input requests of the caller's runs (pending ones by default), oldest first."""
    rows = await rt.db.read(_visible_requests, status, who.project_ids, who.user_id)
    return [input_out(dict(r._mapping)) for r in rows]


@router.post("/{request_id}/answer", response_model=RunOut, operation_id="answer_input")
async def answer_input(
    request_id: str, body: AnswerBody, who: Caller, rt: Rt, idempotency_key: IdempotencyKey = None
) -> RunOut:
    """Answer a pending request; the answer must satisfy its schema. The run moves on at once.

    With the `Idempotency-Key` of the answer that was accepted, a retry returns the run (200), not a 409.
    """
    request = await rt.db.read(input_store.get_request, request_id)
    if request is None:
        raise NotFound(f"input request {request_id} not found")
    try:
        await visible_run(rt, who, request.run_id, "member")
    except NotFound:
        raise NotFound(f"input request {request_id} not found") from None
    answered = await rt.lifecycle.answer(
        request_id, body.answer, by=who.user_name, idempotency_key=idempotency_key
    )
    return run_out(answered)
