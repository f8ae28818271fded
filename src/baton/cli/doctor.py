"""`baton doctor`: audit a live database for stranded runs, zombie leases and event gaps (read-only)."""

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from baton.cli.common import (
    DatabaseOpt,
    HiddenServerOpt,
    HiddenTokenOpt,
    console,
    local_target,
    print_error,
)


def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0.0,
            metavar="S",
            help="Only report what has looked stuck for longer than this (reapers and heartbeats need time).",
        ),
    ] = 60.0,
    database: DatabaseOpt = None,
    server: HiddenServerOpt = None,
    token: HiddenTokenOpt = None,
) -> None:
    """Check the database for broken invariants; exit 0 when healthy, 1 when something is wrong.

    Read-only and safe on a live database: SQLite is opened read-only, PostgreSQL in a READ ONLY
    transaction. Checks: expired leases nobody reclaimed, running steps without a lease, steps past
    their deadline or their attempts, live steps of finished runs, running runs with nothing to do,
    waiting runs nobody can answer, overdue cancels, inputs and runs, gaps in event sequences.
    """
    from sqlalchemy import exc

    from baton.doctor import CHECKS, audit, summarize
    from baton.store.database import default_database_url, redact

    where = local_target(
        ctx,
        "doctor",
        "the audit reads the database itself; run it where the database is reachable, with --database URL",
        database,
        None,
        server,
        token,
    )
    url = where.database or default_database_url()
    try:
        findings = audit(url, grace_s=grace)
    except FileNotFoundError as error:
        print_error(str(error))
        raise typer.Exit(2) from None
    except exc.SQLAlchemyError as error:
        first = str(getattr(error, "orig", None) or error).strip().splitlines()
        reason = first[0] if first else type(error).__name__
        print_error(
            f"cannot audit the database at {redact(url)}: {reason}. "
            "Check --database / BATON_DATABASE_URL and that its schema is current (`baton db upgrade`)."
        )
        raise typer.Exit(2) from None
    if as_json:
        document = {"healthy": not findings, "findings": [f.as_dict() for f in findings]}
        typer.echo(json.dumps(document, indent=2))
    else:
        counts = summarize(findings)
        table = Table(title=f"baton doctor: {escape(redact(url))}", title_justify="left")
        table.add_column("check")
        table.add_column("found", justify="right")
        table.add_column("what it means")
        for check in CHECKS:
            found = counts[check.name]
            style = "bold red" if found else "green"
            table.add_row(check.name, f"[{style}]{found}[/]", escape(check.summary))
        console.print(table)
        for finding in findings[:200]:
            where_ = finding.run_id or "-"
            if finding.step_key:
                where_ += f" / {finding.step_key}"
            console.print(f"[red]{finding.check}[/] {escape(where_)}: {escape(finding.detail)}")
        if len(findings) > 200:
            console.print(f"… and {len(findings) - 200} more (use --json for all)")
        console.print("[green]healthy[/]" if not findings else f"[bold red]{len(findings)} finding(s)[/]")
    raise typer.Exit(1 if findings else 0)
