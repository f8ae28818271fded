"""`baton webhooks ls|create|rm|deliveries`: a project's signed webhooks, here or over --server."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from baton.cli.common import (
    DatabaseOpt,
    FlowsOpt,
    ServerOpt,
    Target,
    TokenOpt,
    console,
    execute,
    target,
    when,
)

app = typer.Typer(help="Signed webhooks: POST a project's run events to a URL.", no_args_is_help=True)

ProjectOpt = Annotated[
    str | None, typer.Option("--project", metavar="PROJECT_ID", help="Only this project's webhooks.")
]


async def _local(where: Target, op: str, **kw: Any) -> Any:
    """The operation on the database here: the same checks as the API, no roles (you own the file)."""
    from baton.config import webhook_settings_from_env
    from baton.domain.errors import NotFound
    from baton.domain.webhooks import normalize_event_types
    from baton.engine.webhooks import check_target
    from baton.runtime import open_runtime
    from baton.store import tenancy
    from baton.store import webhooks as store

    async with open_runtime(where.database_url, [], catalog=None) as rt:
        if op == "ls":
            rows = await rt.db.read(store.list_webhooks, [kw["project"]] if kw["project"] else None)
            return [dict(r._mapping) for r in rows]
        if op == "create":
            types = normalize_event_types(kw["event_types"])
            await check_target(kw["url"], allow_private=webhook_settings_from_env().allow_private)
            if await rt.db.read(tenancy.get_project, kw["project"]) is None:
                raise NotFound(f"project {kw['project']} not found: create it first, or pick another")
            row = await rt.db.write(
                store.create_webhook,
                project_id=kw["project"],
                url=kw["url"].strip(),
                event_types=types,
                secret=kw["secret"],
                description=kw["description"],
            )
            return {**dict(row._mapping), "secret": kw["secret"]}
        if op == "rm":
            if not await rt.db.write(store.delete_webhook, kw["webhook_id"]):
                raise NotFound(f"webhook {kw['webhook_id']} not found: see `baton webhooks ls`")
            return None
        if await rt.db.read(store.get_webhook, kw["webhook_id"]) is None:
            raise NotFound(f"webhook {kw['webhook_id']} not found: see `baton webhooks ls`")
        rows = await rt.db.read(
            store.list_deliveries, kw["webhook_id"], status=kw["status"], limit=kw["limit"]
        )
        return [dict(r._mapping) for r in rows]


async def _remote(where: Target, op: str, **kw: Any) -> Any:
    from baton.cli.backend import call, make_client

    client = make_client(where)
    server = client.server
    try:
        if op == "ls":
            return await call(server, client.list_webhooks, kw["project"])
        if op == "create":
            return await call(
                server,
                client.create_webhook,
                kw["project"],
                kw["url"],
                kw["event_types"],
                secret=kw["secret"],
                description=kw["description"],
            )
        if op == "rm":
            return await call(server, client.delete_webhook, kw["webhook_id"])
        return await call(
            server, client.webhook_deliveries, kw["webhook_id"], status=kw["status"], limit=kw["limit"]
        )
    finally:
        client.close()


async def _do(where: Target, op: str, **kw: Any) -> Any:
    return await (_remote if where.remote else _local)(where, op, **kw)


@app.command("ls")
def list_webhooks(
    ctx: typer.Context,
    project: ProjectOpt = None,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Webhooks, oldest first (over --server: of the projects your token is a member of)."""
    where = target(ctx, database, flows, server, token)

    async def body() -> None:
        from rich.table import Table

        from baton.cli.backend import epoch

        rows = await _do(where, "ls", project=project)
        if not rows:
            console.print("[dim]no webhooks[/]")
            return
        table = Table(header_style="bold", box=None, pad_edge=False)
        for name in ("id", "project", "url", "events", "active", "created"):
            table.add_column(name, no_wrap=name != "url", overflow="fold")
        for r in rows:
            table.add_row(
                escape(str(r["id"])),
                escape(str(r["project_id"])),
                escape(str(r["url"])),
                escape(", ".join(r["event_types"])),
                "yes" if r["active"] else "[yellow]paused[/]",
                when(epoch(r["created_at"])),
            )
        console.print(table)

    execute(body)


@app.command("create")
def create_webhook(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Argument(metavar="URL", help="http(s) URL on a public address.", show_default=False)
    ],
    project: Annotated[
        str, typer.Option("--project", metavar="PROJECT_ID", help="The project whose runs it follows.")
    ],
    events: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            metavar="TYPE",
            help="An event type to send, e.g. run.succeeded (repeatable; default: all, '*').",
            show_default=False,
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            "--secret", metavar="SECRET", help="Signing secret (16+ chars); made for you when omitted."
        ),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="What it is for.")] = "",
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Subscribe URL to a project's events; prints the signing secret once."""
    from baton.cli.common import print_error
    from baton.domain.webhooks import new_secret

    where = target(ctx, database, flows, server, token)
    if secret is not None and len(secret) < 16:
        print_error("--secret must be at least 16 characters; omit it to have one made for you")
        raise typer.Exit(2)
    chosen = secret or (None if where.remote else new_secret())

    async def body() -> None:
        row = await _do(
            where,
            "create",
            project=project,
            url=url,
            event_types=list(events or ["*"]),
            secret=chosen,
            description=description,
        )
        console.print(
            f"created webhook {escape(str(row['id']))} -> {escape(str(row['url']))}", soft_wrap=True
        )
        console.print(f"signing secret (shown once): {escape(str(row['secret']))}", soft_wrap=True)

    execute(body)


@app.command("rm")
def remove_webhook(
    ctx: typer.Context,
    webhook_id: Annotated[str, typer.Argument(metavar="WEBHOOK_ID", show_default=False)],
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete a webhook and its delivery records."""
    where = target(ctx, database, flows, server, token)

    async def body() -> None:
        await _do(where, "rm", webhook_id=webhook_id)
        console.print(f"deleted webhook {escape(webhook_id)}")

    execute(body)


@app.command("deliveries")
def list_deliveries(
    ctx: typer.Context,
    webhook_id: Annotated[str, typer.Argument(metavar="WEBHOOK_ID", show_default=False)],
    status: Annotated[
        str | None, typer.Option("--status", help="pending, succeeded or failed.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """A webhook's deliveries, newest first: status, attempts, last response code and error."""
    from baton.cli.common import print_error

    where = target(ctx, database, flows, server, token)
    if status is not None and status not in ("pending", "succeeded", "failed"):
        print_error(f"--status {status!r} is not one of pending, succeeded, failed")
        raise typer.Exit(2)

    async def body() -> None:
        from rich.table import Table

        from baton.cli.backend import epoch

        rows = await _do(where, "deliveries", webhook_id=webhook_id, status=status, limit=limit)
        if not rows:
            console.print("[dim]no deliveries[/]")
            return
        table = Table(header_style="bold", box=None, pad_edge=False)
        for name in ("id", "event", "run", "status", "attempts", "code", "error", "created"):
            table.add_column(name, no_wrap=name != "error", overflow="fold")
        for r in rows:
            code = r.get("last_status_code")
            table.add_row(
                escape(str(r["id"])),
                escape(str(r["event_type"])),
                escape(str(r.get("run_id") or "-")),
                escape(str(r["status"])),
                str(r["attempts"]),
                "-" if code is None else str(code),
                escape(str(r.get("last_error") or "")),
                when(epoch(r["created_at"])),
            )
        console.print(table)

    execute(body)
