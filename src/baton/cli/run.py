"""`baton run FLOW`: create a run, confirm its plan, execute it in-process and watch it live."""

from typing import Annotated, Any

import typer
from rich.markup import escape

from baton.cli.common import (
    DatabaseOpt,
    FlowsOpt,
    Target,
    configure_logging,
    console,
    dumps,
    err_console,
    execute,
    is_tty,
    join,
    parse_inputs,
    styled_status,
    target,
    user,
)

InputsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        metavar="KEY=VALUE",
        help="A run input, typed by the flow's input schema (repeatable). KEY=@file reads a file.",
        show_default=False,
    ),
]


def run(
    ctx: typer.Context,
    flow: Annotated[str, typer.Argument(help="The flow to run (see `baton flows ls`).", show_default=False)],
    inputs: InputsOpt = None,
    title: Annotated[str | None, typer.Option("--title", help="A title for the run.")] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key", metavar="KEY", help="The same key returns the run it first created."
        ),
    ] = None,
    confirm: Annotated[
        bool | None,
        typer.Option(
            "--confirm/--no-confirm",
            help="--confirm: confirm the plan now, the run starts without asking. --no-confirm: never ask "
            "here; a run that needs confirmation waits for `baton runs confirm`. Default: ask on a terminal.",
            show_default=False,
        ),
    ] = None,
    follow_run: Annotated[
        bool,
        typer.Option(
            "--follow/--no-follow",
            help="Execute the run with an in-process worker and show it live (default), or only create it.",
        ),
    ] = True,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Steps the worker runs at once.")
    ] = 8,
    lease: Annotated[
        float, typer.Option("--lease", min=1.0, metavar="S", help="Step lease in seconds.")
    ] = 30.0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the worker's log, with tracebacks of failing steps.")
    ] = False,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
) -> None:
    """Create a run of FLOW and (with --follow) execute it here, showing every step live.

    Exit code: 0 when the run succeeded, 1 when it failed or was cancelled, 2 for bad input.
    """
    import logging

    configure_logging(logging.INFO if verbose else logging.WARNING, tracebacks=verbose)
    where = target(ctx, database, flows)
    code = execute(
        lambda: _run(
            where,
            flow,
            inputs or [],
            title=title,
            idempotency_key=idempotency_key,
            confirm=confirm,
            follow=follow_run,
            concurrency=concurrency,
            lease=lease,
        )
    )
    raise typer.Exit(code)


async def _run(
    where: Target,
    flow_name: str,
    pairs: list[str],
    *,
    title: str | None,
    idempotency_key: str | None,
    confirm: bool | None,
    follow: bool,
    concurrency: int,
    lease: float,
) -> int:
    from baton.engine.lifecycle import RunRequest
    from baton.flows.inputs import validate_inputs

    # Everything the user typed is checked before the database is even opened: nothing is written.
    catalog = where.load_catalog()
    flow = catalog.get(flow_name)
    inputs = validate_inputs(
        flow.input_schema, parse_inputs(pairs, flow.input_schema, flow=flow.name), flow=flow.name
    )

    from baton.runtime import open_runtime

    async with open_runtime(where.database_url, catalog=catalog) as rt:
        run = await rt.lifecycle.create_run(
            RunRequest(
                flow=flow.name,
                inputs=inputs,
                title=title or "",
                idempotency_key=idempotency_key,
                confirm=bool(confirm),
                created_by=user(),
                source={"via": "cli"},
            )
        )
        run_id = str(run["id"])
        if run["status"] == "needs_confirmation":
            if confirm is None and is_tty():
                show_plan(run, flow)
                from rich.prompt import Confirm

                if Confirm.ask(
                    "Start this run? \\[y/N]",
                    default=False,
                    console=console,
                    show_default=False,
                    show_choices=False,
                ):
                    run = await rt.lifecycle.confirm(run_id, by=user())
                else:
                    run = await rt.lifecycle.cancel(run_id, reason="not confirmed at the terminal", by=user())
                    console.print(f"run [bold]{escape(run_id)}[/] {styled_status(str(run['status']))}")
                    return 1
            else:
                console.print(
                    f"run [bold]{escape(run_id)}[/] {styled_status('needs_confirmation')}: "
                    f"its plan waits for confirmation.\n  confirm it from another shell: "
                    f"[bold]{escape(where.command('runs', 'confirm', run_id))}[/]\n"
                    f"  see the plan first:             {escape(where.command('runs', 'show', run_id))}",
                    soft_wrap=True,
                )
                if follow:
                    console.print("waiting for confirmation (Ctrl-C stops waiting; the run stays)…")
        if not follow:
            console.print(f"{escape(run_id)} {styled_status(str(run['status']))}", soft_wrap=True)
            if run["status"] not in ("needs_confirmation",):
                console.print(
                    f"[dim]execute it with `baton worker`, watch it with "
                    f"`{escape(where.command('runs', 'watch', run_id))}`[/]",
                    soft_wrap=True,
                )
            return 0
        return await follow_and_summarize(rt, where, run_id, concurrency=concurrency, lease=lease)


async def follow_and_summarize(
    rt: Any,
    where: Target,
    run_id: str,
    *,
    concurrency: int = 8,
    lease: float = 30.0,
    with_worker: bool = True,
) -> int:
    """Follow a run to its end (executing it here when `with_worker`); print the summary; the exit code."""
    import logging

    from baton.cli.live import Detached, follow, print_summary
    from baton.engine.worker import WorkerSettings

    if not logging.getLogger().handlers:  # `baton run` has configured it already (-v)
        configure_logging(logging.WARNING, tracebacks=False)

    settings = (
        WorkerSettings(concurrency=concurrency, lease_s=lease, poll_s=0.5, drain_s=5.0)
        if with_worker
        else None
    )
    try:
        final = await follow(rt, where, run_id, worker=settings)
    except Detached:
        err_console.print(
            f"[yellow]stopped following {escape(run_id)}[/]; the run goes on wherever a worker runs "
            f"(`baton worker`).\n  watch it:  {escape(where.command('runs', 'watch', run_id))}\n"
            f"  cancel it: {escape(where.command('runs', 'cancel', run_id))}",
            soft_wrap=True,
        )
        return 130
    print_summary(final, where)
    return 0 if final["status"] == "succeeded" else 1


def show_plan(run: dict[str, Any], flow: Any) -> None:
    """The steps the run will execute, with their kind and needs, and its inputs."""
    from rich.table import Table

    console.print(
        f"\n[bold]{escape(str(run.get('title') or flow.name))}[/]  [dim]{escape(str(run['id']))} · "
        f"flow {escape(flow.name)} v{escape(str(flow.version))}[/]",
        soft_wrap=True,
    )
    if run.get("inputs"):
        console.print(f"inputs: {escape(dumps(run['inputs']))}", soft_wrap=True)
    table = Table(title="plan", title_justify="left", box=None, header_style="dim")
    table.add_column("step", style="bold", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("needs")
    table.add_column("does")
    for step in run.get("steps") or []:
        spec = step.get("spec") or {}
        does = spec.get("engine") or spec.get("handler") or ""
        if spec.get("prompt"):
            does = f"{does}: {spec['prompt']}" if does else str(spec["prompt"])
        table.add_row(
            escape(step["key"]),
            escape(str(step.get("kind"))),
            escape(join(step.get("needs") or [])),
            escape(str(does)),
        )
    console.print(table)
