"""`baton runs …`: list, inspect, confirm, cancel, retry, resume, fork, read events, watch.

Every command works on the database here or, with --server, on a Baton server (see backend.py).
"""

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from baton.cli.backend import Backend, open_backend
from baton.cli.common import (
    DatabaseOpt,
    FlowsOpt,
    ServerOpt,
    Target,
    TokenOpt,
    console,
    dumps,
    duration,
    execute,
    join,
    out,
    run_duration,
    shorten,
    styled_status,
    target,
    when,
)
from baton.cli.run import InputsOpt, follow_and_summarize

if TYPE_CHECKING:
    from baton.cli.live import LiveEvent

app = typer.Typer(help="List, inspect and act on runs.", no_args_is_help=True)

RunId = Annotated[
    str, typer.Argument(metavar="RUN_ID", help="The run's id (see `baton runs ls`).", show_default=False)
]
FollowOpt = Annotated[
    bool,
    typer.Option(
        "--follow/--no-follow",
        help="Then show the run live until it ends, like `baton run` (locally: executing it here).",
    ),
]
STATUSES = (
    "needs_confirmation",
    "queued",
    "running",
    "waiting_for_input",
    "succeeded",
    "failed",
    "cancelled",
)


@app.command("ls")
def list_runs(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option("--status", help=f"Only runs in this status ({', '.join(STATUSES)}).")
    ] = None,
    flow: Annotated[str | None, typer.Option("--flow", help="Only runs of this flow.")] = None,
    project: Annotated[
        str | None, typer.Option("--project", metavar="PROJECT", help="Only runs of this project.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10000, help="How many runs, newest first.")
    ] = 20,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """The runs, newest first (over --server: the runs your token can see)."""
    if status is not None and status not in STATUSES:
        raise _usage(f"--status {status!r} is not a run status: use one of {', '.join(STATUSES)}")
    where = target(ctx, database, flows, server, token)

    async def body() -> None:
        from rich.table import Table

        async with open_backend(where) as backend:
            rows = await backend.list_runs(status=status, flow=flow, project=project, limit=limit)
        if not rows:
            console.print("[dim]no runs[/]")
            return
        table = Table(header_style="bold", box=None, pad_edge=False)
        table.add_column("id", no_wrap=True)
        table.add_column("flow", no_wrap=True)
        table.add_column("title", overflow="ellipsis", max_width=40)
        table.add_column("status", no_wrap=True)
        table.add_column("reason", overflow="ellipsis", max_width=60)
        table.add_column("created", no_wrap=True)
        for r in rows:
            reason = r.get("status_reason") if r.get("status_reason") != r["status"] else ""
            table.add_row(
                escape(str(r["id"])),
                escape(str(r["flow"])),
                escape(str(r.get("title") or "")),
                styled_status(str(r["status"])),
                escape(str(reason or "")),
                when(r.get("created_at")),
            )
        console.print(table)

    execute(body)


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: RunId,
    events: Annotated[bool, typer.Option("--events", help="Also list the run's events.")] = False,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """A run: its status, inputs, steps, pending inputs and report."""
    where = target(ctx, database, flows, server, token)

    async def body() -> None:
        async with open_backend(where) as backend:
            run = await backend.get_run(run_id)
            rows = await backend.all_events(run_id) if events else []
        _print_run(run, where)
        if events:
            _print_events(rows)

    execute(body)


def _print_run(run: dict[str, Any], where: Target) -> None:
    from rich.table import Table

    status = str(run["status"])
    console.print(
        f"[bold]{escape(str(run.get('title') or run['flow']))}[/]  {styled_status(status)}", soft_wrap=True
    )
    fields = [
        ("id", run["id"]),
        ("flow", f"{run['flow']} v{run['flow_version']}" if run.get("flow_version") else run["flow"]),
        ("reason", run.get("status_reason") if run.get("status_reason") != status else None),
        ("created", f"{when(run.get('created_at'))} by {run.get('created_by') or '-'}"),
        ("started", when(run.get("started_at")) if run.get("started_at") else None),
        ("finished", when(run.get("finished_at")) if run.get("finished_at") else None),
        ("duration", duration(run_duration(run)) if run.get("started_at") else None),
        ("inputs", dumps(run.get("inputs") or {})),
        ("schedule", run.get("schedule_id")),
        ("retry of", run.get("retry_of")),
        (
            "forked from",
            f"{run.get('forked_from')} at step {run.get('fork_step')}" if run.get("forked_from") else None,
        ),
    ]
    for name, value in fields:
        if value:
            console.print(f"  [dim]{name:<11}[/] {escape(str(value))}", soft_wrap=True)

    table = Table(title="steps", title_justify="left", header_style="bold", box=None, pad_edge=False)
    table.add_column("step", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attempt", justify="right")
    table.add_column("needs")
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("output / error", overflow="ellipsis", max_width=70)
    for step in run.get("steps") or []:
        elapsed = None
        if step.get("started_at") and step.get("finished_at"):
            elapsed = step["finished_at"] - step["started_at"]
        if step.get("error"):
            note = f"[red]{escape(shorten(step['error'], 200))}[/]"
        else:
            text = step.get("output_text")
            if text is None and step.get("output") is not None:
                text = dumps(step["output"])
            elif text is None and step.get("output_ref"):
                text = f"(large output: artifact {step['output_ref']})"
            note = f"[dim]{escape(shorten(text, 200))}[/]" if text else ""
        table.add_row(
            escape(step["key"]),
            escape(str(step.get("kind"))),
            styled_status(str(step["status"])),
            str(step.get("attempt") or 0),
            escape(join(step.get("needs") or [])),
            duration(elapsed) if elapsed is not None else "",
            note,
        )
    console.print(table)

    pending = run.get("pending_inputs") or []
    if pending:
        from baton.cli.live import answer_hint

        console.print("[bold]pending inputs[/]")
        for request in pending:
            console.print(f"  [bold]{escape(str(request['id']))}[/]", soft_wrap=True)
            console.print("  " + answer_hint(where, request).replace("\n", "\n  "), soft_wrap=True)
    if status == "needs_confirmation":
        console.print(
            f"[magenta]waits for confirmation:[/] {escape(where.command('runs', 'confirm', str(run['id'])))}",
            soft_wrap=True,
        )
    report = str(run.get("report") or "")
    if report.strip():
        console.print("[bold]report[/]")
        if console.is_terminal:
            from rich.markdown import Markdown

            console.print(Markdown(report))
        else:
            out(report.rstrip())


def _print_events(rows: "list[LiveEvent]") -> None:
    from rich.table import Table

    table = Table(title="events", title_justify="left", header_style="bold", box=None, pad_edge=False)
    table.add_column("seq", justify="right")
    table.add_column("time", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("step", no_wrap=True)
    table.add_column("payload", overflow="ellipsis", max_width=80)
    for row in rows:
        table.add_row(
            str(row.seq),
            when(row.created_at),
            escape(row.type),
            escape(row.step_key or ""),
            escape(shorten(dumps(row.payload), 200)),
        )
    console.print(table)


@app.command("confirm")
def confirm(
    ctx: typer.Context,
    run_id: RunId,
    follow: FollowOpt = False,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Confirm a run's plan: it is queued and starts when its concurrency key has room."""
    where = target(ctx, database, flows, server, token)

    async def body() -> int:
        async with open_backend(where) as backend:
            run = await backend.confirm(run_id)
            _said(run, "confirmed")
            return await _then_follow(backend, run_id, follow)

    raise typer.Exit(execute(body))


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    run_id: RunId,
    reason: Annotated[str, typer.Option("--reason", help="Why, recorded with the run.")] = "",
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel a run: at once when nothing runs, else its running steps are stopped within a heartbeat."""
    where = target(ctx, database, flows, server, token)

    async def body() -> None:
        async with open_backend(where) as backend:
            run = await backend.cancel(run_id, reason)
        if run["status"] == "cancelled":
            _said(run, "cancelled")
        else:
            _said(run, "cancel requested")

    execute(body)


@app.command("retry")
def retry(
    ctx: typer.Context,
    run_id: RunId,
    follow: FollowOpt = False,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Start a new run with the same flow, inputs and settings as a finished one."""
    where = target(ctx, database, flows, server, token)

    async def body() -> int:
        async with open_backend(where) as backend:
            run = await backend.retry(run_id)
            _said(run, f"created as a retry of {run_id}")
            return await _then_follow(backend, str(run["id"]), follow)

    raise typer.Exit(execute(body))


@app.command("resume")
def resume(
    ctx: typer.Context,
    run_id: RunId,
    follow: FollowOpt = False,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Re-queue a failed run's failed steps; every succeeded step is kept."""
    where = target(ctx, database, flows, server, token)

    async def body() -> int:
        async with open_backend(where) as backend:
            run = await backend.resume(run_id)
            _said(run, "resumed")
            return await _then_follow(backend, run_id, follow)

    raise typer.Exit(execute(body))


@app.command("fork")
def fork(
    ctx: typer.Context,
    run_id: RunId,
    from_step: Annotated[
        str, typer.Option("--from-step", metavar="KEY", help="Run this step and everything after it again.")
    ],
    inputs: InputsOpt = None,
    follow: FollowOpt = False,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """A new run from a step of an earlier one: the succeeded steps upstream of it are copied."""
    where = target(ctx, database, flows, server, token)

    async def body() -> int:
        async with open_backend(where) as backend:
            run = await backend.fork(run_id, from_step, inputs or [])
            _said(run, f"forked from {run_id} at step {from_step}")
            return await _then_follow(backend, str(run["id"]), follow)

    raise typer.Exit(execute(body))


async def _then_follow(backend: Backend, run_id: str, follow: bool) -> int:
    return await follow_and_summarize(backend, run_id) if follow else 0


@app.command("events")
def events(
    ctx: typer.Context,
    run_id: RunId,
    after: Annotated[
        int, typer.Option("--after", min=0, metavar="SEQ", help="Only events after this seq.")
    ] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep printing new events until the run ends.")
    ] = False,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """The run's events as JSON lines: seq, type, step_key, attempt, payload, created_at."""
    where = target(ctx, database, flows, server, token)

    async def body() -> None:
        async with open_backend(where) as backend:
            await backend.get_run(run_id)  # a clear error for an unknown run
            if follow:
                async for event in backend.follow_events(run_id, after):
                    out(dumps(event.as_json()))
                return
            seq = after
            while True:
                page = await backend.events(run_id, seq, 1000)
                for event in page:
                    out(dumps(event.as_json()))
                    seq = event.seq
                if len(page) < 1000:
                    return

    execute(body)


@app.command("watch")
def watch(
    ctx: typer.Context,
    run_id: RunId,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show a run live while others execute it (`baton worker`, `baton serve`), until it ends.

    Locally it follows the database; with --server the run's event stream. A finished run is shown
    once and the command exits. Exit code: 0 succeeded, 1 failed or cancelled.
    """
    where = target(ctx, database, flows, server, token)

    async def body() -> int:
        async with open_backend(where) as backend:
            return await follow_and_summarize(backend, run_id, with_worker=False)

    raise typer.Exit(execute(body))


def _said(run: dict[str, Any], what: str) -> None:
    reason = str(run.get("status_reason") or "")
    status = str(run["status"])
    extra = f" ({escape(reason)})" if reason and reason != status else ""
    console.print(f"{escape(str(run['id']))} {escape(what)}: {styled_status(status)}{extra}", soft_wrap=True)


def _usage(message: str) -> typer.Exit:
    from baton.cli.common import print_error

    print_error(message)
    return typer.Exit(2)
