"""The migrations build exactly the schema the code declares, on SQLite and PostgreSQL, idempotently."""

from __future__ import annotations

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
