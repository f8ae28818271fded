"""Webhook rows by intent: subscriptions, logged events into deliveries, claiming and settling them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, insert, or_, select, update

from baton.domain.ids import new_id, new_lease_token
from baton.domain.webhooks import PING_EVENT, subscribes
from baton.store.clock import db_now, dialect_of
from baton.store.database import touch
from baton.store.events import format_cursor, parse_cursor
from baton.store.schema import events, runs, webhook_cursors, webhook_deliveries, webhooks

#: the dispatcher's row in `webhook_cursors`
DISPATCH_CURSOR = "dispatch"
PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
#: wakes the delivery service when a delivery is made due outside the dispatcher (ping, redeliver)
WEBHOOKS_TOPIC = "webhooks"

# Every column but the secret: what list and get return.
_PUBLIC = [c for c in webhooks.c if c.name != "secret"]


# --- subscriptions --------------------------------------------------------------------------------


def create_webhook(
    conn: Connection,
    *,
    project_id: str,
    url: str,
    event_types: list[str],
    secret: str,
    description: str = "",
    active: bool = True,
    created_by: str | None = None,
) -> Row[Any]:
    now = db_now(conn)
    webhook_id = new_id("whk")
    if active:
        _wake_dispatcher(conn, now)
    conn.execute(
        insert(webhooks).values(
            id=webhook_id,
            project_id=project_id,
            url=url,
            event_types=event_types,
            secret=secret,
            description=description,
            active=active,
            created_by=created_by,
            created_at=now,
            updated_at=now,
        )
    )
    return conn.execute(select(*_PUBLIC).where(webhooks.c.id == webhook_id)).one()


def get_webhook(conn: Connection, webhook_id: str) -> Row[Any] | None:
    """The webhook without its secret."""
    return conn.execute(select(*_PUBLIC).where(webhooks.c.id == webhook_id)).first()


def list_webhooks(conn: Connection, project_ids: Sequence[str] | None) -> list[Row[Any]]:
    """Webhooks of these projects (None: of all), oldest first, without their secrets."""
    query = select(*_PUBLIC).order_by(webhooks.c.created_at, webhooks.c.id)
    if project_ids is not None:
        query = query.where(webhooks.c.project_id.in_(list(project_ids)))
    return list(conn.execute(query))


def update_webhook(conn: Connection, webhook_id: str, **fields: Any) -> Row[Any] | None:
    allowed = {"url", "event_types", "description", "active"}
    values = {k: v for k, v in fields.items() if k in allowed and v is not None}
    if values.get("active"):
        _wake_dispatcher(conn, db_now(conn))
    conn.execute(
        update(webhooks).where(webhooks.c.id == webhook_id).values(updated_at=db_now(conn), **values)
    )
    return get_webhook(conn, webhook_id)


def any_active(conn: Connection) -> bool:
    """Whether some webhook wants events: with none, the dispatcher reads and writes nothing."""
    return conn.execute(select(webhooks.c.id).where(webhooks.c.active.is_(True)).limit(1)).first() is not None


def _wake_dispatcher(conn: Connection, now: float) -> None:
    """The first active webhook starts the dispatcher at the end of the log.

    While no webhook is active the dispatcher's cursor stands still; without this, the first new
    webhook would make it scan every event logged since (none of which that webhook would get).
    """
    if any_active(conn):
        return
    position = _log_end(conn)
    _insert_cursor(conn, position, now)
    conn.execute(
        update(webhook_cursors)
        .where(webhook_cursors.c.name == DISPATCH_CURSOR)
        .values(position=position, updated_at=now)
    )


def delete_webhook(conn: Connection, webhook_id: str) -> bool:
    """Delete it and its deliveries (cascade); False when there was none."""
    conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == webhook_id))
    return conn.execute(delete(webhooks).where(webhooks.c.id == webhook_id)).rowcount > 0


# --- deliveries as the API shows them -------------------------------------------------------------


def list_deliveries(
    conn: Connection, webhook_id: str, *, status: str | None = None, limit: int = 100
) -> list[Row[Any]]:
    """A webhook's deliveries, newest first."""
    query = (
        select(webhook_deliveries)
        .where(webhook_deliveries.c.webhook_id == webhook_id)
        .order_by(webhook_deliveries.c.created_at.desc(), webhook_deliveries.c.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(webhook_deliveries.c.status == status)
    return list(conn.execute(query))


def get_delivery(conn: Connection, delivery_id: str) -> Row[Any] | None:
    return conn.execute(select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)).first()


def add_ping(conn: Connection, webhook_id: str, project_id: str) -> Row[Any]:
    """A test delivery, due now, with no event behind it."""
    now = db_now(conn)
    delivery_id = new_id("dlv")
    body = {
        "id": delivery_id,
        "type": PING_EVENT,
        "created_at": now,
        "project_id": project_id,
        "webhook_id": webhook_id,
        "data": {"message": "a test delivery from Baton"},
    }
    conn.execute(insert(webhook_deliveries).values(_delivery_row(delivery_id, webhook_id, None, body, now)))
    touch(conn, WEBHOOKS_TOPIC)
    return conn.execute(select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)).one()


def redeliver(conn: Connection, delivery_id: str) -> Row[Any] | None:
    """Make a finished delivery due again now, with a fresh attempt budget."""
    now = db_now(conn)
    conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id == delivery_id)
        .values(
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            lease_token=None,
            finished_at=None,
            created_at=now,
        )
    )
    touch(conn, WEBHOOKS_TOPIC)
    return get_delivery(conn, delivery_id)


def _delivery_row(
    delivery_id: str, webhook_id: str, event: Any | None, body: dict[str, Any], now: float
) -> dict[str, Any]:
    return {
        "id": delivery_id,
        "webhook_id": webhook_id,
        "event_id": None if event is None else int(event.id),
        "event_type": body["type"],
        "run_id": None if event is None else event.run_id,
        "body": body,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


# --- the dispatcher: event log -> deliveries ------------------------------------------------------


def dispatch_position(conn: Connection) -> str | None:
    """Where the dispatcher is, or None before its first pass."""
    return conn.execute(
        select(webhook_cursors.c.position).where(webhook_cursors.c.name == DISPATCH_CURSOR)
    ).scalar_one_or_none()


def has_events_after(conn: Connection, position: str | None) -> bool:
    """Cheap read-only check, so an idle dispatcher does not take SQLite's write lock."""
    if position is None:
        return True
    tx, event_id = parse_cursor(position)
    query = select(events.c.id).where(_after(tx, event_id)).limit(1)
    horizon = dialect_of(conn).visible_horizon(conn)
    if horizon is not None:
        query = query.where(events.c.tx < horizon)
    return conn.execute(query).first() is not None


def _after(tx: int, event_id: int) -> Any:
    return or_(events.c.tx > tx, and_(events.c.tx == tx, events.c.id > event_id))


def dispatch_events(conn: Connection, limit: int = 500) -> int:
    """Turn the next logged events into deliveries for the webhooks that want them; advance the cursor.

    One transaction: the deliveries and the cursor move together, so a crash re-reads the same
    events and the unique (webhook_id, event_id) key ignores any that were made already. The
    read follows `store.events.global_events_after`: only transactions below the snapshot's xmin
    are passed, so an event whose transaction commits late is never skipped on PostgreSQL.
    The cursor row is locked (PostgreSQL: SKIP LOCKED), so concurrent dispatchers in several
    workers take turns instead of doing the same work; returns how many deliveries were made.
    """
    now = db_now(conn)
    locked = conn.execute(
        select(webhook_cursors.c.position)
        .where(webhook_cursors.c.name == DISPATCH_CURSOR)
        .with_for_update(skip_locked=True)
    ).first()
    if locked is None:
        exists = conn.execute(
            select(webhook_cursors.c.name).where(webhook_cursors.c.name == DISPATCH_CURSOR)
        ).first()
        if exists is not None:
            return 0  # another dispatcher holds it
        # First pass ever: start at the end of the log; webhooks only receive events from now on.
        _insert_cursor(conn, _log_end(conn), now)
        return 0
    tx, event_id = parse_cursor(locked.position)
    horizon = dialect_of(conn).visible_horizon(conn)
    query = (
        select(
            events.c.id,
            events.c.tx,
            events.c.run_id,
            events.c.seq,
            events.c.type,
            events.c.step_key,
            events.c.attempt,
            events.c.payload,
            events.c.created_at,
            runs.c.project_id,
            runs.c.flow,
            runs.c.title,
            runs.c.status.label("run_status"),
        )
        .join(runs, runs.c.id == events.c.run_id)
        .where(_after(tx, event_id))
        .order_by(events.c.tx, events.c.id)
        .limit(limit)
    )
    if horizon is not None:
        query = query.where(events.c.tx < horizon)
    rows = list(conn.execute(query))
    if not rows:
        return 0
    hooks = list(
        conn.execute(
            select(webhooks.c.id, webhooks.c.project_id, webhooks.c.event_types, webhooks.c.created_at).where(
                webhooks.c.active.is_(True)
            )
        )
    )
    by_project: dict[str, list[Any]] = {}
    for hook in hooks:
        by_project.setdefault(hook.project_id, []).append(hook)
    made: list[dict[str, Any]] = []
    for event in rows:
        for hook in by_project.get(event.project_id or "", ()):
            # A webhook gets the events that happened after it was made, not the backlog.
            if event.created_at >= hook.created_at and subscribes(hook.event_types, event.type):
                delivery_id = new_id("dlv")
                made.append(_delivery_row(delivery_id, hook.id, event, event_body(delivery_id, event), now))
    if made:
        conn.execute(_insert_ignoring_duplicates(conn), made)
        touch(conn, WEBHOOKS_TOPIC)
    last = rows[-1]
    conn.execute(
        update(webhook_cursors)
        .where(webhook_cursors.c.name == DISPATCH_CURSOR)
        .values(position=format_cursor(int(last.tx), int(last.id)), updated_at=now)
    )
    return len(made)


def event_body(delivery_id: str, event: Any) -> dict[str, Any]:
    """What the receiver gets: the event's envelope plus enough of its run to act on it."""
    payload = dict(event.payload or {})
    if event.step_key is not None:
        payload.setdefault("step_key", event.step_key)
    if event.attempt is not None:
        payload.setdefault("attempt", event.attempt)
    return {
        "id": delivery_id,
        "type": event.type,
        "created_at": float(event.created_at),
        "project_id": event.project_id,
        "run": {"id": event.run_id, "flow": event.flow, "title": event.title, "status": event.run_status},
        "event": {"seq": int(event.seq), "payload": payload},
    }


def _dialect_insert(conn: Connection) -> Callable[[Any], Any]:
    """The dialect's INSERT (ON CONFLICT); imported here: an embedded run never loads PostgreSQL's."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def _insert_ignoring_duplicates(conn: Connection) -> Any:
    return _dialect_insert(conn)(webhook_deliveries).on_conflict_do_nothing(
        index_elements=["webhook_id", "event_id"]
    )


def _log_end(conn: Connection) -> str:
    """The position of the last event every reader can already see."""
    query = select(events.c.tx, events.c.id).order_by(events.c.tx.desc(), events.c.id.desc()).limit(1)
    horizon = dialect_of(conn).visible_horizon(conn)
    if horizon is not None:
        query = query.where(events.c.tx < horizon)
    last = conn.execute(query).first()
    return format_cursor(int(last.tx), int(last.id)) if last is not None else format_cursor(-1, 0)


def _insert_cursor(conn: Connection, position: str, now: float) -> None:
    conn.execute(
        _dialect_insert(conn)(webhook_cursors)
        .values(name=DISPATCH_CURSOR, position=position, updated_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )


# --- the delivery service: claim, then settle -----------------------------------------------------


def claim_due(conn: Connection, lease_s: float, limit: int) -> list[Row[Any]]:
    """Claim up to `limit` due deliveries of active webhooks, with their URL and secret.

    A claim counts the attempt, mints a lease token and pushes `next_attempt_at` past the lease:
    a worker that dies mid-attempt leaves the delivery due again once the lease runs out, and its
    late result is ignored (`settle` checks the token). PostgreSQL: SKIP LOCKED.
    """
    now = db_now(conn)
    candidates = list(
        conn.execute(
            select(webhook_deliveries.c.id)
            .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
            .where(
                webhook_deliveries.c.status == PENDING,
                webhook_deliveries.c.next_attempt_at <= now,
                webhooks.c.active.is_(True),
            )
            .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id)
            .limit(limit)
            .with_for_update(of=webhook_deliveries, skip_locked=True)
        ).scalars()
    )
    claimed: list[Row[Any]] = []
    for delivery_id in candidates:
        token = new_lease_token()
        moved = conn.execute(
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.id == delivery_id,
                webhook_deliveries.c.status == PENDING,
                webhook_deliveries.c.next_attempt_at <= now,
            )
            .values(
                attempts=webhook_deliveries.c.attempts + 1,
                lease_token=token,
                next_attempt_at=now + lease_s,
                last_attempt_at=now,
            )
        ).rowcount
        if moved:
            claimed.append(
                conn.execute(
                    select(webhook_deliveries, webhooks.c.url, webhooks.c.secret)
                    .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
                    .where(webhook_deliveries.c.id == delivery_id)
                ).one()
            )
    return claimed


def settle(
    conn: Connection,
    delivery_id: str,
    token: str,
    *,
    status: str,
    status_code: int | None,
    error: str | None,
    retry_in: float | None,
) -> bool:
    """Record an attempt's outcome if this worker still holds it; False when its lease was lost.

    `status` is PENDING (then `retry_in` seconds from now), SUCCEEDED or FAILED.
    """
    now = db_now(conn)
    # The token goes in every case: a settled attempt is no longer this worker's to `release`.
    values: dict[str, Any] = {
        "status": status,
        "last_status_code": status_code,
        "last_error": error,
        "lease_token": None,
    }
    if status == PENDING:
        values["next_attempt_at"] = now + (retry_in or 0.0)
    else:
        values["finished_at"] = now
    moved = conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id == delivery_id, webhook_deliveries.c.lease_token == token)
        .values(**values)
    ).rowcount
    return bool(moved)


def release(conn: Connection, delivery_id: str, token: str) -> None:
    """Give an attempt the worker could not finish (it is stopping) back: due again now, not counted.

    Not counting it keeps a busy deploy from spending a receiver's attempts; the price is that an
    attempt cut off after its request left may be sent once more (delivery is at least once).
    """
    conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id == delivery_id, webhook_deliveries.c.lease_token == token)
        .values(next_attempt_at=db_now(conn), lease_token=None, attempts=webhook_deliveries.c.attempts - 1)
    )
    touch(conn, WEBHOOKS_TOPIC)


def next_due_in(conn: Connection) -> float | None:
    """Seconds until the earliest pending delivery is due (for the service's sleep)."""
    earliest = conn.execute(
        select(webhook_deliveries.c.next_attempt_at)
        .where(webhook_deliveries.c.status == PENDING)
        .order_by(webhook_deliveries.c.next_attempt_at)
        .limit(1)
    ).scalar_one_or_none()
    return None if earliest is None else max(0.0, float(earliest) - db_now(conn))


def prune_finished(conn: Connection, older_than_s: float, limit: int = 1000) -> int:
    """Delete up to `limit` deliveries that ended (succeeded or failed) over `older_than_s` ago.

    Pending ones stay whatever their age. The dispatcher's cursor is long past their events, so a
    pruned delivery is never made again.
    """
    cutoff = db_now(conn) - older_than_s
    old = (
        select(webhook_deliveries.c.id)
        .where(
            webhook_deliveries.c.status.in_([SUCCEEDED, FAILED]),
            webhook_deliveries.c.finished_at < cutoff,
        )
        .limit(limit)
    )
    return int(conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.id.in_(old))).rowcount)
