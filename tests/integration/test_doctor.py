"""`baton doctor`: each audit query finds the broken state it names, on a real database, without writing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, exc, text
from typer.testing import CliRunner

from baton import doctor
from baton.cli import app
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import open_runtime
from baton.store.database import sync_url

flow = Flow("doctor_pair", title="Two steps")


@flow.step()
def one(ctx: Any) -> str:
    return "one"


@flow.step(needs=["one"])
def two(ctx: Any) -> str:
    return "two"


async def _finished_runs(url: str, count: int) -> list[str]:
    """`count` runs of the flow, run to success by an in-process worker."""
    async with open_runtime(url, catalog=Catalog([flow]), upgrade=False) as rt:
        ids = [
            (await rt.lifecycle.create_run(RunRequest("doctor_pair", concurrency_limit=100)))["id"]
            for _ in range(count)
        ]
        await rt.worker(WorkerSettings(lease_s=5, poll_s=0.05)).run(until_idle=True)
    return ids


def _break(url: str, statements: list[tuple[str, dict[str, Any]]]) -> None:
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            for sql, params in statements:
                conn.execute(text(sql), params)
    finally:
        engine.dispose()


async def test_each_check_finds_what_it_names(database_url: str) -> None:
    runs = await _finished_runs(database_url, 6)
    assert doctor.audit(database_url, grace_s=0) == []
    long_ago = 1_000.0  # epoch seconds: far past any grace
    _break(
        database_url,
        [
            # 0: a step claimed by a worker that died, and no reaper came
            ("UPDATE runs SET status = 'running', finished_at = NULL WHERE id = :r", {"r": runs[0]}),
            (
                "UPDATE steps SET status = 'running', lease_token = 'tok', lease_expires_at = :t "
                "WHERE run_id = :r AND key = 'two'",
                {"r": runs[0], "t": long_ago},
            ),
            # 1: a running run with nothing left to run
            (
                "UPDATE runs SET status = 'running', updated_at = :t WHERE id = :r",
                {"r": runs[1], "t": long_ago},
            ),
            # 2: an event lost from the middle of a run's log
            ("DELETE FROM events WHERE run_id = :r AND seq = 2", {"r": runs[2]}),
            # 3: redelivered past its attempts
            ("UPDATE steps SET attempt = 9 WHERE run_id = :r AND key = 'one'", {"r": runs[3]}),
            # 4: a queued step of a finished run
            ("UPDATE steps SET status = 'queued' WHERE run_id = :r AND key = 'two'", {"r": runs[4]}),
            # 5: a cancel nobody carried out
            (
                "UPDATE runs SET status = 'running', cancel_requested_at = :t, updated_at = :now "
                "WHERE id = :r",
                {"r": runs[5], "t": long_ago, "now": 4_000_000_000.0},
            ),
            ("UPDATE steps SET status = 'queued' WHERE run_id = :r AND key = 'two'", {"r": runs[5]}),
        ],
    )
    found = {(f.check, f.run_id, f.step_key) for f in doctor.audit(database_url, grace_s=60)}
    assert found == {
        ("expired_lease", runs[0], "two"),
        ("stranded_run", runs[1], None),
        ("event_sequence_gap", runs[2], None),
        ("attempts_exceeded", runs[3], "one"),
        ("live_step_in_finished_run", runs[4], "two"),
        ("overdue_cancel", runs[5], None),
    }


async def test_the_audit_cannot_write(database_url: str) -> None:
    await _finished_runs(database_url, 1)
    with doctor.read_only_connection(database_url) as conn, pytest.raises(exc.DBAPIError):
        conn.execute(text("UPDATE runs SET title = 'changed'"))


async def test_cli_exit_codes_and_json(database_url: str, tmp_path: Path) -> None:
    runs = await _finished_runs(database_url, 1)
    runner = CliRunner()
    healthy = runner.invoke(app, ["doctor", "--database", database_url])
    assert healthy.exit_code == 0, healthy.output
    assert "healthy" in healthy.output and "event_sequence_gap" in healthy.output
    _break(database_url, [("DELETE FROM events WHERE run_id = :r AND seq = 1", {"r": runs[0]})])
    broken = runner.invoke(app, ["doctor", "--database", database_url, "--json"])
    assert broken.exit_code == 1, broken.output
    document = json.loads(broken.output)
    assert document["healthy"] is False
    assert [(f["check"], f["run_id"]) for f in document["findings"]] == [("event_sequence_gap", runs[0])]
    missing = runner.invoke(app, ["doctor", "--database", f"sqlite:///{tmp_path / 'nope.db'}"])
    assert missing.exit_code == 2
    assert "no SQLite database" in missing.output
