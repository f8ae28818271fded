"""`baton serve` (API, live streams and an in-process worker) and `baton token create`."""

from __future__ import annotations

from typing import Annotated

import typer

from baton.cli.common import (
    DatabaseOpt,
    FlowsOpt,
    HiddenServerOpt,
    HiddenTokenOpt,
    console,
    execute,
    local_target,
)


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="In-process workers; 0 makes an API-only replica.")
    ] = 1,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Steps each worker runs at once.")
    ] = 8,
    lease: Annotated[
        float, typer.Option("--lease", min=1.0, metavar="S", help="Step lease in seconds.")
    ] = 30.0,
    public_url: Annotated[
        str | None,
        typer.Option("--public-url", help="The URL people reach this server at (for login links)."),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "warning",
    otel: Annotated[
        bool,
        typer.Option(
            "--otel",
            help="Export OpenTelemetry traces and logs over OTLP/HTTP (on anyway when "
            "OTEL_EXPORTER_OTLP_ENDPOINT is set; needs baton[otel]).",
        ),
    ] = False,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: HiddenServerOpt = None,
    token: HiddenTokenOpt = None,
) -> None:
    """Serve the HTTP API and live streams, with a worker in the same process by default."""
    where = local_target(
        ctx,
        "serve",
        "it is the server, over the database given with --database; choose where it listens with "
        "--host and --port",
        database,
        flows,
        server,
        token,
    )
    import uvicorn

    from baton import telemetry
    from baton.api.app import create_app
    from baton.config import settings_from_env

    settings = settings_from_env(
        database_url=where.database_url,
        host=host,
        port=port,
        workers=workers,
        concurrency=concurrency,
        lease_s=lease,
        flow_sources=tuple(where.sources),
        public_url=public_url,
    )
    if telemetry.configure_from_env(flag=otel):
        telemetry.flush_on_sigterm()
    app = create_app(settings)
    http = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5
        )
    )
    console.print(f"Baton serving on http://{host}:{port} (database {_redacted(where.database_url)})")
    http.run()


def _redacted(url: str) -> str:
    from baton.store.database import redact

    return redact(url)


token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    user: Annotated[str, typer.Option("--user", help="User name (made if new).")] = "admin",
    project: Annotated[
        str | None, typer.Option("--project", help="Make the user a member of this project (made if new).")
    ] = "default",
    role: Annotated[
        str, typer.Option("--role", help="Role for a new membership: viewer, member or admin.")
    ] = "member",
    name: Annotated[str, typer.Option("--name", help="A label for the token.")] = "cli",
    database: DatabaseOpt = None,
    server: HiddenServerOpt = None,
    token: HiddenTokenOpt = None,
) -> None:
    """Make an API token straight in the database (for the first admin, scripts and CI)."""
    from baton.cli.common import print_error

    where = local_target(
        ctx,
        "token create",
        "it writes the token into the database; run it where the database is reachable, with "
        "--database URL (over HTTP an admin makes tokens with POST /v1/tokens)",
        database,
        None,
        server,
        token,
    )
    if role not in ("viewer", "member", "admin"):
        print_error(f"--role {role!r} is not one of viewer, member, admin")
        raise typer.Exit(2)

    async def body() -> str:
        from baton.api.bootstrap import create_token_for
        from baton.runtime import open_runtime

        async with open_runtime(where.database_url, [], upgrade=None) as rt:
            return await rt.db.write(create_token_for, user, project_id=project, name=name, role=role)

    secret = execute(body)
    console.print(secret, soft_wrap=True)
