"""`baton run FLOW`: create a run, confirm its plan, execute it and watch it live.

Locally the run is executed by a worker in this process; with --server it is created on that
server, whose workers execute it, and --follow shows it from the server's event stream.

Quick launch: `baton run review "focus text"` puts the text in the flow's `focus` input (or its
first required text input); every other input takes its default.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from baton.cli.common import (
    DatabaseOpt,
    FlowsOpt,
    ServerOpt,
    Target,
    TokenOpt,
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

if TYPE_CHECKING:
    from baton.cli.backend import Backend

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
    focus: Annotated[
        str | None,
        typer.Argument(
            help="Quick launch: the text for the flow's `focus` input (or its first required text "
            "input); the other inputs take their defaults.",
            show_default=False,
        ),
    ] = None,
    inputs: InputsOpt = None,
    title: Annotated[str | None, typer.Option("--title", help="A title for the run.")] = None,
    project: Annotated[
        str | None,
        typer.Option("--project", metavar="PROJECT", help="The project the run belongs to (it must exist)."),
    ] = None,
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
            help="Show the run live until it ends (default), or only create it. Locally an in-process "
            "worker executes it; with --server the server's workers do.",
        ),
    ] = True,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Steps the worker runs at once (local mode).")
    ] = 8,
    lease: Annotated[
        float, typer.Option("--lease", min=1.0, metavar="S", help="Step lease in seconds (local mode).")
    ] = 30.0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the worker's log, with tracebacks of failing steps.")
    ] = False,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create a run of FLOW and (with --follow) show every step live while it executes.

    Exit code: 0 when the run succeeded, 1 when it failed or was cancelled, 2 for bad input.
    """
    import logging

    configure_logging(logging.INFO if verbose else logging.WARNING, tracebacks=verbose)
    where = target(ctx, database, flows, server, token)
    if where.remote:
        code = execute(
            lambda: _run_remote(
                where,
                flow,
                inputs or [],
                focus=focus,
                title=title,
                project=project,
                idempotency_key=idempotency_key,
                confirm=confirm,
                follow=follow_run,
            )
        )
    else:
        from baton import telemetry

        # The in-process worker runs the steps here: with an OTLP endpoint set, trace them as a
        # `baton worker` would (flushed at exit; nothing is imported when no endpoint is set).
        telemetry.configure_from_env()
        code = execute(
            lambda: _run(
                where,
                flow,
                inputs or [],
                focus=focus,
                title=title,
                project=project,
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
    focus: str | None,
    title: str | None,
    project: str | None,
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
    given = with_focus(
        parse_inputs(pairs, flow.input_schema, flow=flow.name), focus, flow.input_schema, flow.name
    )
    inputs = validate_inputs(flow.input_schema, given, flow=flow.name)

    from baton.cli.backend import LocalBackend
    from baton.runtime import open_runtime

    async with open_runtime(where.database_url, catalog=catalog) as rt:
        run = await rt.lifecycle.create_run(
            RunRequest(
                flow=flow.name,
                inputs=inputs,
                project_id=project,
                title=title or "",
                idempotency_key=idempotency_key,
                confirm=bool(confirm),
                created_by=user(),
                source={"via": "cli"},
            )
        )
        backend = LocalBackend(rt, where)
        return await _created(
            backend,
            run,
            flow.name,
            flow.version,
            confirm=confirm,
            follow=follow,
            concurrency=concurrency,
            lease=lease,
        )


async def _run_remote(
    where: Target,
    flow_name: str,
    pairs: list[str],
    *,
    focus: str | None,
    title: str | None,
    project: str | None,
    idempotency_key: str | None,
    confirm: bool | None,
    follow: bool,
) -> int:
    """The same over HTTP: the server validates and executes; inputs are typed here by its schema."""
    from baton.cli.backend import HttpBackend, call, make_client, run_from_api
    from baton.domain.errors import NotFound

    client = make_client(where)
    try:
        try:
            flow = await call(client.server, client.flow, flow_name)
        except NotFound as error:  # the server's words, without its advice for a local --flows
            known = error.message.partition(" Load more with --flows")[0].rstrip(". ")
            raise NotFound(
                f"{known} (on the server at {client.server}; it loads more with `baton serve --flows …`)"
            ) from None
        schema = flow.get("input_schema") or {}
        inputs = with_focus(
            parse_inputs(pairs, schema, flow=str(flow["name"])), focus, schema, str(flow["name"])
        )
        fields: dict[str, Any] = {"confirm": bool(confirm), "source": {"via": "cli"}}
        if title:
            fields["title"] = title
        if project:
            fields["project_id"] = project
        if idempotency_key:
            fields["idempotency_key"] = idempotency_key
        run = run_from_api(await call(client.server, client.create_run, str(flow["name"]), inputs, **fields))
        backend = HttpBackend(client, where)
        return await _created(
            backend, run, str(flow["name"]), str(flow.get("version") or ""), confirm=confirm, follow=follow
        )
    finally:
        client.close()


async def _created(
    backend: "Backend",
    run: dict[str, Any],
    flow_name: str,
    flow_version: str,
    *,
    confirm: bool | None,
    follow: bool,
    concurrency: int = 8,
    lease: float = 30.0,
) -> int:
    """After creation, in both modes: ask for confirmation or say how to give it, then follow."""
    where = backend.target
    run_id = str(run["id"])
    if run["status"] == "needs_confirmation":
        if confirm is None and is_tty():
            show_plan(run, flow_name, flow_version)
            from rich.prompt import Confirm

            if Confirm.ask(
                "Start this run? \\[y/N]",
                default=False,
                console=console,
                show_default=False,
                show_choices=False,
            ):
                run = await backend.confirm(run_id)
            else:
                run = await backend.cancel(run_id, "not confirmed at the terminal")
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
            runs_it = "the server's workers execute it" if where.remote else "execute it with `baton worker`"
            console.print(
                f"[dim]{runs_it}, watch it with `{escape(where.command('runs', 'watch', run_id))}`[/]",
                soft_wrap=True,
            )
        return 0
    return await follow_and_summarize(backend, run_id, concurrency=concurrency, lease=lease)


async def follow_and_summarize(
    backend: "Backend",
    run_id: str,
    *,
    concurrency: int = 8,
    lease: float = 30.0,
    with_worker: bool = True,
) -> int:
    """Follow a run to its end, print the summary, return the exit code (0: succeeded).

    Locally and `with_worker`, an in-process worker executes the run meanwhile; over HTTP the
    server's workers do, and the view reads the run's event stream.
    """
    import logging

    from baton.cli.live import Detached, follow, print_summary

    if not logging.getLogger().handlers:  # `baton run` has configured it already (-v)
        configure_logging(logging.WARNING, tracebacks=False)

    where = backend.target
    feed = backend.feed(run_id)
    worker = backend.worker(concurrency=concurrency, lease=lease) if with_worker else None
    try:
        final = await follow(feed, where, worker=worker)
    except Detached:
        err_console.print(
            f"[yellow]stopped following {escape(run_id)}[/]; {escape(feed.goes_on)}.\n"
            f"  watch it:  {escape(where.command('runs', 'watch', run_id))}\n"
            f"  cancel it: {escape(where.command('runs', 'cancel', run_id))}",
            soft_wrap=True,
        )
        return 130
    print_summary(final, where)
    return 0 if final["status"] == "succeeded" else 1


def show_plan(run: dict[str, Any], flow_name: str, flow_version: str) -> None:
    """The steps the run will execute, with their kind and needs, and its inputs."""
    from rich.table import Table

    version = f" v{escape(flow_version)}" if flow_version else ""
    console.print(
        f"\n[bold]{escape(str(run.get('title') or flow_name))}[/]  [dim]{escape(str(run['id']))} · "
        f"flow {escape(flow_name)}{version}[/]",
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
        does = spec.get("engine") or spec.get("handler") or step.get("engine") or ""
        if spec.get("prompt"):
            does = f"{does}: {spec['prompt']}" if does else str(spec["prompt"])
        table.add_row(
            escape(step["key"]),
            escape(str(step.get("kind"))),
            escape(join(step.get("needs") or [])),
            escape(str(does)),
        )
    console.print(table)


def focus_input(schema: Mapping[str, Any]) -> str | None:
    """The input a quick launch fills: `focus`, else the first required text input, else the first
    text input declared, else None."""
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    if "focus" in properties:
        return "focus"

    def is_text(name: Any) -> bool:
        prop = properties.get(name)
        kind = prop.get("type") if isinstance(prop, Mapping) else None
        return kind == "string" or (isinstance(kind, list) and "string" in kind)

    for name in [*(schema.get("required") or []), *properties]:
        if is_text(name):
            return str(name)
    return None


def with_focus(
    inputs: dict[str, Any], focus: str | None, schema: Mapping[str, Any], flow: str
) -> dict[str, Any]:
    """`inputs` plus the quick-launch text in the flow's focus input; refused when it has none."""
    if focus is None:
        return inputs
    from baton.domain.errors import UsageError

    name = focus_input(schema)
    if name is None:
        raise UsageError(
            f"flow {flow} takes no focus text: it has no text input; give its inputs with --input KEY=VALUE"
        )
    if name in inputs:
        raise UsageError(
            f"input {name!r} of flow {flow} is given twice: as the focus text and with --input; keep one"
        )
    return {**inputs, name: focus}
