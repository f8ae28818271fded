"""`baton inputs …`: the questions runs ask people, and answering them."""

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from baton.cli.common import (
    DatabaseOpt,
    FlowsOpt,
    ServerOpt,
    TokenOpt,
    console,
    dumps,
    execute,
    shorten,
    styled_status,
    target,
    when,
)
from baton.domain.errors import InvalidInputs, UsageError

app = typer.Typer(help="The questions runs ask people, and answering them.", no_args_is_help=True)


@app.command("ls")
def list_inputs(
    ctx: typer.Context,
    run: Annotated[
        str | None, typer.Option("--run", metavar="RUN_ID", help="Only the requests of this run.")
    ] = None,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Pending input requests, oldest first (over --server: those of runs your token can see)."""
    where = target(ctx, database, flows, server, token)

    async def body() -> None:
        from rich.table import Table

        from baton.cli.backend import open_backend

        async with open_backend(where) as backend:
            rows = await backend.pending_inputs(run)
        if not rows:
            console.print("[dim]no pending input requests[/]")
            return
        table = Table(header_style="bold", box=None, pad_edge=False)
        table.add_column("id", no_wrap=True)
        table.add_column("run", no_wrap=True)
        table.add_column("step", no_wrap=True)
        table.add_column("prompt", overflow="ellipsis", max_width=60)
        table.add_column("answer schema", overflow="ellipsis", max_width=50)
        table.add_column("asked", no_wrap=True)
        for r in rows:
            table.add_row(
                escape(str(r["id"])),
                escape(str(r["run_id"])),
                escape(str(r["step_key"])),
                escape(shorten(r.get("prompt"), 200)),
                escape(shorten(dumps(r.get("schema")), 200)),
                when(r.get("created_at")),
            )
        console.print(table)

    execute(body)


@app.command("answer")
def answer(
    ctx: typer.Context,
    request_id: Annotated[
        str,
        typer.Argument(
            metavar="REQUEST_ID", help="The request's id (see `baton inputs ls`).", show_default=False
        ),
    ],
    value: Annotated[
        str | None,
        typer.Option("--value", metavar="JSON", help="The whole answer as JSON, e.g. '{\"ok\": true}'."),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="One field of an object answer, typed by the request's schema (repeatable).",
            show_default=False,
        ),
    ] = None,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Answer a pending input request; the answer must satisfy the request's schema."""
    where = target(ctx, database, flows, server, token)
    if (value is None) == (not sets):
        from baton.cli.common import print_error

        print_error("give the answer either as --value JSON or as one or more --set KEY=VALUE")
        raise typer.Exit(2)

    async def body() -> None:
        from baton.cli.backend import open_backend

        async with open_backend(where) as backend:
            schema: dict[str, Any] = {}
            if value is None or not where.remote:  # over HTTP a whole --value is checked by the server
                schema = (await backend.input_request(request_id)).get("schema") or {}
            given = _answer_from(value, sets or [], schema, request_id)
            run = await backend.answer(request_id, given)
        reason = str(run.get("status_reason") or "")
        status = str(run["status"])
        extra = f" ({escape(reason)})" if reason and reason != status else ""
        console.print(
            f"answered {escape(request_id)}; run {escape(str(run['id']))} is {styled_status(status)}{extra}",
            soft_wrap=True,
        )

    execute(body)


def _answer_from(value: str | None, sets: list[str], schema: dict[str, Any], request_id: str) -> Any:
    if value is not None:
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise UsageError(
                f"--value is not valid JSON ({error.msg} at column {error.colno}): "
                f"quote strings, e.g. --value '\"yes\"', or use --set KEY=VALUE"
            ) from None
    from baton.flows.inputs import parse_cli_inputs

    try:
        return parse_cli_inputs(sets, schema)
    except InvalidInputs as error:
        raise InvalidInputs(
            f"the answer to {request_id} is not valid: {error.message}", error.problems
        ) from None
