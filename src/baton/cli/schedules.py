"""`baton schedules ls|create|show|pause|resume|rm`: schedules that make runs, here or over --server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    dumps,
    execute,
    parse_inputs,
    target,
    user,
    when,
)

app = typer.Typer(help="Schedules: runs of a flow on a cron expression or an interval.", no_args_is_help=True)

ScheduleId = Annotated[
    str,
    typer.Argument(
        metavar="SCHEDULE_ID", help="The schedule's id (see `baton schedules ls`).", show_default=False
    ),
]
_TIMES = ("next_fire_at", "last_fire_at", "created_at", "updated_at")


def _from_api(item: Mapping[str, Any]) -> dict[str, Any]:
    """A ScheduleOut body in the local shape: epoch seconds, `paused_at` set when paused."""
    from baton.cli.backend import epoch

    out = dict(item)
    for name in _TIMES:
        out[name] = epoch(out.get(name))
    out["next_fires"] = [epoch(t) for t in out.get("next_fires") or []]
    out["paused_at"] = out["updated_at"] if out.get("paused") else None
    return out


async def _local(where: Target, op: str, **kw: Any) -> Any:
    """The operation on the database here: the same checks as the API, no roles (you own the file)."""
    from baton.engine.schedules import ScheduleRequest, Schedules
    from baton.runtime import open_runtime

    async with open_runtime(where.database_url, where.sources) as rt:
        book = Schedules(rt.db, rt.catalog)
        if op == "ls":
            return await book.list(project_id=kw["project"])
        if op == "create":
            flow = rt.catalog.get(kw["flow"])
            inputs = parse_inputs(kw["inputs"], flow.input_schema, flow=flow.name)
            return await book.create(ScheduleRequest(**_request_fields(kw, inputs), created_by=user()))
        method = {"show": book.get, "pause": book.pause, "resume": book.resume, "rm": book.delete}[op]
        return await method(kw["schedule_id"])


async def _remote(where: Target, op: str, **kw: Any) -> Any:
    from baton.cli.backend import call, make_client

    client = make_client(where)
    server = client.server
    try:
        if op == "ls":
            return [_from_api(s) for s in await call(server, client.list_schedules, kw["project"])]
        if op == "create":
            flow = await call(server, client.flow, kw["flow"])
            inputs = parse_inputs(kw["inputs"], flow.get("input_schema") or {}, flow=str(flow["name"]))
            fields = _request_fields(kw, inputs)
            return _from_api(await call(server, client.create_schedule, **fields))
        method = {
            "show": client.get_schedule,
            "pause": client.pause_schedule,
            "resume": client.resume_schedule,
            "rm": client.delete_schedule,
        }[op]
        return _from_api(await call(server, method, kw["schedule_id"]))
    finally:
        client.close()


def _request_fields(kw: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "flow": kw["flow"],
        "inputs": dict(inputs),
        "cron": kw["cron"],
        "timezone": kw["timezone"],
        "interval_s": kw["every"],
        "project_id": kw["project"],
        "title": kw["title"],
        "missed": kw["missed"],
        "auto_confirm": kw["auto_confirm"],
        "paused": kw["paused"],
    }


async def _do(where: Target, op: str, **kw: Any) -> Any:
    return await (_remote if where.remote else _local)(where, op, **kw)


def _timing(s: Mapping[str, Any]) -> str:
    if s.get("cron"):
        return f"cron {s['cron']} ({s.get('timezone') or 'UTC'})"
    return f"every {s.get('interval_s'):g} s"


def _state(s: Mapping[str, Any]) -> str:
    return "[yellow]paused[/]" if s.get("paused_at") is not None else "[green]active[/]"


@app.command("ls")
def list_schedules(
    ctx: typer.Context,
    project: Annotated[
        str | None, typer.Option("--project", metavar="PROJECT_ID", help="Only this project's schedules.")
    ] = None,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Schedules, newest first (over --server: those your token can see)."""
    where = target(ctx, database, flows, server, token)

    async def body() -> None:
        from rich.table import Table

        rows = await _do(where, "ls", project=project)
        if not rows:
            console.print("[dim]no schedules[/]")
            return
        table = Table(header_style="bold", box=None, pad_edge=False)
        for name in ("id", "flow", "when", "state", "next fire", "runs", "last error"):
            table.add_column(name, no_wrap=name != "last error", overflow="ellipsis")
        for s in rows:
            table.add_row(
                escape(str(s["id"])),
                escape(str(s["flow"])),
                escape(_timing(s)),
                _state(s),
                when(s.get("next_fire_at")) if s.get("next_fire_at") else "-",
                str(s.get("fires") or 0),
                escape(str(s.get("last_error") or "")),
            )
        console.print(table)

    execute(body)


@app.command("create")
def create(
    ctx: typer.Context,
    flow: Annotated[str, typer.Argument(metavar="FLOW", help="The flow to run (see `baton flows ls`).")],
    cron: Annotated[
        str | None,
        typer.Option("--cron", metavar="EXPR", help="Five-field cron expression, or @hourly, @daily…"),
    ] = None,
    timezone: Annotated[
        str, typer.Option("--tz", metavar="ZONE", help="IANA time zone the cron expression is read in.")
    ] = "UTC",
    every: Annotated[
        float | None, typer.Option("--every", metavar="SECONDS", help="Fire every SECONDS (at least 1).")
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", metavar="KEY=VALUE", help="A run input, typed by the flow's schema (repeatable)."
        ),
    ] = None,
    title: Annotated[str, typer.Option("--title", help="The title of its runs.")] = "",
    project: Annotated[
        str | None, typer.Option("--project", metavar="PROJECT_ID", help="Its project.")
    ] = None,
    missed: Annotated[
        str,
        typer.Option(
            "--missed", help="Fires missed while no worker ran: skip, or run_once (one run for all)."
        ),
    ] = "skip",
    auto_confirm: Annotated[
        bool,
        typer.Option(
            "--auto-confirm/--no-auto-confirm",
            help="Its runs skip the flow's confirmation (a policy that requires one still applies).",
        ),
    ] = True,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create a schedule: runs of FLOW with these inputs on --cron (with --tz) or --every SECONDS."""
    where = target(ctx, database, flows, server, token)

    async def body() -> None:
        made = await _do(
            where,
            "create",
            flow=flow,
            cron=cron,
            timezone=timezone,
            every=every,
            inputs=list(inputs or []),
            title=title,
            project=project,
            missed=missed,
            auto_confirm=auto_confirm,
            paused=paused,
        )
        _print(made)

    execute(body)


@app.command("show")
def show(
    ctx: typer.Context,
    schedule_id: ScheduleId,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """A schedule: its timing, inputs, next fire times and what its last fire did."""
    _act(ctx, "show", schedule_id, database, flows, server, token)


@app.command("pause")
def pause(
    ctx: typer.Context,
    schedule_id: ScheduleId,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Stop firing until resumed."""
    _act(ctx, "pause", schedule_id, database, flows, server, token)


@app.command("resume")
def resume(
    ctx: typer.Context,
    schedule_id: ScheduleId,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Fire again from now on (fires that fell while paused are not made up)."""
    _act(ctx, "resume", schedule_id, database, flows, server, token)


@app.command("rm")
def remove(
    ctx: typer.Context,
    schedule_id: ScheduleId,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete a schedule; the runs it made stay."""
    _act(ctx, "rm", schedule_id, database, flows, server, token)


def _act(
    ctx: typer.Context,
    op: str,
    schedule_id: str,
    database: str | None,
    flows: Sequence[str] | None,
    server: str | None,
    token: str | None,
) -> None:
    where = target(ctx, database, list(flows) if flows is not None else None, server, token)

    async def body() -> None:
        found = await _do(where, op, schedule_id=schedule_id)
        if op == "rm":
            console.print(f"deleted schedule {escape(str(found['id']))}")
            return
        _print(found)

    execute(body)


def _print(s: Mapping[str, Any]) -> None:
    console.print(f"[bold]{escape(str(s['id']))}[/]  {_state(s)}", soft_wrap=True)
    fields = [
        ("flow", s["flow"]),
        ("project", s.get("project_id")),
        ("when", _timing(s)),
        ("missed", s.get("missed")),
        ("confirm", "automatic" if s.get("auto_confirm") else "by a person, when the flow asks"),
        ("title", s.get("title")),
        ("inputs", dumps(s.get("inputs") or {})),
        ("runs made", str(s.get("fires") or 0)),
        ("last fire", when(s.get("last_fire_at")) if s.get("last_fire_at") else None),
        ("last run", s.get("last_run_id")),
        ("last error", s.get("last_error")),
    ]
    for name, value in fields:
        if value:
            console.print(f"  [dim]{name:<10}[/] {escape(str(value))}", soft_wrap=True)
    upcoming = s.get("next_fires") or []
    if upcoming:
        console.print("  [dim]next fires[/] " + ", ".join(when(t) for t in upcoming), soft_wrap=True)
