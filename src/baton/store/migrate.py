"""Alembic migrations applied programmatically: `baton db upgrade` and the embedded first use."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, exc, text

from baton.domain.errors import StoreError, StoreUnavailable

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    from baton.store.database import sync_url

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str) -> None:
    """Bring the schema to the latest revision; safe to run twice and from two processes at once."""
    from baton.store.database import redact, sqlite_path, sync_url

    path = sqlite_path(url)
    with _upgrade_lock(path):
        engine = create_engine(sync_url(url))
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
                cfg = alembic_config(url)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except exc.OperationalError as error:
            raise StoreUnavailable(
                f"cannot reach the database at {redact(url)}: {str(error.orig).strip().splitlines()[0]}. "
                "Check that it is running and that --database / BATON_DATABASE_URL points at it."
            ) from error
        finally:
            engine.dispose()


def ensure_schema(url: str, *, upgrade: bool) -> None:
    """Upgrade when allowed; otherwise refuse to run on a schema that is not the latest."""
    from baton.store.database import redact, sync_url

    if upgrade:
        globals()["upgrade"](url)
        return
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            current = current_revision(conn)
    except exc.OperationalError as error:
        raise StoreUnavailable(
            f"cannot reach the database at {redact(url)}: {str(error.orig).strip().splitlines()[0]}. "
            "Check that it is running and that --database / BATON_DATABASE_URL points at it."
        ) from error
    finally:
        engine.dispose()
    if current != head_revision():
        raise StoreError(
            f"the database at {redact(url)} has schema revision {current or 'none'}, this Baton needs "
            f"{head_revision()}: run `baton db upgrade --database {redact(url)}`"
        )


@contextlib.contextmanager
def _upgrade_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".migrate-lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
