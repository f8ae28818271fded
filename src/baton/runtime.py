"""An opened Baton: database, flow catalog, lifecycle and worker factory, for the CLI and embedding."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from baton import telemetry
from baton.engine.lifecycle import Lifecycle
from baton.engine.worker import Worker, WorkerSettings
from baton.flows.catalog import Catalog, default_sources, load_catalog
from baton.store.database import Database


@dataclass
class Runtime:
    db: Database
    catalog: Catalog
    lifecycle: Lifecycle

    def worker(self, settings: WorkerSettings | None = None) -> Worker:
        return Worker(self.db, self.catalog, settings)


@contextlib.asynccontextmanager
async def open_runtime(
    database_url: str | None = None,
    flow_sources: Sequence[str] | None = None,
    *,
    catalog: Catalog | None = None,
    upgrade: bool | None = None,
    server_policy: Mapping[str, Any] | None = None,
) -> AsyncIterator[Runtime]:
    """Open the database (migrating an embedded SQLite file on first use) and load the flows."""
    catalog = (
        catalog
        if catalog is not None
        else load_catalog(flow_sources if flow_sources is not None else default_sources())
    )
    db = await Database.open(database_url, upgrade=upgrade)
    db.run_end_hooks.append(telemetry.runs_ended)  # a run's root span, when tracing is on
    try:
        yield Runtime(db=db, catalog=catalog, lifecycle=Lifecycle(db, catalog, server_policy))
    finally:
        await db.close()
