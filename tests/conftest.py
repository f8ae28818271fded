"""Shared fixtures: a fresh database per test on SQLite and on the real PostgreSQL.

PostgreSQL tests use BATON_TEST_POSTGRES_URL (`.ci/run` sets it). In CI (CI=true) an unreachable
PostgreSQL fails the tests; on a developer machine they are skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

import baton.agents
from baton.flows.catalog import Catalog
from baton.runtime import Runtime, open_runtime
from baton.store.migrate import head_revision, upgrade

baton.agents.ALLOW_NETWORK_ENGINES = False

PG_URL = os.environ.get("BATON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _migrations_digest() -> str:
    """A template per migrations' content, not just their head: an edited migration gets a new one."""
    import hashlib

    import baton.store.migrations as package

    digest = hashlib.sha256()
    for path in sorted(Path(package.__path__[0], "versions").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


_TEMPLATE = f"baton_tpl_{head_revision()}_{_migrations_digest()}"
_template_ready = False


def _admin_dsn() -> str:
    return PG_URL.replace("postgresql+psycopg://", "postgresql://")


def _pg_available() -> str | None:
    try:
        with psycopg.connect(_admin_dsn(), connect_timeout=3):
            return None
    except Exception as error:  # any failure to connect means no PostgreSQL here
        return str(error).strip().splitlines()[0]


def _require_postgres() -> None:
    problem = _pg_available()
    if problem is None:
        return
    message = f"PostgreSQL at {PG_URL} is not reachable ({problem})"
    if os.environ.get("CI"):
        pytest.fail(message + ": CI must run the PostgreSQL tests (.ci/run starts the server)")
    pytest.skip(message + "; start it or set BATON_TEST_POSTGRES_URL")


def _with_database(name: str) -> str:
    base, _, _ = _admin_dsn().rpartition("/")
    return f"{base}/{name}"


def _ensure_template() -> None:
    """One migrated template per schema revision, made once and shared by concurrent sessions."""
    global _template_ready
    if _template_ready:
        return
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(4242002)")
        try:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_TEMPLATE,)).fetchone()
            if exists is None:
                conn.execute(f"DROP DATABASE IF EXISTS {_TEMPLATE}_building")
                conn.execute(f"CREATE DATABASE {_TEMPLATE}_building")
                upgrade(_with_database(f"{_TEMPLATE}_building"))
                conn.execute(f"ALTER DATABASE {_TEMPLATE}_building RENAME TO {_TEMPLATE}")
        finally:
            conn.execute("SELECT pg_advisory_unlock(4242002)")
    _template_ready = True


def make_postgres_database() -> str:
    """A new, migrated PostgreSQL database; returns its URL."""
    _require_postgres()
    _ensure_template()
    name = f"baton_t_{secrets.token_hex(6)}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
    return _with_database(name)


def drop_postgres_database(url: str) -> None:
    name = url.rpartition("/")[2]
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database URL: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'baton.db'}"
        upgrade(url)
        yield url
        return
    url = make_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'baton.db'}"
    upgrade(url)
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    url = make_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture
async def runtime_for(database_url: str) -> AsyncIterator[object]:
    """`async with runtime_for(catalog) as rt` opens the test database with that catalog."""
    opened: list[object] = []

    def factory(catalog: Catalog):  # type: ignore[no-untyped-def]
        return open_runtime(database_url, catalog=catalog, upgrade=False)

    yield factory
    del opened


__all__ = ["Runtime"]
