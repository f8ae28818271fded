"""Garbage collection in long-lived processes: start-up's objects set aside, full collections rare.

A full collection walks every object the collector tracks, and stops the event loop meanwhile. A
server holds over 100,000 objects from start-up alone (FastAPI, pydantic, SQLAlchemy, the flows),
and 500 live streams about as many again: each full collection stalled every stream for 80-180 ms,
every few seconds under that load (bench/stream.py, issue 7). What start-up built goes to the
permanent generation, never scanned again; and a full collection waits for a hundred times as many
middle-generation collections as Python's default (some seven million allocations): in six rounds
of the benchmark (45 s of 500 live streams) none came. When one does, its pause is what it was
(about 100 ms with 500 streams). The price: cyclic garbage that reaches the oldest generation
waits that much longer to be freed; the server's RSS went from 147 to 149 MiB over those rounds.
"""

from __future__ import annotations

import gc

#: collections of the middle generation between two full ones (Python's default: 10)
FULL_COLLECTION_EVERY = 1000


def freeze_startup_objects() -> None:
    """Call once start-up is done (a server about to serve, a worker about to claim)."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
