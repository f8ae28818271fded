"""`baton agents ls`: declared agents (BATON_AGENTS) and the agent steps of the loaded flows."""

from __future__ import annotations

import typer

from baton.cli.common import FlowsOpt, console, target

app = typer.Typer(help="Agents: personas, engines, tools.", no_args_is_help=True)


@app.command("ls")
def list_agents(ctx: typer.Context, flows: FlowsOpt = None) -> None:
    """List agents with the engine each would run on here (BATON_DEFAULT_ENGINE applied)."""
    from rich.table import Table

    from baton.engine.agent_step import declared_agents, effective_engine_spec

    where = target(ctx, None, flows)
    table = Table("agent", "flow", "engine", "tools", "output", "about")
    for spec in declared_agents():
        engine = effective_engine_spec(spec.engine)
        table.add_row(
            spec.name,
            "-",
            engine + (" (no model)" if engine == "offline" else ""),
            ", ".join(spec.tools) or "-",
            "json" if spec.output_schema else "text",
            spec.description or spec.source,
        )
    for flow in where.load_catalog():
        for step in flow.steps:
            if step.kind.value != "agent":
                continue
            agent = dict(step.agent or {})
            engine = effective_engine_spec(str(agent.get("engine") or step.engine or "default"))
            table.add_row(
                str(agent.get("ref") or step.key),
                flow.name,
                engine + (" (no model)" if engine == "offline" else ""),
                ", ".join(agent.get("tools") or []) or "-",
                "json" if agent.get("output_schema") else "text",
                (step.prompt or "").splitlines()[0][:60] if step.prompt else "",
            )
    console.print(table)
