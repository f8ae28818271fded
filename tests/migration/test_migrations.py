"""The migrations build exactly the schema the code declares, on SQLite and PostgreSQL, idempotently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from baton.store.database import sync_url
from baton.store.migrate import current_revision, head_revision, upgrade
from baton.store.schema import metadata


def _diff(url: str) -> list[object]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    finally:
        engine.dispose()


def test_sqlite_upgrade_matches_schema_and_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    upgrade(url)  # a second run changes nothing and does not fail
    assert _revision(url) == head_revision()
    assert _diff(url) == []


@pytest.mark.postgres
def test_postgres_upgrade_matches_schema_and_is_idempotent(postgres_url: str) -> None:
    upgrade(postgres_url)  # the fixture's database is migrated already: this is the second run
    assert _revision(postgres_url) == head_revision()
    assert _diff(postgres_url) == []


def test_every_table_is_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    engine = create_engine(sync_url(url))
    try:
        names = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"runs", "steps", "events", "artifacts", "input_requests", "workers"} <= names


def test_the_quick_head_read_without_alembic_is_alembics_head() -> None:
    # Start-up decides "schema current" from this quick read; it must never disagree with Alembic.
    from baton.store.migrate import head_revision, quick_head_revision

    assert quick_head_revision() == head_revision()


def test_step_needs_are_moved_into_rows_and_back(database_url: str) -> None:
    """0009 turns each step's needs into `step_needs` rows (steps of any status); its downgrade
    restores the `needs_key` column those rows replaced."""
    from alembic import command

    from baton.store.migrate import alembic_config

    cfg = alembic_config(database_url)
    command.downgrade(cfg, "0008")
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO runs (id, flow, inputs, status, policy, concurrency_key, created_at, updated_at)"
                " VALUES ('run_m', 'f', '{}', 'running', '{}', 'k', 1, 1)"
            )
            for key, status, needs in [
                ("a", "succeeded", []),
                ("b", "pending", ["a"]),
                ("c", "succeeded", ["a", "b"]),
            ]:
                conn.exec_driver_sql(
                    "INSERT INTO steps (id, run_id, key, kind, status, needs, needs_key, position, spec)"
                    f" VALUES ('stp_{key}', 'run_m', '{key}', 'code', '{status}', '{json.dumps(needs)}',"
                    f" '{'|' + '|'.join(needs) + '|' if needs else ''}', 0, '{{}}')"
                )
        command.upgrade(cfg, "head")
        assert _diff(database_url) == []
        with engine.connect() as conn:
            rows = set(conn.exec_driver_sql("SELECT run_id, need, step_key FROM step_needs").all())
        assert rows == {("run_m", "a", "b"), ("run_m", "a", "c"), ("run_m", "b", "c")}

        command.downgrade(cfg, "0008")
        with engine.connect() as conn:
            restored = dict(conn.exec_driver_sql("SELECT key, needs_key FROM steps").all())
        assert restored == {"a": "", "b": "|a|", "c": "|a|b|"}
        command.upgrade(cfg, "head")
        assert _diff(database_url) == []
    finally:
        engine.dispose()
