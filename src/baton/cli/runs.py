"""`baton runs …`: list, inspect, confirm, cancel, retry, resume, fork, read events, watch."""

from typing import Annotated, Any

import typer
from rich.markup import escape

from baton.cli.common import (
    DatabaseOpt,
    FlowsOpt,
    Target,
    console,
    dumps,
    duration,
    execute,
    join,
    out,
    parse_inputs,
    run_duration,
    shorten,
    styled_status,
    target,
    user,
    when,
)
from baton.cli.run import InputsOpt, follow_and_summarize

app = typer.Typer(help="List, inspect and act on runs.", no_args_is_help=True)

RunId = Annotated[
    str, typer.Argument(metavar="RUN_ID", help="The run's id (see `baton runs ls`).", show_default=False)
]
FollowOpt = Annotated[
    bool,
    typer.Option(
        "--follow/--no-follow", help="Then execute the run here and show it live, like `baton run`."
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


def _open(where: Target) -> Any:
    from baton.runtime import open_runtime

    return open_runtime(where.database_url, where.sources)


@app.command("ls")
def list_runs(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option("--status", help=f"Only runs in this status ({', '.join(STATUSES)}).")
    ] = None,
    flow: Annotated[str | None, typer.Option("--flow", help="Only runs of this flow.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10000, help="How many runs, newest first.")
    ] = 20,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
) -> None:
    """The runs, newest first."""
    if status is not None and status not in STATUSES:
        raise _usage(f"--status {status!r} is not a run status: use one of {', '.join(STATUSES)}")
    where = target(ctx, database, flows)

    async def body() -> None:
        from rich.table import Table

        from baton.store import runs as run_store

        async with _open(where) as rt:
            rows = await rt.db.read(run_store.list_runs, status=status, flow=flow, limit=limit)
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
            reason = r.status_reason if r.status_reason != r.status else ""
            table.add_row(
                escape(r.id),
                escape(r.flow),
                escape(r.title or ""),
                styled_status(r.status),
                escape(reason or ""),
                when(r.created_at),
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
) -> None:
    """A run: its status, inputs, steps, pending inputs and report."""
    where = target(ctx, database, flows)

    async def body() -> None:
        from baton.store import events as event_store

        async with _open(where) as rt:
            run = await rt.lifecycle.get_run(run_id)
            rows = await rt.db.read(event_store.events_after, run_id, 0, 100_000) if events else []
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
        ("flow", f"{run['flow']} v{run.get('flow_version')}"),
        ("reason", run.get("status_reason") if run.get("status_reason") != status else None),
        ("created", f"{when(run.get('created_at'))} by {run.get('created_by') or '-'}"),
        ("started", when(run.get("started_at")) if run.get("started_at") else None),
        ("finished", when(run.get("finished_at")) if run.get("finished_at") else None),
        ("duration", duration(run_duration(run)) if run.get("started_at") else None),
        ("inputs", dumps(run.get("inputs") or {})),
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


def _print_events(rows: list[Any]) -> None:
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
) -> None:
    """Confirm a run's plan: it is queued and starts when its concurrency key has room."""
    where = target(ctx, database, flows)

    async def body() -> int:
        async with _open(where) as rt:
            run = await rt.lifecycle.confirm(run_id, by=user())
            _said(run, "confirmed")
            return await follow_and_summarize(rt, where, run_id) if follow else 0

    raise typer.Exit(execute(body))


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    run_id: RunId,
    reason: Annotated[str, typer.Option("--reason", help="Why, recorded with the run.")] = "",
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
) -> None:
    """Cancel a run: at once when nothing runs, else its running steps are stopped within a heartbeat."""
    where = target(ctx, database, flows)

    async def body() -> None:
        async with _open(where) as rt:
            run = await rt.lifecycle.cancel(run_id, reason=reason, by=user())
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
) -> None:
    """Start a new run with the same flow, inputs and settings as a finished one."""
    where = target(ctx, database, flows)

    async def body() -> int:
        async with _open(where) as rt:
            run = await rt.lifecycle.retry(run_id, by=user())
            _said(run, f"created as a retry of {run_id}")
            return await follow_and_summarize(rt, where, str(run["id"])) if follow else 0

    raise typer.Exit(execute(body))


@app.command("resume")
def resume(
    ctx: typer.Context,
    run_id: RunId,
    follow: FollowOpt = False,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
) -> None:
    """Re-queue a failed run's failed steps; every succeeded step is kept."""
    where = target(ctx, database, flows)

    async def body() -> int:
        async with _open(where) as rt:
            run = await rt.lifecycle.resume(run_id, by=user())
            _said(run, "resumed")
            return await follow_and_summarize(rt, where, run_id) if follow else 0

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
) -> None:
    """A new run from a step of an earlier one: the succeeded steps upstream of it are copied."""
    where = target(ctx, database, flows)

    async def body() -> int:
        async with _open(where) as rt:
            edited = None
            if inputs:
                source = await rt.lifecycle.get_run(run_id)
                flow = rt.catalog.get(source["flow"])
                changes = parse_inputs(inputs, flow.input_schema, flow=flow.name)
                edited = {**(source.get("inputs") or {}), **changes}
            run = await rt.lifecycle.fork(run_id, from_step, inputs=edited, by=user())
            _said(run, f"forked from {run_id} at step {from_step}")
            return await follow_and_summarize(rt, where, str(run["id"])) if follow else 0

    raise typer.Exit(execute(body))


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
) -> None:
    """The run's events as JSON lines: seq, type, step_key, attempt, payload, created_at."""
    where = target(ctx, database, flows)

    async def body() -> None:
        from baton.engine.follow import follow_run
        from baton.store import events as event_store

        async with _open(where) as rt:
            await rt.lifecycle.get_run(run_id)  # a clear error for an unknown run
            if follow:
                async for row in follow_run(rt.db, run_id, after):
                    out(_event_json(row))
                return
            seq = after
            while True:
                rows = await rt.db.read(event_store.events_after, run_id, seq, 1000)
                for row in rows:
                    out(_event_json(row))
                    seq = row.seq
                if len(rows) < 1000:
                    return

    execute(body)


def _event_json(row: Any) -> str:
    return dumps(
        {
            "seq": row.seq,
            "type": row.type,
            "step_key": row.step_key,
            "attempt": row.attempt,
            "payload": row.payload,
            "created_at": row.created_at,
        }
    )


@app.command("watch")
def watch(
    ctx: typer.Context,
    run_id: RunId,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
) -> None:
    """Show a run live while another process (`baton worker`, `baton serve`) executes it."""
    where = target(ctx, database, flows)

    async def body() -> int:
        async with _open(where) as rt:
            return await follow_and_summarize(rt, where, run_id, with_worker=False)

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
