"""`baton flows …`: the flows this Baton can run (with --server: the flows that server runs), and
`baton flows validate PATH`, which checks flow files and reports every problem with its file and line."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from baton.cli.common import (
    DatabaseOpt,
    FlowsOpt,
    ServerOpt,
    TokenOpt,
    console,
    dumps,
    err_console,
    execute,
    join,
    shorten,
    target,
)

if TYPE_CHECKING:
    from baton.flows.yaml_loader import YamlFlows

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
        table.add_column("bands", no_wrap=True)
        table.add_column("confirmation", no_wrap=True)
        for flow in catalog:
            table.add_row(
                escape(flow["name"]),
                escape(flow["category"]),
                escape(flow["title"]),
                str(len(flow["steps"])),
                escape(join(flow.get("bands") or {})),
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
        if flow.get("bands"):
            console.print("[bold]bands[/]")
            for band, settings in flow["bands"].items():
                console.print(f"  {escape(band)}: {escape(describe_band(settings))}", soft_wrap=True)

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


def describe_band(settings: dict[str, Any]) -> str:
    """What a band runs, in words: its steps, its attempts, or the whole flow."""
    parts = []
    if settings.get("steps"):
        parts.append(f"steps {join(settings['steps'])}")
    if settings.get("max_attempts"):
        parts.append(f"up to {settings['max_attempts']} attempts")
    if settings.get("description"):
        parts.append(str(settings["description"]))
    return " · ".join(parts) or "every step"


@app.command("validate")
def validate(
    path: Annotated[
        Path,
        typer.Argument(
            help="A YAML flow file, a folder with baton.yaml or flows/*.yaml, or a Python flow file.",
            show_default=False,
        ),
    ],
    agents: Annotated[
        list[str] | None,
        typer.Option(
            "--agents",
            metavar="PATH",
            help="Agents (agents.yaml, persona files or a folder) that steps may name, besides the "
            "YAML source's own (default: BATON_AGENTS).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check flow declarations and list every problem as FILE:LINE: message.

    Exit code: 0 when every flow is valid (they are listed), 2 when there are problems.
    """
    from baton.flows.yaml_loader import is_yaml_source, read_yaml_flows

    catalog = None
    if agents:
        from baton.agents.personas import InvalidAgents, load_agent_sources

        try:
            catalog = load_agent_sources(agents)
        except InvalidAgents as error:
            _report_problems(error.problems, f"the agents of {', '.join(agents)}")
            raise typer.Exit(2) from None
    if is_yaml_source(path):
        found = read_yaml_flows(path, agents=catalog)
    else:
        found = _python_flows(path)
    for note in found.notes:
        console.print(f"[dim]note: {escape(note)}[/]", soft_wrap=True)
    if found.problems:
        _report_problems(found.problems, str(path))
        raise typer.Exit(2)
    _print_valid(found, path)


def _python_flows(path: Path) -> "YamlFlows":
    from baton.domain.errors import BatonError
    from baton.flows.catalog import load_catalog
    from baton.flows.yaml_loader import YamlFlows

    found = YamlFlows()
    try:
        catalog = load_catalog([str(path)])
    except BatonError as error:
        found.problems.append(error.message if str(path) in error.message else f"{path}: {error.message}")
        return found
    found.flows = list(catalog)
    found.locations = {flow.name: str(path) for flow in found.flows}
    return found


def _report_problems(problems: list[str], where: str) -> None:
    for problem in problems:
        err_console.print(escape(problem), soft_wrap=True, highlight=False)
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    err_console.print(f"[red]{count}[/] in {escape(where)}", soft_wrap=True)


def _print_valid(found: "YamlFlows", path: Path) -> None:
    from rich.table import Table

    if not found.flows:
        console.print(f"[yellow]no flows declared in {escape(str(path))}[/]", soft_wrap=True)
        return
    table = Table(header_style="bold", box=None, pad_edge=False)
    table.add_column("flow", style="bold", no_wrap=True)
    table.add_column("category", no_wrap=True)
    table.add_column("steps", justify="right")
    table.add_column("bands", no_wrap=True)
    table.add_column("declared at", overflow="fold")
    for flow in found.flows:
        table.add_row(
            escape(flow.name),
            escape(flow.category),
            str(len(flow.steps)),
            escape(join(flow.bands)),
            escape(found.locations.get(flow.name, "")),
        )
    console.print(table)
    count = len(found.flows)
    console.print(
        f"[green]valid[/]: {count} flow{'s' if count != 1 else ''} in {escape(str(path))}", soft_wrap=True
    )
