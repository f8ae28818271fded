"""A claim-and-complete loop as a process, with Baton's real claim or a deliberately broken one (R3).

    python claimer.py --database URL --mode real|broken [--idle S]

`real` claims through `step_results.claim_with_events` (Baton's one-transaction claim). `broken`
is the negative control, test code only: it reads a claimable step in one transaction, passes the
failpoint `before_claim_update` (arm it with `before_claim_update:sleep=0.005` to widen the
window), then claims it in a second transaction with no `status = 'queued'` guard. Either way
each claimed step is "executed" (its start and end go to the executions log) and completed with
`step_results.record_success`, committing the effect `done`. Exits after `--idle` seconds with
nothing claimable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from sqlalchemy import Connection, text

from baton.domain.ids import new_lease_token, new_worker_id
from baton.engine import step_results
from baton.failpoints import failpoint
from baton.flows.catalog import Catalog
from baton.store.clock import db_now
from baton.store.database import Database
from tests.reliability.harness import ledgers
from tests.reliability.harness.flows import FLOWS

LEASE_S = 3.0


def _candidate(conn: Connection) -> str | None:
    return conn.execute(
        text(
            "SELECT steps.id FROM steps JOIN runs ON runs.id = steps.run_id "
            "WHERE steps.status = 'queued' AND runs.status = 'running' "
            "ORDER BY steps.available_at, steps.id LIMIT 1"
        )
    ).scalar()


def _unguarded_claim(conn: Connection, step_id: str, worker: str) -> Any:
    """The bug on purpose: no `AND status = 'queued'`, so a step another claimer took is taken again."""
    now = db_now(conn)
    return conn.execute(
        text(
            "UPDATE steps SET status = 'running', attempt = attempt + 1, lease_token = :token, "
            "claimed_by = :worker, lease_expires_at = :expires, heartbeat_at = :now, started_at = :now "
            "WHERE id = :id RETURNING id, run_id, key, attempt, lease_token"
        ),
        {"token": new_lease_token(), "worker": worker, "expires": now + LEASE_S, "now": now, "id": step_id},
    ).first()


async def claim(db: Database, mode: str, worker: str) -> list[Any]:
    if mode == "real":
        return list(await db.write(step_results.claim_with_events, worker, LEASE_S, 1, None))
    step_id = await db.read(_candidate)
    if step_id is None:
        return []
    failpoint("before_claim_update")
    row = await db.write(_unguarded_claim, step_id, worker)
    return [row] if row is not None else []


async def main(args: argparse.Namespace) -> int:
    db = await Database.open(args.database, upgrade=False)
    flows = Catalog(FLOWS).as_mapping()
    worker = new_worker_id()
    print(f"ready {worker} pid={os.getpid()}", flush=True)
    idle_since = time.monotonic()
    done = 0
    try:
        while time.monotonic() - idle_since < args.idle:
            rows = await claim(db, args.mode, worker)
            if not rows:
                await asyncio.sleep(0.02)
                continue
            idle_since = time.monotonic()
            for row in rows:
                held = step_results.claim_of(row)
                ctx = SimpleNamespace(run_id=held.run_id, step_key=held.key, attempt=held.attempt, claim=held)
                ledgers.record_execution(ctx, "start")
                ledgers.record_execution(ctx, "end")
                effect = step_results.ArtifactDraft("effect:done", b"{}", "application/json")
                produced = step_results.Produced(held.attempt, artifacts=[effect])
                await db.write(step_results.record_success, held, produced, flows)
                done += 1
    finally:
        await db.close()
    print(f"stopped {worker} claims={done}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True)
    parser.add_argument("--mode", choices=["real", "broken"], required=True)
    parser.add_argument("--idle", type=float, default=1.5)
    sys.exit(asyncio.run(main(parser.parse_args())))
