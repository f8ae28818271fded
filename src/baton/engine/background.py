"""The periodic services every worker runs beside its claim loop (schedules, webhook deliveries).

Each service is a coroutine factory taking the worker's database and catalog; it loops until
cancelled and must survive its own errors (log and go on), because a service that dies stops the
worker (`Worker._raise_if_side_task_died`). Services are listed here, not discovered, so what a
worker runs is visible in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from baton.flows.catalog import Catalog
from baton.store.database import Database


@dataclass(frozen=True)
class BackgroundService:
    name: str
    run_forever: Callable[[Database, Catalog], Coroutine[None, None, None]]


def background_services() -> list[BackgroundService]:
    """The services a worker starts, in order; imports stay lazy so an idle feature costs nothing."""
    from baton.engine import schedules, webhooks

    return [
        BackgroundService("schedules", schedules.run_forever),
        BackgroundService("webhooks", webhooks.run_webhooks_forever),
    ]
