"""The events this process committed last, per run, so live run streams need not read them back.

A run followed by ten streams used to cost a query per commit (shared by the ten) before a frame
went out; with fifty talking runs that was most of a server's time (bench/stream.py, issue 7).
The window of a run only ever holds a contiguous, committed range of its `seq`s, so a reader
that finds no `after + 1` in the window reads the store. On PostgreSQL the events other
processes commit arrive here too, in their transaction's notifications (`encode_for_notify`);
an event too big for one is read from the store.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RecentEvent:
    """An event as committed: the attributes of an `events` row that a run stream shows."""

    run_id: str
    seq: int
    type: str
    step_key: str | None
    attempt: int | None
    payload: Any
    created_at: float


#: events kept per run; a stream further behind than this reads the store
PER_RUN = 512
#: events kept in all (about 0.5 KiB each); the runs that talked least recently go first
TOTAL = 20_000


class RecentEvents:
    """Per run, the last committed events this process appended; used on the event loop's thread."""

    def __init__(self, per_run: int = PER_RUN, total: int = TOTAL) -> None:
        self.per_run = per_run
        self.total = total
        self._runs: OrderedDict[str, list[RecentEvent]] = OrderedDict()
        self._count = 0
        #: True where every writer of the database tells this process what it committed (a
        #: PostgreSQL server that receives events): then a run's highest known `seq` is kept,
        #: and a stream caught up with it is told "nothing newer" instead of reading the store
        self.track_frontier = False
        self._through: dict[str, int] = {}

    def publish(self, committed: list[RecentEvent]) -> None:
        """Events of one committed transaction, in `seq` order within each run."""
        for event in committed:
            window = self._runs.get(event.run_id)
            if window is not None and window[0].seq <= event.seq <= window[-1].seq:
                continue  # known already: this process's own commit, heard back by notification
            if self.track_frontier:
                self._through[event.run_id] = max(self._through.get(event.run_id, 0), event.seq)
            if window is not None and window[-1].seq + 1 == event.seq:
                window.append(event)
                self._count += 1
                self._runs.move_to_end(event.run_id)
                if len(window) > self.per_run:
                    cut = len(window) - self.per_run // 2
                    del window[:cut]
                    self._count -= cut
            else:
                # A gap (events of another process, or commits published out of order): what is
                # known to be contiguous starts again here; the store fills in anything older.
                if window is not None:
                    self._count -= len(window)
                self._runs[event.run_id] = [event]
                self._runs.move_to_end(event.run_id)
                self._count += 1
        while self._count > self.total and len(self._runs) > 1:
            run_id, dropped = self._runs.popitem(last=False)
            self._count -= len(dropped)
            self._through.pop(run_id, None)

    def heard_through(self, run_id: str, seq: int) -> None:
        """Another process committed the run's events up to `seq` (a notification said so)."""
        if self.track_frontier and run_id in self._runs:
            self._through[run_id] = max(self._through.get(run_id, 0), seq)

    def frontier_unknown(self, run_id: str) -> None:
        """Something was committed to the run that this process was not told the extent of."""
        self._through.pop(run_id, None)

    def forget_frontiers(self) -> None:
        """Notifications may have been missed (the listener reconnected): trust none."""
        self._through.clear()

    def after(
        self, run_id: str, after: int, limit: int, *, frontier: bool = True
    ) -> list[RecentEvent] | None:
        """Events `after + 1 …` of the run (at most `limit`); None: read them from the store.

        `frontier=False`: do not answer "nothing newer" from the known frontier (a caller that
        waited without being woken checks the store, in case a notification was lost).
        """
        window = self._runs.get(run_id)
        if not window:
            return None
        first = window[0].seq
        start = after + 1 - first
        if frontier and start == len(window) and self._through.get(run_id) == window[-1].seq:
            return []  # caught up, and every commit of the run so far is known here
        if start < 0 or start >= len(window):
            return None
        return window[start : start + limit]


#: PostgreSQL refuses a notification payload of 8000 bytes or more
NOTIFY_PAYLOAD_MAX = 7900


def encode_for_notify(committed: Sequence[RecentEvent]) -> list[str]:
    """A transaction's events as notification payloads, each `{"events": [...], "through": {run: seq}}`.

    ASCII JSON (its byte length is the string's, in any server encoding), in as few payloads
    as fit PostgreSQL's limit. An event too big for one is left out, but its run's `through`
    is still sent: a listener then knows its window is behind and its streams read the store.
    """
    payloads: list[str] = []
    events: list[str] = []
    through: dict[str, int] = {}
    size = 0
    for event in committed:
        row = _event_json(event)
        if len(row) + len(event.run_id) + _THROUGH_ENTRY + _WRAPPER > NOTIFY_PAYLOAD_MAX:
            row = ""  # too big to send at all: only its run's `through` goes
        # The run's `through` entry is counted for every event: an upper bound on the size.
        cost = (len(row) + 1 if row else 0) + len(event.run_id) + _THROUGH_ENTRY
        if through and size + cost > NOTIFY_PAYLOAD_MAX - _WRAPPER:
            payloads.append(_payload(events, through))
            events, through, size = [], {}, 0
        if row:
            events.append(row)
        through[event.run_id] = max(through.get(event.run_id, 0), event.seq)
        size += cost
    if through:
        payloads.append(_payload(events, through))
    return payloads


#: the bytes of `{"events":[],"through":}` and of one `"run_id":seq,` beyond the id
_WRAPPER = 40
_THROUGH_ENTRY = 25


def _event_json(event: RecentEvent) -> str:
    """The event as a JSON array; empty when its payload is not JSON (the insert refuses those)."""
    fields = (
        event.run_id,
        event.seq,
        event.type,
        event.step_key,
        event.attempt,
        event.payload,
        event.created_at,
    )
    try:
        return json.dumps(fields, separators=(",", ":"))
    except (TypeError, ValueError):
        return ""


def _payload(events: list[str], through: dict[str, int]) -> str:
    shown = json.dumps(through, separators=(",", ":"))
    return '{"events":[' + ",".join(events) + '],"through":' + shown + "}"


def decode_from_notify(payload: str) -> tuple[list[RecentEvent], dict[str, int]]:
    """The events and the per-run last `seq` of an `encode_for_notify` payload; ValueError if not one."""
    try:
        decoded = json.loads(payload)
        events = [RecentEvent(*fields) for fields in decoded.get("events", ())]
        through = {str(run_id): int(seq) for run_id, seq in decoded["through"].items()}
    except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as error:
        raise ValueError(f"not an events notification: {error}") from error
    return events, through
