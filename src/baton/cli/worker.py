"""`baton worker`: execute the steps of every run in the database until SIGINT or SIGTERM."""

import asyncio
import functools
import logging
from typing import Annotated, Any

import typer

from baton.cli.common import (
    DatabaseOpt,
    FlowsOpt,
    HiddenServerOpt,
    HiddenTokenOpt,
    Target,
    configure_logging,
    execute,
    local_target,
)

logger = logging.getLogger("baton.worker")


def worker(
    ctx: typer.Context,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Steps run at once.")] = 8,
    lease: Annotated[
        float, typer.Option("--lease", min=1.0, metavar="S", help="Step lease in seconds.")
    ] = 30.0,
    poll: Annotated[
        float, typer.Option("--poll", min=0.01, metavar="S", help="Seconds between polls.")
    ] = 1.0,
    until_idle: Annotated[
        bool,
        typer.Option("--until-idle", help="Exit once no step is left to run (instead of waiting for more)."),
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    database: DatabaseOpt = None,
    flows: FlowsOpt = None,
    server: HiddenServerOpt = None,
    token: HiddenTokenOpt = None,
) -> None:
    """Run steps of the loaded flows, from every run in the database, until stopped (Ctrl-C, SIGTERM)."""
    where = local_target(
        ctx,
        "worker",
        "a worker claims steps from the database itself; run it where the database is reachable, "
        "with --database URL (a server runs its own workers: `baton serve --workers N`)",
        database,
        flows,
        server,
        token,
    )
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        from baton.cli.common import print_error

        print_error(f"--log-level {log_level!r} is not one of debug, info, warning, error")
        raise typer.Exit(2)
    configure_logging(level)
    from baton import telemetry

    telemetry.configure_from_env()  # OTEL_EXPORTER_OTLP_ENDPOINT set: traces and logs over OTLP

    async def body() -> None:
        await _work(where, concurrency=concurrency, lease=lease, poll=poll, until_idle=until_idle)

    execute(body)


async def _work(where: Target, *, concurrency: int, lease: float, poll: float, until_idle: bool) -> None:
    from baton.engine.signals import on_stop
    from baton.engine.worker import WorkerSettings
    from baton.runtime import open_runtime
    from baton.store.database import redact

    settings = WorkerSettings(concurrency=concurrency, lease_s=lease, poll_s=poll)
    stop = asyncio.Event()
    # Signals are ours before anything is said or claimed: SIGTERM always means a clean stop.
    with on_stop(stop):
        async with open_runtime(where.database_url, where.sources) as rt:
            worker = _logging_worker_class()(rt.db, rt.catalog, settings)
            task = asyncio.create_task(worker.run(until_idle=until_idle), name="baton-worker")
            logger.info(
                "worker %s started: concurrency %d, lease %gs, database %s, flows %s",
                worker.id,
                concurrency,
                lease,
                redact(rt.db.url),
                ", ".join(rt.catalog.names()) or "none",
            )
            from baton import heap

            heap.freeze_startup_objects()
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not task.done():
                in_flight = len(worker.in_flight)
                logger.info(
                    "stopping: %s",
                    f"letting {in_flight} step(s) in flight finish" if in_flight else "nothing in flight",
                )
                worker.stop()
                rt.db.topics.notify([f"worker:{worker.id}"])
            await task  # a crash of the worker surfaces here
            await asyncio.gather(*worker.pending_reports(), return_exceptions=True)
            logger.info("worker %s stopped after %d step(s)", worker.id, worker.steps_run)


def _logging_worker_class() -> Any:
    """A Worker that logs each step it claims and how each one ended."""
    from baton.engine.worker import Worker
    from baton.store import steps as step_store

    class LoggingWorker(Worker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._reports: set[asyncio.Task[None]] = set()

        def _start(self, row: Any) -> None:
            logger.info("claimed %s/%s attempt %s (flow %s)", row.run_id, row.key, row.attempt, row.flow)
            super()._start(row)
            execution = self.in_flight.get(row.lease_token)
            if execution is not None and execution.task is not None:
                execution.task.add_done_callback(functools.partial(self._report, row))

        def pending_reports(self) -> list[asyncio.Task[None]]:
            return list(self._reports)

        def _report(self, row: Any, _task: object = None) -> None:
            task = asyncio.get_running_loop().create_task(self._log_outcome(row))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

        async def _log_outcome(self, row: Any) -> None:
            try:
                step = await self.db.read(step_store.get_step, row.id)
            except Exception as error:  # the log line must not break the worker
                logger.warning("finished %s/%s (status unknown: %s)", row.run_id, row.key, error)
                return
            if step is None:
                return
            took = ""
            if step.started_at is not None and step.finished_at is not None:
                took = f" in {step.finished_at - step.started_at:.2f}s"
            level = logging.WARNING if step.status == "failed" else logging.INFO
            detail = f": {step.error}" if step.error and step.status != "succeeded" else ""
            status = {"queued": "failed, will retry", "pending": "failed, will retry"}.get(
                step.status, step.status
            )
            if step.status == "running":
                status = "stopped (lease lost or worker stopping)"
            logger.log(
                level,
                "finished %s/%s attempt %s: %s%s%s",
                row.run_id,
                row.key,
                row.attempt,
                status,
                took,
                detail,
            )

    return LoggingWorker
