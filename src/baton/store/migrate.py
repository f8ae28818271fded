"""Alembic migrations applied programmatically: `baton db upgrade` and the embedded first use."""

from __future__ import annotations

import contextlib
import fcntl
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, create_engine, exc, text

from baton.domain.errors import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
_REVISION = re.compile(r'^(down_revision|revision) = (None|"([^"]+)")$', re.MULTILINE)


def alembic_config(url: str) -> Config:
    # Alembic is imported only when a schema must be checked or moved by it: importing it costs
    # about a tenth of a second, a third of `baton run`'s start-up (issue 7).
    from alembic.config import Config

    from baton.store.database import sync_url

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def quick_head_revision() -> str | None:
    """The head read from the revision files' `revision =` lines, without Alembic; None if unsure."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = dict((m[0], m[2]) for m in _REVISION.findall(path.read_text()))
        if not found.get("revision"):
            return None
        revisions.add(found["revision"])
        if found.get("down_revision"):
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _stamped_revision(url: str) -> str | None:
    """The revision in `alembic_version`, by plain SQL; None when it cannot be read."""
    from baton.store.database import sync_url

    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except exc.DBAPIError:
        return None
    finally:
        engine.dispose()
    return versions[0] if len(versions) == 1 else None


def upgrade(url: str) -> None:
    """Bring the schema to the latest revision; safe to run twice and from two processes at once."""
    from alembic import command

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

    head = quick_head_revision()
    if head is not None and _stamped_revision(url) == head:
        return  # already current: the common case, decided without importing Alembic
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
