"""The events this process committed last, per run, so live run streams need not read them back.

A run followed by ten streams used to cost a query per commit (shared by the ten) before a frame
went out; with fifty talking runs that was most of a server's time (bench/stream.py, issue 7).
The window of a run only ever holds a contiguous, committed range of its `seq`s: events another
process wrote are not here, so a reader that finds no `after + 1` in the window reads the store.
"""

from __future__ import annotations

from collections import OrderedDict
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

    def publish(self, committed: list[RecentEvent]) -> None:
        """Events of one committed transaction, in `seq` order within each run."""
        for event in committed:
            window = self._runs.get(event.run_id)
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
            _run, dropped = self._runs.popitem(last=False)
            self._count -= len(dropped)

    def after(self, run_id: str, after: int, limit: int) -> list[RecentEvent] | None:
        """Events `after + 1 …` of the run (at most `limit`); None: read them from the store."""
        window = self._runs.get(run_id)
        if not window:
            return None
        first = window[0].seq
        start = after + 1 - first
        if start < 0 or start >= len(window):
            return None
        return window[start : start + limit]
