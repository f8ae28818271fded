"""Append events under the run's row lock with a dense per-run `seq`; read them back in order."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, insert, literal_column, or_, select, text, update

from baton.domain.errors import UsageError
from baton.domain.events import MAX_EVENT_PAYLOAD_BYTES, EventDraft
from baton.store import direct
from baton.store.clock import db_now, dialect_of
from baton.store.database import touch
from baton.store.recent_events import RecentEvent
from baton.store.schema import events, runs

_EVENT_FIELDS = ("run_id", "seq", "tx", "type", "step_key", "attempt", "payload", "created_at")
_BUMP_SEQ = (
    update(runs)
    .where(runs.c.id == bindparam("run_id"))
    .values(last_seq=runs.c.last_seq + bindparam("n"))
    .returning(runs.c.last_seq)
)
# inline: no implicit RETURNING of the new ids (executemany cannot return rows on every driver)
_INSERT_EVENT = (
    insert(events)
    .inline()
    .values({name: bindparam(name, type_=events.c[name].type) for name in _EVENT_FIELDS})
)


def append_events(conn: Connection, run_id: str, drafts: Sequence[EventDraft]) -> list[int]:
    """Append drafts as the run's next sequence numbers; returns their `seq`s.

    Bumping `runs.last_seq` takes the run row's lock, so two writers of one run commit their
    events in `seq` order and a reader that has seen `seq` N never later finds a smaller one.
    """
    if not drafts:
        return []
    if conn.dialect.name == "postgresql":
        return _bump_and_insert(conn, run_id, drafts)
    if len(json.dumps([d.payload for d in drafts], default=str)) > MAX_EVENT_PAYLOAD_BYTES:
        _check_sizes(drafts)  # all of them together are too large: is one of them?
    bumped = direct.first(conn, _BUMP_SEQ, {"run_id": run_id, "n": len(drafts)})
    if bumped is None:
        raise ValueError(f"cannot append events to run {run_id}: it does not exist")
    committed = _numbered(run_id, int(bumped[0]), drafts, db_now(conn))
    _insert(conn, committed, dialect_of(conn).transaction_marker(conn))
    touch(conn, f"run:{run_id}", "runs")
    return [event.seq for event in committed]


def _bump_and_insert(conn: Connection, run_id: str, drafts: Sequence[EventDraft]) -> list[int]:
    """PostgreSQL: bump the run's sequence and insert the drafts as its next events, in one statement.

    The events go as one JSON array, whatever their number: psycopg's executemany (a pipeline of
    one insert per event) cost 2.6 ms for a new run's hundred `step.queued` events, and a
    statement with a parameter per field cost most of its time binding them.
    """
    records = [
        {"i": i, "type": d.type, "step_key": d.step_key, "attempt": d.attempt, "payload": d.payload}
        for i, d in enumerate(drafts)
    ]
    now = db_now(conn)
    params = {"run_id": run_id, "n": len(drafts), "now": now, "events": _events_json(drafts, records)}
    bumped = direct.first(conn, _BUMP_AND_INSERT, params)
    if bumped is None:
        raise ValueError(f"cannot append events to run {run_id}: it does not exist")
    conn.info.setdefault("baton_tx", bumped.tx)
    committed = _numbered(run_id, int(bumped.last), drafts, now)
    conn.info.setdefault("baton_appended", []).extend(committed)
    touch(conn, f"run:{run_id}", "runs")
    return [event.seq for event in committed]


#: the JSON array of events as PostgreSQL reads it
_EVENT_RECORD = "e(i integer, type text, step_key text, attempt integer, payload json)"
_BUMP_AND_INSERT = text(
    "WITH bump AS (UPDATE runs SET last_seq = runs.last_seq + :n WHERE runs.id = :run_id"
    " RETURNING runs.last_seq AS last, pg_current_xact_id()::text::bigint AS tx),"
    " inserted AS (INSERT INTO events (run_id, seq, tx, type, step_key, attempt, payload, created_at)"
    " SELECT :run_id, bump.last - :n + e.i + 1, bump.tx, e.type, e.step_key, e.attempt, e.payload, :now"
    f" FROM bump, json_to_recordset(CAST(:events AS json)) AS {_EVENT_RECORD} ORDER BY e.i)"
    " SELECT bump.last, bump.tx FROM bump"
).columns(literal_column("last"), literal_column("tx"))


def _events_json(drafts: Sequence[EventDraft], records: list[dict[str, Any]]) -> str:
    """`records` as one JSON text, each draft's payload refused if too large for an event."""
    encoded = json.dumps(records)
    if len(encoded) > MAX_EVENT_PAYLOAD_BYTES:
        _check_sizes(drafts)  # one of them may be too large: each is measured on its own
    return encoded


# PostgreSQL: several runs' sequences bumped in one statement, with the transaction's id.
_BUMP_SEQS = text(
    "UPDATE runs SET last_seq = runs.last_seq + bumps.n"
    " FROM unnest(CAST(:run_ids AS text[]), CAST(:counts AS bigint[])) AS bumps(run_id, n)"
    " WHERE runs.id = bumps.run_id"
    " RETURNING runs.id, runs.last_seq, pg_current_xact_id()::text::bigint"
)


def append_events_by_run(conn: Connection, drafts_by_run: Mapping[str, Sequence[EventDraft]]) -> None:
    """`append_events` for several runs, whose row locks the caller holds.

    On PostgreSQL every run's sequence is bumped in one statement and every event inserted in
    one more, whatever the number of runs: a worker's batch of streamed output costs the same
    few round trips for one step or fifty.
    """
    wanted = {run_id: list(drafts) for run_id, drafts in drafts_by_run.items() if drafts}
    if conn.dialect.name != "postgresql":
        for run_id, drafts in wanted.items():
            append_events(conn, run_id, drafts)
        return
    if not wanted:
        return
    bumped = conn.execute(
        _BUMP_SEQS, {"run_ids": list(wanted), "counts": [len(d) for d in wanted.values()]}
    ).all()
    if len(bumped) != len(wanted):
        missing = sorted(set(wanted) - {row[0] for row in bumped})
        raise ValueError(f"cannot append events to runs that do not exist: {missing}")
    conn.info.setdefault("baton_tx", bumped[0][2])
    now = db_now(conn)
    committed: list[RecentEvent] = []
    for run_id, last, _tx in bumped:
        committed += _numbered(run_id, int(last), wanted[run_id], now)
        touch(conn, f"run:{run_id}")
    touch(conn, "runs")
    records = [
        {
            "run_id": e.run_id,
            "seq": e.seq,
            "type": e.type,
            "step_key": e.step_key,
            "attempt": e.attempt,
            "payload": e.payload,
        }
        for e in committed
    ]
    drafts = [draft for run_drafts in wanted.values() for draft in run_drafts]
    params = {"tx": int(conn.info["baton_tx"]), "now": now, "events": _events_json(drafts, records)}
    direct.execute(conn, _INSERT_BY_RUN, params)
    conn.info.setdefault("baton_appended", []).extend(committed)


_INSERT_BY_RUN = text(
    "INSERT INTO events (run_id, seq, tx, type, step_key, attempt, payload, created_at)"
    " SELECT e.run_id, e.seq, :tx, e.type, e.step_key, e.attempt, e.payload, :now"
    " FROM json_to_recordset(CAST(:events AS json))"
    " AS e(run_id text, seq bigint, type text, step_key text, attempt integer, payload json)"
    " ORDER BY e.run_id, e.seq"
)


def _check_sizes(drafts: Sequence[EventDraft]) -> None:
    for draft in drafts:
        size = len(json.dumps(draft.payload, default=str))
        if size > MAX_EVENT_PAYLOAD_BYTES:
            raise ValueError(
                f"event {draft.type} payload is {size} bytes; store large content as an artifact"
            )


def _numbered(run_id: str, last: int, drafts: Sequence[EventDraft], now: float) -> list[RecentEvent]:
    """The drafts as the run's events up to `last`, its bumped sequence."""
    first = last - len(drafts) + 1
    return [
        RecentEvent(run_id, first + i, d.type, d.step_key, d.attempt, d.payload, now)
        for i, d in enumerate(drafts)
    ]


def _insert(conn: Connection, committed: list[RecentEvent], tx: int) -> None:
    """SQLite: insert numbered events (PostgreSQL inserts them with the sequence bump)."""
    rows = [
        {
            "run_id": e.run_id,
            "seq": e.seq,
            "tx": tx,
            "type": e.type,
            "step_key": e.step_key,
            "attempt": e.attempt,
            "payload": e.payload,
            "created_at": e.created_at,
        }
        for e in committed
    ]
    # SQLite's executemany is a C loop, as fast as one statement.
    direct.execute_many(conn, _INSERT_EVENT, rows)
    # Published to this process's live streams once (and only if) the transaction commits.
    conn.info.setdefault("baton_appended", []).extend(committed)


def events_after(conn: Connection, run_id: str, after_seq: int = 0, limit: int = 1000) -> list[Row[Any]]:
    """A run's events with `seq > after_seq`, oldest first."""
    return list(
        conn.execute(
            select(events)
            .where(events.c.run_id == run_id, events.c.seq > after_seq)
            .order_by(events.c.seq)
            .limit(limit)
        )
    )


def payloads_of_type(conn: Connection, run_id: str, event_type: str) -> list[dict[str, Any]]:
    """The payloads of a run's events of one type, oldest first (transitions replayed by key)."""
    rows = conn.execute(
        select(events.c.payload)
        .where(events.c.run_id == run_id, events.c.type == event_type)
        .order_by(events.c.seq)
    )
    return [dict(payload or {}) for (payload,) in rows]


def parse_cursor(cursor: str | None) -> tuple[int, int]:
    """A global cursor is `TX.ID` (PostgreSQL) or `0.ID` (SQLite); empty means the beginning."""
    if not cursor:
        return (-1, 0)
    tx, _, event_id = cursor.partition(".")
    try:
        return (int(tx), int(event_id or 0))
    except ValueError:
        raise UsageError(f"cursor {cursor!r} is not valid: use an id this stream sent") from None


def format_cursor(tx: int, event_id: int) -> str:
    return f"{tx}.{event_id}"


def global_events_after(
    conn: Connection,
    cursor: str | None,
    limit: int = 1000,
    *,
    project_ids: list[str] | None = None,
    owner: str | None = None,
    skip_types: tuple[str, ...] = (),
) -> tuple[list[Row[Any]], str]:
    """Events of every run after `cursor`, in commit order, never skipping a late commit.

    PostgreSQL hands out ids and transaction ids at insert time, not at commit, so a plain
    `id > cursor` tail can pass an event whose transaction commits later. Here a reader only
    moves past transactions that have all ended (below the snapshot's xmin), ordered by
    (transaction, id): whatever commits later has a larger transaction id than the cursor.
    """
    tx, event_id = parse_cursor(cursor)
    horizon = dialect_of(conn).visible_horizon(conn)
    query = select(events).where(or_(events.c.tx > tx, and_(events.c.tx == tx, events.c.id > event_id)))
    if horizon is not None:
        query = query.where(events.c.tx < horizon)
    if project_ids is not None:
        # Only runs the reader may see: its projects, and its own runs outside any project.
        visible: Any = runs.c.project_id.in_(project_ids)
        if owner is not None:
            visible = visible | (runs.c.project_id.is_(None) & (runs.c.created_by == owner))
        query = query.join(runs, runs.c.id == events.c.run_id).where(visible)
    if skip_types:
        query = query.where(events.c.type.not_in(skip_types))
    rows = list(conn.execute(query.order_by(events.c.tx, events.c.id).limit(limit)))
    if rows:
        last = rows[-1]
        return rows, format_cursor(int(last.tx), int(last.id))
    return rows, cursor or format_cursor(-1, 0)


def naive_global_events_after(conn: Connection, after_id: int, limit: int = 1000) -> list[Row[Any]]:
    """The broken reader kept for the test that shows why `global_events_after` exists."""
    return list(conn.execute(select(events).where(events.c.id > after_id).order_by(events.c.id).limit(limit)))
