"""The `baton` command line (Typer + Rich).

    baton run FLOW --input k=v …        create a run, confirm it, execute it here, watch it live
    baton runs ls|show|confirm|cancel|retry|resume|fork|events|watch
    baton inputs ls|answer               the questions runs ask people
    baton flows ls|show                  what can be run
    baton worker                         execute steps until stopped
    baton serve / baton token create     HTTP API, live streams and dashboard; API tokens
    baton db upgrade|current             schema migrations
    baton doctor [--json]                audit the database: stranded runs, zombie leases, event gaps
    baton webhooks ls|create|rm|deliveries   signed webhooks on a project's run events
    baton schedules ls|create|show|pause|resume|rm   runs of a flow on a cron expression or an interval

Every command takes `--database URL` (env BATON_DATABASE_URL) and `--flows SRC` (env BATON_FLOWS),
also before the command name. With `--server URL --token T` (env BATON_SERVER, BATON_TOKEN) the
commands run, runs, inputs and flows talk to a Baton server over HTTP instead: no database is opened
here and the server's workers execute the steps; worker, serve, token create and db, which work on
a database directly, refuse --server. A Baton error prints `error: …` on stderr and exits 2 when
the input was at fault (an HTTP 4xx), 1 when the system was (a 5xx, an unreachable server).
"""

from typing import Annotated

import typer

from baton.cli import agents, db, flows, inputs, runs, webhooks
from baton.cli import schedules as schedules_cli
from baton.cli.common import DatabaseOpt, FlowsOpt, ServerOpt, TokenOpt, exit_code_for, print_error
from baton.cli.doctor import doctor
from baton.cli.run import run
from baton.cli.serve import serve, token_app
from baton.cli.worker import worker
from baton.domain.errors import BatonError

app = typer.Typer(
    name="baton",
    help="Baton: a durable, human-in-the-loop orchestrator for LLM agent workflows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from baton import __version__

        typer.echo(f"baton {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Baton: a durable, human-in-the-loop orchestrator for LLM agent workflows."""
    ctx.obj = {"database": database, "flows": list(flows or []), "server": server, "token": token}


app.command("run")(run)
app.command("worker")(worker)
app.command("doctor")(doctor)
app.command("serve")(serve)
app.add_typer(token_app, name="token")
app.add_typer(runs.app, name="runs")
app.add_typer(inputs.app, name="inputs")
app.add_typer(flows.app, name="flows")
app.add_typer(agents.app, name="agents")
app.add_typer(db.app, name="db")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(schedules_cli.app, name="schedules")


def main() -> None:
    """The console script: run the app; a Baton error that escaped a command is still one clean line."""
    try:
        app()
    except BatonError as error:
        print_error(error.message)
        raise SystemExit(exit_code_for(error)) from None


__all__ = ["app", "main"]
