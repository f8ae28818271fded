"""`baton flows …`: the flows this Baton can run (with --server: the flows that server runs)."""

from typing import Annotated

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
    join,
    shorten,
    target,
)

app = typer.Typer(
    help="The flows that can be run (baton.examples, --flows, BATON_FLOWS).", no_args_is_help=True
)


@app.command("ls")
def list_flows(
    ctx: typer.Context,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """The loaded flows: name, category, title, steps, whether runs need confirmation."""
    where = target(ctx, database, flows, server, token)

    async def body() -> None:
        from rich.table import Table

        from baton.cli.backend import list_flows

        catalog = await list_flows(where)
        if not catalog:
            console.print("[dim]no flows loaded[/]")
            return
        table = Table(header_style="bold", box=None, pad_edge=False)
        table.add_column("name", no_wrap=True, style="bold")
        table.add_column("category", no_wrap=True)
        table.add_column("title", overflow="ellipsis", max_width=50)
        table.add_column("steps", justify="right")
        table.add_column("confirmation", no_wrap=True)
        for flow in catalog:
            table.add_row(
                escape(flow["name"]),
                escape(flow["category"]),
                escape(flow["title"]),
                str(len(flow["steps"])),
                "[magenta]required[/]" if flow["require_confirmation"] else "[dim]no[/]",
            )
        console.print(table)

    execute(body)


@app.command("show")
def show_flow(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The flow's name.", show_default=False)],
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """A flow: its steps (kind, needs, what they do) and its input schema."""
    where = target(ctx, database, flows, server, token)

    async def body() -> None:
        from rich.table import Table

        from baton.cli.backend import get_flow

        flow = await get_flow(where, name)
        version = f" v{escape(flow['version'])}" if flow["version"] else ""
        console.print(
            f"[bold]{escape(flow['name'])}[/]{version}  [dim]{escape(flow['category'])}[/]"
            f"{'  [magenta]needs confirmation[/]' if flow['require_confirmation'] else ''}",
            soft_wrap=True,
        )
        if flow["title"]:
            console.print(escape(flow["title"]))
        if flow["description"]:
            console.print(f"[dim]{escape(flow['description'])}[/]", soft_wrap=True)

        steps = Table(title="steps", title_justify="left", header_style="bold", box=None, pad_edge=False)
        steps.add_column("step", style="bold", no_wrap=True)
        steps.add_column("kind", no_wrap=True)
        steps.add_column("needs")
        steps.add_column("does", overflow="ellipsis", max_width=70)
        steps.add_column("timeout", justify="right")
        for spec in flow["steps"]:
            steps.add_row(
                escape(spec["key"]),
                escape(spec["kind"]),
                escape(join(spec["needs"])),
                escape(shorten(spec["does"], 200)),
                f"{spec['timeout_s']:g}s" if spec["timeout_s"] else "",
            )
        console.print(steps)

        schema = dict(flow["input_schema"])
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        if properties:
            table = Table(title="inputs", title_justify="left", header_style="bold", box=None, pad_edge=False)
            table.add_column("name", style="bold", no_wrap=True)
            table.add_column("type", no_wrap=True)
            table.add_column("required", no_wrap=True)
            table.add_column("default")
            table.add_column("description", overflow="fold", max_width=60)
            for key, prop in properties.items():
                prop = prop if isinstance(prop, dict) else {}
                kind = prop.get("type", "any")
                table.add_row(
                    escape(key),
                    escape(kind if isinstance(kind, str) else join(kind)),
                    "yes" if key in required else "",
                    escape(dumps(prop["default"])) if "default" in prop else "",
                    escape(str(prop.get("description") or "")),
                )
            console.print(table)
        console.print("[dim]input schema:[/]")
        console.print_json(dumps(schema))

    execute(body)
