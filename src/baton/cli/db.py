"""`baton db …`: schema migrations of the database."""

import typer
from rich.markup import escape

from baton.cli.common import DatabaseOpt, FlowsOpt, console, execute, target

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


@app.command("upgrade")
def upgrade(ctx: typer.Context, database: DatabaseOpt = None, flows: FlowsOpt = None) -> None:
    """Apply the schema migrations to the database (safe to run again)."""
    where = target(ctx, database, flows)

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
def current(ctx: typer.Context, database: DatabaseOpt = None, flows: FlowsOpt = None) -> None:
    """The database's schema revision, and whether it is the latest."""
    where = target(ctx, database, flows)

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
