"""What every command shares: the global options, consoles, error handling, formatting.

Kept light on purpose: nothing here imports SQLAlchemy, so `baton --help` starts fast.
The database and the engine are imported inside the commands that use them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from baton.domain.errors import BatonError, InvalidInputs, UsageError

if TYPE_CHECKING:
    from baton.flows.catalog import Catalog

T = TypeVar("T")

# --- global options -----------------------------------------------------------------------------

DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database",
        metavar="URL",
        help="Database URL: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        "(env BATON_DATABASE_URL; default $BATON_HOME/baton.db, else ~/.baton/baton.db).",
        show_default=False,
    ),
]
FlowsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--flows",
        metavar="SRC",
        help="Load flows from a module name or a .py file (repeatable) "
        "(env BATON_FLOWS, comma-separated; baton.examples is always loaded).",
        show_default=False,
    ),
]


ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="URL",
        help="Talk to a Baton server (`baton serve`) at this URL instead of opening a database "
        "(env BATON_SERVER; an explicit --database wins over the env).",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        help="API token for --server (env BATON_TOKEN; make one with `baton token create`).",
        show_default=False,
    ),
]
# Commands that work on a database directly take these only to refuse them with a clear message.
HiddenServerOpt = Annotated[str | None, typer.Option("--server", hidden=True, show_default=False)]
HiddenTokenOpt = Annotated[str | None, typer.Option("--token", hidden=True, show_default=False)]


@dataclass(frozen=True)
class Target:
    """Where a command works: a database (URL and flow sources) or a Baton server (URL and token)."""

    database: str | None  #: as given with --database, else None (env or the default file)
    flows: tuple[str, ...]  #: as given with --flows
    server: str | None = None  #: the server's base URL, from --server or BATON_SERVER
    token: str | None = field(default=None, repr=False)  #: from --token or BATON_TOKEN; never printed
    server_given: bool = False  #: --server was on the command line (hints repeat it; env ones do not)

    @property
    def remote(self) -> bool:
        """Commands go over HTTP to `server`: no database is opened here, the server's workers run steps."""
        return self.server is not None

    @property
    def database_url(self) -> str:
        from baton.store.database import default_database_url

        return self.database or default_database_url()

    @property
    def sources(self) -> list[str]:
        from baton.flows.catalog import default_sources

        return list(dict.fromkeys([*default_sources(), *self.flows]))

    def load_catalog(self) -> Catalog:
        from baton.flows.catalog import load_catalog

        return load_catalog(self.sources)

    def command(self, *words: str) -> str:
        """A `baton …` command line to run in another shell, with the options this one was given.

        The token is never repeated: another shell takes it from BATON_TOKEN or a --token of its own.
        """
        import shlex

        parts = ["baton", *words]
        if self.remote:
            if self.server_given and self.server:
                parts += ["--server", self.server]
            return " ".join(shlex.quote(p) for p in parts)
        if self.database:
            from baton.store.database import redact

            parts += ["--database", redact(self.database)]
        for source in self.flows:
            parts += ["--flows", source]
        return " ".join(shlex.quote(p) for p in parts)


def target(
    ctx: typer.Context,
    database: str | None = None,
    flows: Sequence[str] | None = None,
    server: str | None = None,
    token: str | None = None,
) -> Target:
    """Options given on the command win over those given before it (`baton --database X runs ls`).

    A server comes from --server, else from BATON_SERVER unless --database was given; with one, the
    token comes from --token, else BATON_TOKEN. Contradictions are usage errors (exit 2).
    """
    root: dict[str, Any] = ctx.find_root().obj or {}
    chosen_db = database or root.get("database")
    chosen_flows = tuple(flows or ()) or tuple(root.get("flows") or ())
    given_server = server or root.get("server")
    given_token = token or root.get("token")
    if given_server and chosen_db:
        usage_exit(
            "give either --server URL (talk to a Baton server) or --database URL (open a database here), "
            "not both"
        )
    chosen_server = given_server or (None if chosen_db else os.environ.get("BATON_SERVER") or None)
    if chosen_server is None:
        if given_token:
            usage_exit(
                "--token goes with --server URL (or BATON_SERVER); without a server the database is "
                "opened here and needs no token"
            )
        return Target(database=chosen_db, flows=chosen_flows)
    url = _server_url(chosen_server, "--server" if given_server else "BATON_SERVER")
    if chosen_flows:
        usage_exit(
            f"--flows loads flows into this process, but commands go to the server at {url}, which runs "
            "its own flows (start it with `baton serve --flows …`); pass --database to work locally"
        )
    secret = given_token or os.environ.get("BATON_TOKEN") or None
    if not secret:
        usage_exit(
            f"the server at {url} needs an API token: pass --token TOKEN or set BATON_TOKEN "
            "(`baton token create` makes one where the server's database is)"
        )
    return Target(database=None, flows=(), server=url, token=secret.strip(), server_given=bool(given_server))


def _server_url(value: str, name: str) -> str:
    from urllib.parse import urlsplit

    text = value.strip()
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        valid = False
    if not valid:
        usage_exit(f"{name} {value!r} is not an http(s) URL: give one like http://127.0.0.1:8000")
    return text.rstrip("/")


def local_target(
    ctx: typer.Context,
    command: str,
    why: str,
    database: str | None = None,
    flows: Sequence[str] | None = None,
    server: str | None = None,
    token: str | None = None,
) -> Target:
    """For commands that work on a database directly: --server / --token on the line are refused
    with `why`; BATON_SERVER and BATON_TOKEN in the environment are ignored."""
    root: dict[str, Any] = ctx.find_root().obj or {}
    if server or token or root.get("server") or root.get("token"):
        usage_exit(f"`baton {command}` cannot go through a server (--server/--token): {why}")
    chosen_flows = tuple(flows or ()) or tuple(root.get("flows") or ())
    return Target(database=database or root.get("database"), flows=chosen_flows)


def usage_exit(message: str) -> NoReturn:
    """`error: …` on stderr and exit 2, before any work is done."""
    print_error(message)
    raise typer.Exit(2)


# --- consoles and errors ------------------------------------------------------------------------


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # piped output: do not cut ids and reasons at 80 columns
    return console


console = _console()
err_console = _console(stderr=True)


def configure_logging(level: int, *, tracebacks: bool = True) -> None:
    """Log records through Rich on stderr. Without `tracebacks`, records that carry one are dropped:
    in `baton run` those are step failures, which the live view already shows with their error."""
    import logging

    from rich.logging import RichHandler

    handler = RichHandler(console=err_console, show_path=False, markup=False, rich_tracebacks=False)
    if not tracebacks:
        handler.addFilter(lambda record: not record.exc_info)
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]", handlers=[handler], force=True)
    for noisy in ("sqlalchemy", "alembic", "aiosqlite", "psycopg", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] [red]{escape(one_line(message))}[/]", soft_wrap=True)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def exit_code_for(error: BatonError) -> int:
    return 2 if isinstance(error, UsageError) else 1


def execute(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a command's coroutine; a BatonError becomes `error: …` and exit 2 (usage) or 1."""
    try:
        return asyncio.run(_call(fn))
    except BatonError as error:
        print_error(error.message)
        raise typer.Exit(exit_code_for(error)) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


async def _call(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


# --- inputs -------------------------------------------------------------------------------------


def parse_inputs(pairs: Sequence[str] | None, schema: Mapping[str, Any], *, flow: str) -> dict[str, Any]:
    """`KEY=VALUE` arguments typed by the flow's schema; a bad one names its field."""
    from baton.flows.inputs import parse_cli_inputs

    try:
        return parse_cli_inputs(list(pairs or ()), schema)
    except InvalidInputs as error:
        raise InvalidInputs(
            f"inputs for flow {flow} are not valid: {error.message}", error.problems
        ) from None


def example_answer(schema: Mapping[str, Any] | None) -> tuple[str, list[str]]:
    """An example `--value` JSON and `--set` pairs that would satisfy a simple schema."""
    schema = schema or {}
    props = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else None
    samples = {"boolean": True, "integer": 1, "number": 1, "string": "text", "array": [], "object": {}}
    if schema.get("type") == "object" or props:
        value: dict[str, Any] = {}
        required = list(schema.get("required") or [])
        names = required or list((props or {}).keys())
        for name in names:
            prop = (props or {}).get(name) or {}
            kind = prop.get("type") if isinstance(prop, Mapping) else None
            if isinstance(prop, Mapping) and prop.get("enum"):
                value[name] = prop["enum"][0]
            else:
                value[name] = samples.get(kind if isinstance(kind, str) else "string", "text")
        pairs = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in value.items()]
        return json.dumps(value), pairs
    kind = schema.get("type")
    return json.dumps(samples.get(kind if isinstance(kind, str) else "string", "text")), []


# --- formatting ---------------------------------------------------------------------------------

STATUS_STYLE = {
    "needs_confirmation": "magenta",
    "queued": "yellow",
    "running": "cyan",
    "waiting_for_input": "magenta",
    "waiting": "magenta",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "bright_black",
    "cancelling": "bright_black",
    "pending": "dim",
    "retrying": "yellow",
}


def styled_status(status: str, *, dot: bool = True) -> str:
    style = STATUS_STYLE.get(status, "white")
    mark = "● " if dot else ""
    return f"[{style}]{mark}{escape(status)}[/]"


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        minutes, secs = divmod(int(seconds), 60)
        return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"


def run_duration(run: Mapping[str, Any]) -> float | None:
    start = run.get("started_at") or run.get("created_at")
    end = run.get("finished_at")
    if start is None:
        return None
    return (end or time.time()) - start


def shorten(text: Any, width: int = 80) -> str:
    line = one_line(str(text or ""))
    return line if len(line) <= width else line[: width - 1] + "…"


def last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def dumps(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def out(text: str = "") -> None:
    """Plain text on stdout, no markup and no wrapping (JSON lines, ids)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return None


def join(items: Iterable[Any], empty: str = "-") -> str:
    listed = [str(i) for i in items]
    return ", ".join(listed) if listed else empty
