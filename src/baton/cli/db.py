"""`baton db …`: schema migrations of the database."""

import typer
from rich.markup import escape

from baton.cli.common import (
    DatabaseOpt,
    FlowsOpt,
    HiddenServerOpt,
    HiddenTokenOpt,
    Target,
    console,
    execute,
    local_target,
)

app = typer.Typer(help="The database schema.", no_args_is_help=True)


def _revision(url: str) -> str | None:
    """The schema revision the database is at (None: no schema yet). Creates no SQLite file."""
    from sqlalchemy import create_engine, exc

    from baton.domain.errors import StoreUnavailable
    from baton.store.database import redact, sqlite_path, sync_url
    from baton.store.migrate import current_revision

    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    except exc.OperationalError as error:
        first = (
            str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else type(error.orig).__name__
        )
        raise StoreUnavailable(
            f"cannot reach the database at {redact(url)}: {first}. "
            "Check that it is running and that --database / BATON_DATABASE_URL points at it."
        ) from error
    finally:
        engine.dispose()


def _where(
    ctx: typer.Context,
    name: str,
    database: str | None,
    flows: list[str] | None,
    server: str | None,
    token: str | None,
) -> Target:
    why = (
        "migrations work on the database itself; run it where the database is reachable, with "
        "--database URL (`baton serve` upgrades its database when it starts)"
    )
    return local_target(ctx, f"db {name}", why, database, flows, server, token)


@app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: HiddenServerOpt = None,
    token: HiddenTokenOpt = None,
) -> None:
    """Apply the schema migrations to the database (safe to run again)."""
    where = _where(ctx, "upgrade", database, flows, server, token)

    async def body() -> None:
        import asyncio

        from baton.store.database import redact
        from baton.store.migrate import head_revision, upgrade

        url = where.database_url
        before = await asyncio.to_thread(_revision, url)
        await asyncio.to_thread(upgrade, url)
        after = await asyncio.to_thread(_revision, url)
        moved = "already at" if before == after else f"upgraded from {before or 'empty'} to"
        head = " (head)" if after == head_revision() else ""
        console.print(
            f"{escape(redact(url))}: {moved} revision [bold]{escape(str(after))}[/]{head}", soft_wrap=True
        )

    execute(body)


@app.command("current")
def current(
    ctx: typer.Context,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: HiddenServerOpt = None,
    token: HiddenTokenOpt = None,
) -> None:
    """The database's schema revision, and whether it is the latest."""
    where = _where(ctx, "current", database, flows, server, token)

    async def body() -> int:
        import asyncio

        from baton.store.database import redact
        from baton.store.migrate import head_revision

        url = where.database_url
        revision = await asyncio.to_thread(_revision, url)
        head = head_revision()
        if revision == head:
            console.print(f"{escape(redact(url))}: revision [bold]{escape(head)}[/] (head)", soft_wrap=True)
            return 0
        console.print(
            f"{escape(redact(url))}: revision [bold]{escape(str(revision or 'none'))}[/], the latest is "
            f"{escape(head)}: run `baton db upgrade`",
            soft_wrap=True,
        )
        return 1

    raise typer.Exit(execute(body))
