"""Garbage collection in long-lived processes: start-up's objects set aside, full collections rarer.

A full collection walks every object the collector tracks, and stops the event loop meanwhile. A
server holds over 100,000 objects from start-up alone (FastAPI, pydantic, SQLAlchemy, the flows),
and 500 live streams about as many again: each full collection stalled every stream for 100-180 ms
(bench/stream.py, issue 7). What start-up built goes to the permanent generation, never scanned
again; and a full collection waits for ten times as many young collections as Python's default,
so what is left costs 80 ms about once a minute under that load instead of every two seconds.
Cyclic garbage that reaches the oldest generation lives that much longer before it is freed.
"""

from __future__ import annotations

import gc

#: collections of the middle generation between two full ones (Python's default: 10)
FULL_COLLECTION_EVERY = 100


def freeze_startup_objects() -> None:
    """Call once start-up is done (a server about to serve, a worker about to claim)."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
