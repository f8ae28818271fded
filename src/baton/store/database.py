"""Database handle: engine setup per dialect, one-transaction helpers with busy retries, wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event, exc, make_url

from baton.domain.errors import StoreError, StoreUnavailable, UsageError
from baton.store import direct
from baton.store.dialects import EVENTS_SENT, Dialect, dialect_for
from baton.store.recent_events import RecentEvent, RecentEvents, decode_from_notify

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
Item = TypeVar("Item")

DEFAULT_SQLITE_PATH = Path("~/.baton/baton.db")
_BUSY_RETRIES = 60


def default_database_url() -> str:
    """`BATON_DATABASE_URL`, else the embedded SQLite file `~/.baton/baton.db`."""
    env = os.environ.get("BATON_DATABASE_URL")
    if env:
        return env
    home = os.environ.get("BATON_HOME")
    path = Path(home) / "baton.db" if home else DEFAULT_SQLITE_PATH.expanduser()
    return f"sqlite:///{path}"


def normalize_url(url: str) -> str:
    """Accept `sqlite:///path`, `postgresql://…` or `postgres://…`; return the async driver's URL."""
    url = url.strip()
    if url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+psycopg://"):
        return url
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://", "postgresql+asyncpg://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise UsageError(
        f"database URL {redact(url)!r} is not supported: use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
    )


def sync_url(url: str) -> str:
    """The same database for the synchronous drivers Alembic uses."""
    return normalize_url(url).replace("sqlite+aiosqlite://", "sqlite://")


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(normalize_url(url))
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


class Topics:
    """In-process wake-ups: a waiter sleeps until a topic it cares about changes, or a timeout.

    Each notification ticks one clock, and a topic remembers the tick of its last change, so
    that `version` can tell a waiter whether anything changed since it last looked. Topics are
    many and short-lived (one per run), so only the `keep` most recently changed are remembered;
    a forgotten one reports the newest tick forgotten: a waiter that looked before it may wake
    once for nothing, and none misses a change.
    """

    def __init__(self, keep: int = 10_000) -> None:
        self._waiters: dict[str, set[asyncio.Future[bool]]] = {}
        self._changed: dict[str, int] = {}
        self._clock = 0
        self._forgotten = 0
        self._keep = keep

    def version(self, topics: Iterable[str]) -> int:
        """A number that grows whenever one of `topics` (or "*") is notified: pass it to `wait(since=)`."""
        return max(self._changed.get(topic, self._forgotten) for topic in (*topics, "*"))

    def notify(self, topics: Iterable[str]) -> None:
        names = set(topics)
        self._clock += 1
        for topic in names:
            self._changed.pop(topic, None)  # re-inserted last: the dict stays in order of change
            self._changed[topic] = self._clock
        if len(self._changed) > 2 * self._keep:
            self._forget_oldest()
        wake_all = "*" in names
        for topic, futures in list(self._waiters.items()):
            if wake_all or topic in names:
                for fut in futures:
                    if not fut.done():
                        fut.set_result(True)

    def _forget_oldest(self) -> None:
        drop = len(self._changed) - self._keep
        oldest = list(itertools.islice(self._changed, drop))
        for topic in oldest:
            self._forgotten = max(self._forgotten, self._changed.pop(topic))

    async def wait(self, topics: Iterable[str], timeout: float, *, since: int | None = None) -> bool:
        """True when woken, False on timeout.

        With `since` (a `version` taken earlier) a notification that came in between is not lost:
        the wait returns at once.
        """
        names = list(topics)
        if since is not None and self.version(names) != since:
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        for topic in names:
            self._waiters.setdefault(topic, set()).add(fut)
        # Not asyncio.wait_for: on Python 3.11 it drops a cancellation that lands as the future
        # completes, and a service loop that lost its cancellation never stops (nor its worker).
        timer = loop.call_later(timeout, _time_out, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            for topic in names:
                waiters = self._waiters.get(topic)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[topic]


def _time_out(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


def touch(conn: Connection, *topics: str) -> None:
    """Mark topics as changed by this transaction; waiters wake once it commits."""
    conn.info.setdefault("baton_topics", set()).update(topics)


class Database:
    """One database: its engine and dialect, and transactions that retry on contention.

    Each whole transaction runs on a thread (one hand-off per transaction, not per statement):
    PostgreSQL's through psycopg's synchronous driver on a thread per pooled connection, SQLite's
    through the plain sqlite3 driver with a single writer thread, so that this process never
    contends with itself for SQLite's one write lock (other processes: busy_timeout and retries).
    Steps' ends and workers' claims, short and awaited by steps, commit on the event loop's own
    thread instead when that writer is idle, on the writer's connection (`_write_on_loop`).

    SQLite writes are group-committed: write transactions that queue up while the writer thread
    is busy run back to back in one SQLite transaction, each inside its own savepoint, and share
    one commit (one fsync). Each caller still learns its result only after that commit, and a
    body that fails rolls back to its savepoint alone, so every caller sees exactly what it would
    see alone: serial transactions, all durable before they are acknowledged. On PostgreSQL the
    writes of one run that queue up behind one in flight are committed together
    (`write_for_run`).
    """

    def __init__(self, url: str, engine: Engine, dialect: Dialect) -> None:
        self.url = url
        self.engine = engine
        self.dialect = dialect
        self.topics = Topics()
        #: the events this process committed last, for live run streams (store/recent_events.py)
        self.recent_events = RecentEvents()
        #: called after each commit that ended runs, with their rows as the transaction left them
        self.run_end_hooks: list[Callable[[list[Any]], None]] = []
        #: PostgreSQL: also take other processes' committed events into `recent_events` (their
        #: notifications carry them), for a server's run streams; set before the first `wait`
        self.receive_events = False
        self._listener: asyncio.Task[None] | None = None
        self.busy_retries = 0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="baton-sqlite-write")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="baton-sqlite-read")
        sqlite = dialect.name == "sqlite"
        #: SQLite: read-only connections of their own. PostgreSQL: the same pool in autocommit,
        #: since at READ COMMITTED each statement of a read transaction takes its own snapshot
        #: anyway, and BEGIN and COMMIT were two of a one-statement read's three round trips.
        self._read_engine = (
            _sqlite_engine(url, read_only=True)
            if sqlite
            else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        #: PostgreSQL: one thread per connection the pool may hold
        self._pg_threads = (
            None
            if sqlite
            else ThreadPoolExecutor(PG_POOL_SIZE + PG_MAX_OVERFLOW, thread_name_prefix="baton-pg")
        )
        self._queued_writes: list[_QueuedWrite] = []
        self._writes_lock = threading.Lock()
        self._writer_busy = False
        #: PostgreSQL: per run with a write in flight, the writes of that run waiting for it
        self._run_writes: dict[str, list[_RunWrite]] = {}
        self._group_tasks: set[asyncio.Task[None]] = set()
        #: the writer thread's own connection, kept open: no pool check-out, reset and check-in
        #: around every group (a tenth of a step's cost on SQLite)
        self._write_conn: Connection | None = None
        self._closing = False

    @classmethod
    async def open(cls, url: str | None = None, *, upgrade: bool | None = None) -> Database:
        """Connect, checking the database is reachable and its schema current.

        An embedded SQLite file is created and migrated on first use; PostgreSQL is migrated
        with `baton db upgrade` (or `upgrade=True`), so that a deploy decides when schemas move.
        """
        from baton.store import migrate

        url = normalize_url(url or default_database_url())
        dialect = dialect_for(url)
        if upgrade is None:
            upgrade = dialect.name == "sqlite"
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(migrate.ensure_schema, url, upgrade=upgrade)
        engine = _create_engine(url, dialect)
        db = cls(url, engine, dialect)
        await db.read(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
        return db

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        if self._pg_threads is not None:
            self._pg_threads.shutdown(wait=True)
            self.engine.dispose()
        else:
            self._closing = True  # from now on every write goes to the writer thread, which refuses it
            with contextlib.suppress(RuntimeError):
                await asyncio.get_running_loop().run_in_executor(self._writer, self._close_write_conn)
            self._writer.shutdown(wait=True)
            self._readers.shutdown(wait=True)
            self.engine.dispose()
            self._read_engine.dispose()

    # --- transactions --------------------------------------------------------------------

    async def write(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, …)` in one write transaction (SQLite: BEGIN IMMEDIATE), retried on contention."""
        return await self._transaction(False, fn, *args, **kwargs)

    async def write_short(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`write` of a transaction of a few statements that steps wait for (a worker's claim).

        On SQLite it may commit on the event loop's own thread (`_write_on_loop`).
        """
        return cast(T, await self._transact(False, _bound(fn, args, kwargs), short=True))

    def _runs_ended(self, ended: list[Any]) -> None:
        for hook in self.run_end_hooks:
            try:
                hook(ended)
            except Exception:  # a hook (tracing) never fails the transaction that already committed
                logger.exception("a run-end hook failed", extra={"action": "store.run_end_hook_failed"})

    async def read(self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(conn, …)` in one read transaction."""
        return await self._transaction(True, fn, *args, **kwargs)

    async def write_for_run(
        self, run_id: str, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """A write whose first act is to lock the row of run `run_id` (a step's result, failure, cancel).

        On PostgreSQL such writes of one run that arrive in the same turn of the event loop, or
        while one of them is in flight, commit together, back to back in one transaction: the
        run's row lock is taken by one session, once, instead of every other session queueing
        on it through its own commit (a fan-out's completions did, one by one). Each caller
        still gets its own result, after the commit. A body that raises rolls the shared
        transaction back, and then each write runs alone, so that a failure stays its own.
        SQLite already commits every queued write in groups.
        """
        call = _bound(fn, args, kwargs)
        if self._pg_threads is None:
            return cast(T, await self._transact(False, call))
        return cast(T, await self._write_of_run(run_id, call, None))

    async def write_batched(
        self, run_id: str, fn: Callable[[Connection, list[Item]], list[T]], item: Item
    ) -> T:
        """`write_for_run` of `fn(conn, [item])`, merged with the other such writes queued with it.

        `fn` records several items of run `run_id` in one transaction body and returns one
        result per item, in order. The writes of the same run and the same `fn` that commit in
        one group (SQLite: queued behind the writer thread; PostgreSQL: behind a write of the
        run in flight) become one call of `fn` with all their items: a fan-out's completions
        lock the run, release what they made ready, claim and append their events once, not
        once each. If that call raises, each item is written again on its own, in the same
        group, so that a failure stays its own.
        """
        batch = _Batch((run_id, fn), fn, item)
        if self._pg_threads is None:
            return cast(T, await self._transact(False, batch.alone, batch))
        return cast(T, await self._write_of_run(run_id, batch.alone, batch))

    async def _write_of_run(
        self, run_id: str, call: Callable[[Connection], Any], batch: _Batch | None
    ) -> Any:
        """PostgreSQL: commit `call`, with the writes of `run_id` that arrive in the same turn of the
        event loop, or with the group waiting for the one in flight."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting = self._run_writes.get(run_id)
        if waiting is not None:
            waiting.append(_RunWrite(call, done, batch))
            return await done
        joined: list[_RunWrite] = []
        self._run_writes[run_id] = joined
        try:
            # The branches of a fan-out handed off together end in the same turn of the loop:
            # without this yield the first went alone and the others waited for it (a fan-out
            # committed its ends in alternating groups of 1 and 7).
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self._commit_waiting_writes(run_id)  # those that joined still commit
            raise
        if joined:
            joined.insert(0, _RunWrite(call, done, batch))
            self._commit_waiting_writes(run_id)
            return await done
        try:
            return await self._transact(False, call)
        finally:
            self._commit_waiting_writes(run_id)

    def _commit_waiting_writes(self, run_id: str) -> None:
        """After a write of `run_id`: commit the writes that queued behind it, as one group."""
        group = self._run_writes.pop(run_id, [])
        if not group:
            return
        self._run_writes[run_id] = []  # later writes of the run wait for this group
        task = asyncio.get_running_loop().create_task(self._commit_run_group(run_id, group))
        self._group_tasks.add(task)
        task.add_done_callback(self._group_tasks.discard)

    async def _commit_run_group(self, run_id: str, group: list[_RunWrite]) -> None:
        try:
            await self._commit_together(group)
        finally:
            self._commit_waiting_writes(run_id)

    async def _commit_together(self, group: list[_RunWrite]) -> None:
        assert self._pg_threads is not None
        loop = asyncio.get_running_loop()
        units = _merged_units([write.batch for write in group])
        bodies = [_collecting(_unit_call(group, unit)) for unit in units]
        try:
            committed = await _uninterrupted(
                loop.run_in_executor(self._pg_threads, _commit_bodies, self.engine, self.dialect, bodies)
            )
        except Exception as error:  # BEGIN or COMMIT failed: whether it committed is unknown
            failure = self._translated(error) if isinstance(error, exc.DBAPIError) else error
            for write in group:
                _settle(write.done, False, failure)
            return
        if committed is None:  # a body raised and nothing was written: each write on its own
            for write in group:
                try:
                    _settle(write.done, True, await self._transact(False, write.call))
                except Exception as error:
                    _settle(write.done, False, error)
            return
        outcomes, together = committed
        self._after_commit(together)
        for unit, outcome in zip(units, outcomes, strict=True):
            results = outcome.result if len(unit) > 1 else [outcome.result]
            for index, result in zip(unit, results, strict=True):
                _settle(group[index].done, True, result)

    def _after_commit(self, outcome: _Outcome) -> None:
        if outcome.ended:
            self._runs_ended(outcome.ended)
        if outcome.appended:
            # Before the wake-up: a stream woken by this commit finds its events here.
            self.recent_events.publish(outcome.appended)
        if outcome.topics:
            self.topics.notify(outcome.topics)

    def _translated(self, error: exc.DBAPIError) -> Exception:
        if _is_unreachable(error):
            return StoreUnavailable(
                f"cannot reach the database at {redact(self.url)}: {_first_line(error)}. "
                "Check that it is running and that --database / BATON_DATABASE_URL points at it."
            )
        return StoreError(f"the database refused the operation: {_first_line(error)}")

    async def _transaction(
        self, read_only: bool, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return cast(T, await self._transact(read_only, _bound(fn, args, kwargs)))

    async def _transact(
        self,
        read_only: bool,
        call: Callable[[Connection], Any],
        batch: _Batch | None = None,
        *,
        short: bool = False,
    ) -> Any:
        """`call` in one transaction, retried on contention; `batch`: it may be merged (SQLite).

        `short`: a few statements, which SQLite may commit on the event loop's thread.
        """
        body = _notifying(_collecting(call), self.dialect)
        delay = 0.002
        for attempt in range(_BUSY_RETRIES + 1):
            try:
                outcome = await _uninterrupted(self._start_attempt(read_only, body, batch, short))
                self._after_commit(outcome)
                return outcome.result
            except exc.DBAPIError as error:
                if attempt < _BUSY_RETRIES and _is_contention(error):
                    self.busy_retries += 1
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.25)
                    continue
                raise self._translated(error) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_attempt(
        self,
        read_only: bool,
        body: Callable[[Connection], _Outcome],
        batch: _Batch | None = None,
        short: bool = False,
    ) -> asyncio.Future[_Outcome]:
        """Start one transaction attempt on its thread; the future settles once it has ended."""
        loop = asyncio.get_running_loop()
        if self._pg_threads is not None:
            engine = self._read_engine if read_only else self.engine
            return loop.run_in_executor(self._pg_threads, _sync_attempt, engine, body)
        if read_only:
            return loop.run_in_executor(self._readers, _sync_attempt, self._read_engine, body)
        done: asyncio.Future[_Outcome] = loop.create_future()
        with self._writes_lock:
            short = short or batch is not None  # a step's end is short
            self._queued_writes.append(_QueuedWrite(body, done, loop, batch, short))
            start = not self._writer_busy
            self._writer_busy = True
        if start and short:
            # It waits for the end of this turn of the event loop, so that those queued in the
            # same turn (a fan-out's branches) join its group.
            loop.call_soon(self._write_on_loop)
        elif start:
            self._start_writer()
        return done

    def _write_on_loop(self) -> None:
        """Commit the queued short writes on this event loop's thread, not the writer thread's.

        Steps' ends and workers' claims are short transactions that steps wait for: in a chain,
        the two thread hops around each (hand-off to the writer, wake-up of the loop) were a
        fifth of a SQLite step (bench/engine.py, issue 7), while the loop had nothing else to do
        than wait. The loop never waits here on another process's write lock: the transaction
        starts without SQLite's busy timeout, and if the lock is taken the writes go to the
        writer thread, which waits for it. Any other write queued with them (a long one, a
        run's creation) sends the whole queue to the writer thread as well.
        """
        with self._writes_lock:
            group = self._queued_writes[:_GROUP_COMMIT_MAX]
            if not group or self._closing or any(not write.short for write in group):
                group = []
            del self._queued_writes[: len(group)]
        if group:
            outcomes = self._commit_without_waiting(group)
            if outcomes is None:  # the write lock is taken: the writer thread waits for it
                with self._writes_lock:
                    self._queued_writes[:0] = group
            else:
                _settle_group(group, outcomes, asyncio.get_running_loop())
        with self._writes_lock:
            if not self._queued_writes:
                self._writer_busy = False
                return
        self._start_writer()

    def _commit_without_waiting(self, group: list[_QueuedWrite]) -> list[tuple[bool, Any]] | None:
        """`_commit_group` on the writer's connection; None when SQLite's write lock is taken."""
        try:
            if self._write_conn is None:
                self._write_conn = self.engine.connect()
            conn = self._write_conn
            conn.info[_BEGIN_WITHOUT_WAITING] = True
            try:
                return _commit_group(conn, group, self.dialect)
            finally:
                conn.info.pop(_BEGIN_WITHOUT_WAITING, None)
        except _WriteLockTaken:
            return None
        except Exception as error:  # the group's BEGIN or COMMIT failed: every write failed
            if isinstance(error, exc.DBAPIError):
                self._close_write_conn()  # the next group starts on a fresh connection
            return [(False, error)] * len(group)

    def _start_writer(self) -> None:
        try:
            # `submit`, not `run_in_executor`: each write's future is settled by the writer
            # thread itself, and the executor's own future would only wake the loop again.
            self._writer.submit(self._write_queued, self.engine)
        except RuntimeError as error:  # the database is closed: nothing will ever write these
            with self._writes_lock:
                dropped, self._queued_writes = self._queued_writes, []
                self._writer_busy = False
            for write in dropped:
                _settle(write.done, False, error)

    # --- wake-ups --------------------------------------------------------------------------

    async def wait(self, topics: Iterable[str], timeout: float, *, since: int | None = None) -> bool:
        """Sleep until one of `topics` changes (in this process, or by NOTIFY from another).

        `since`: a `topics.version(...)` taken before the caller last looked; changes since then wake at once.
        """
        self._ensure_listener()
        return await self.topics.wait(topics, timeout, since=since)

    def _ensure_listener(self) -> None:
        if self.dialect.name != "postgresql" or self._listener is not None:
            return
        if self.receive_events:
            self.recent_events.track_frontier = True
            listening = self.dialect.listen(self.url, self._heard_topics, self._heard_events)
        else:
            listening = self.dialect.listen(self.url, self.topics.notify)
        self._listener = asyncio.get_running_loop().create_task(listening, name="baton-listen")

    def _heard_topics(self, names: list[str]) -> None:
        """A commit of another process changed these topics (receiving events: see `_heard_events`)."""
        if "*" in names:
            self.recent_events.forget_frontiers()  # a reconnect, or too many topics to name
        elif EVENTS_SENT not in names:
            for name in names:
                if name.startswith("run:"):
                    self.recent_events.frontier_unknown(name[4:])
        self.topics.notify(names)

    def _heard_events(self, payload: str) -> None:
        """Another process committed these events: keep them for the streams, then wake those."""
        try:
            heard, through = decode_from_notify(payload)
        except ValueError as error:
            logger.warning(
                "ignored a malformed events notification: %s", error, extra={"action": "store.bad_notify"}
            )
            return
        self.recent_events.publish(heard)
        for run_id, seq in through.items():
            self.recent_events.heard_through(run_id, seq)
        self.topics.notify({f"run:{run_id}" for run_id in through})

    def _write_queued(self, engine: Engine) -> None:
        """The writer thread: commit queued write transactions in groups until none are left."""
        while True:
            with self._writes_lock:
                group = self._queued_writes[:_GROUP_COMMIT_MAX]
                del self._queued_writes[: len(group)]
                if not group:
                    self._writer_busy = False
                    return
            try:
                if self._write_conn is None:
                    self._write_conn = engine.connect()
                outcomes = _commit_group(self._write_conn, group, self.dialect)
            except BaseException as error:  # the group's BEGIN or COMMIT failed: every write failed
                outcomes = [(False, error)] * len(group)
                if isinstance(error, exc.DBAPIError):
                    self._close_write_conn()  # the next group starts on a fresh connection
            _settle_group(group, outcomes, None)

    def _close_write_conn(self) -> None:
        """On the writer thread: drop its connection (after a failure, or when the database closes)."""
        conn, self._write_conn = self._write_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


_GROUP_COMMIT_MAX = 64
#: what one transaction leaves in `Connection.info` for the code around it
_TRANSACTION_MARKERS = (
    "baton_topics",
    "baton_tx",
    "baton_now",
    "baton_queued",
    "baton_appended",
    "baton_ended_runs",
)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one transaction body returned and left for the code around the transaction."""

    result: Any
    topics: set[str]
    appended: list[RecentEvent]
    ended: list[Any]


def _bound(fn: Callable[..., T], args: Any, kwargs: Any) -> Callable[[Connection], T]:
    """`fn(conn, *args, **kwargs)` as a function of the connection alone."""
    if not args and not kwargs:
        return fn
    return lambda conn: fn(conn, *args, **kwargs)


def _collecting(fn: Callable[[Connection], Any]) -> Callable[[Connection], _Outcome]:
    """`fn` as a transaction body that also collects the markers it leaves in `Connection.info`."""

    def body(conn: Connection) -> _Outcome:
        # A retried transaction (or the next body of a group) must not reuse the clock or the
        # markers of the one before.
        for key in _TRANSACTION_MARKERS:
            conn.info.pop(key, None)
        result = fn(conn)
        outcome = _Outcome(
            result,
            conn.info.pop("baton_topics", set()),
            conn.info.pop("baton_appended", []),
            conn.info.pop("baton_ended_runs", []),
        )
        for key in _TRANSACTION_MARKERS:
            conn.info.pop(key, None)
        return outcome

    return body


def _notifying(
    collect: Callable[[Connection], _Outcome], dialect: Dialect
) -> Callable[[Connection], _Outcome]:
    """A write body that also tells other processes, at its commit, what it changed."""

    def body(conn: Connection) -> _Outcome:
        outcome = collect(conn)
        if outcome.topics:
            dialect.notify(conn, outcome.topics, outcome.appended)
        return outcome

    return body


@dataclass(frozen=True, slots=True)
class _Batch:
    """A write that may be merged with others of the same `key` (`Database.write_batched`)."""

    key: tuple[str, Any]
    fn: Callable[[Connection, list[Any]], list[Any]]
    item: Any

    def alone(self, conn: Connection) -> Any:
        [result] = _merged_call([self])(conn)
        return result


def _merged_call(batches: list[_Batch]) -> Callable[[Connection], list[Any]]:
    """One call of the batches' function with all their items; one result per item."""
    fn, items = batches[0].fn, [batch.item for batch in batches]

    def call(conn: Connection) -> list[Any]:
        results = fn(conn, items)
        if len(results) != len(items):
            raise ValueError(f"{fn.__qualname__} returned {len(results)} results for {len(items)} items")
        return results

    return call


def _merged_units(batches: list[_Batch | None]) -> list[list[int]]:
    """The writes of a group as the units it commits: indexes of writes merged into one call.

    A write that cannot be merged is a unit of its own; those of one key form one unit, at the
    place of the first of them. The writes of a group were all queued before any of them was
    acknowledged, so any order among them is one they could have committed in.
    """
    units: list[list[int]] = []
    by_key: dict[tuple[str, Any], list[int]] = {}
    for index, batch in enumerate(batches):
        if batch is None:
            units.append([index])
            continue
        unit = by_key.get(batch.key)
        if unit is None:
            unit = by_key[batch.key] = []
            units.append(unit)
        unit.append(index)
    return units


def _split(outcome: _Outcome, count: int) -> list[_Outcome]:
    """A merged unit's outcome as one per write; the first carries what the unit left."""
    results = outcome.result
    assert len(results) == count
    first = _Outcome(results[0], outcome.topics, outcome.appended, outcome.ended)
    return [first] + [_Outcome(result, set(), [], []) for result in results[1:]]


@dataclass(frozen=True, slots=True)
class _RunWrite:
    """A write of one run waiting for the one in flight (`Database.write_for_run`)."""

    call: Callable[[Connection], Any]
    done: asyncio.Future[Any]
    batch: _Batch | None = None


def _unit_call(group: list[_RunWrite], unit: list[int]) -> Callable[[Connection], Any]:
    if len(unit) == 1:
        return group[unit[0]].call
    return _merged_call([cast(_Batch, group[index].batch) for index in unit])


def _commit_bodies(
    engine: Engine, dialect: Dialect, bodies: list[Callable[[Connection], _Outcome]]
) -> tuple[list[_Outcome], _Outcome] | None:
    """Run the bodies back to back in one transaction, with one notification and one commit.

    Returns each body's outcome and what they left together; None when a body raised: the
    transaction was rolled back, nothing of any body was written.
    """
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            outcomes = [body(conn) for body in bodies]
            together = _Outcome(
                None,
                {topic for outcome in outcomes for topic in outcome.topics},
                [event for outcome in outcomes for event in outcome.appended],
                [row for outcome in outcomes for row in outcome.ended],
            )
            if together.topics:
                dialect.notify(conn, together.topics, together.appended)
        except Exception:
            transaction.rollback()
            return None
        transaction.commit()
    return outcomes, together


@dataclass(frozen=True, slots=True)
class _QueuedWrite:
    body: Callable[[Connection], _Outcome]
    done: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    batch: _Batch | None = None
    #: a few statements: it may commit on the event loop's thread (`Database._write_on_loop`)
    short: bool = False


def _commit_group(conn: Connection, writes: list[_QueuedWrite], dialect: Dialect) -> list[tuple[bool, Any]]:
    """Run queued writes in one transaction, each unit in a savepoint when there are several; one commit.

    Writes merged into one unit (`_merged_units`) run as one call; if it raises, each of them
    runs again on its own, so that only the one at fault fails.
    """
    outcomes: list[tuple[bool, Any]] = [(False, None)] * len(writes)
    with conn.begin():
        if len(writes) == 1:
            return [(True, writes[0].body(conn))]
        for unit in _merged_units([write.batch for write in writes]):
            if len(unit) > 1:
                batches = [cast(_Batch, writes[index].batch) for index in unit]
                ok, merged = _in_savepoint(conn, _notifying(_collecting(_merged_call(batches)), dialect))
                if ok:
                    for index, outcome in zip(unit, _split(merged, len(unit)), strict=True):
                        outcomes[index] = (True, outcome)
                    continue
            for index in unit:
                outcomes[index] = _in_savepoint(conn, writes[index].body)
    return outcomes


def _in_savepoint(conn: Connection, body: Callable[[Connection], Any]) -> tuple[bool, Any]:
    direct.execute_sql(conn, "SAVEPOINT baton_write")
    try:
        done: tuple[bool, Any] = (True, body(conn))
    except Exception as error:
        direct.execute_sql(conn, "ROLLBACK TO baton_write")
        done = (False, error)
    direct.execute_sql(conn, "RELEASE baton_write")
    return done


def _settle_group(
    group: list[_QueuedWrite], outcomes: list[tuple[bool, Any]], here: asyncio.AbstractEventLoop | None
) -> None:
    """Settle each write's future on its own loop (`here`: the loop of this thread, settled now)."""
    # One wake-up per loop for the whole group: its writers resume in the same turn of the
    # loop, and the successors they hand off end, and queue, together.
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for write, (ok, value) in zip(group, outcomes, strict=True):
        by_loop.setdefault(write.loop, []).append((write.done, ok, value))
    for loop, settled in by_loop.items():
        if loop is here:
            _settle_all(settled)
            continue
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for these
            loop.call_soon_threadsafe(_settle_all, settled)


def _settle_all(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for done, ok, value in settled:
        _settle(done, ok, value)


def _settle(done: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if done.done():
        return
    if ok:
        done.set_result(value)
    else:
        done.set_exception(value)


def _sync_attempt(engine: Engine, body: Callable[[Connection], T]) -> T:
    with engine.connect() as conn, conn.begin():
        return body(conn)


async def _uninterrupted(attempt: asyncio.Future[T]) -> T:
    """Wait for one transaction attempt to end even if the caller is cancelled meanwhile.

    A cancellation (a request whose client went away, a step task the worker stops, a flusher
    being shut down) must not leave a transaction half-way, nor its caller believing it did not
    happen: the attempt runs on its thread to its commit or rollback, the caller waits for that,
    then gets its cancellation. The attempt is a future, not a task: a task per transaction
    cost a turn of the event loop before the write was even queued.
    """
    cancelled = False
    while not attempt.done():
        try:
            await asyncio.wait((attempt,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not attempt.cancelled():
            attempt.exception()  # retrieve it: nobody is left to read it, and asyncio would warn
        raise asyncio.CancelledError
    return attempt.result()


def _sqlite_engine(url: str, *, read_only: bool) -> Engine:
    engine = create_engine(
        sync_url(url), connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )
    _install_sqlite_discipline(engine, read_only=read_only)
    return engine


def _create_engine(url: str, dialect: Dialect) -> Engine:
    if dialect.name == "sqlite":
        return _sqlite_engine(url, read_only=False)
    # A frozen or partitioned process must not keep its row locks (and so every reaper) hostage:
    # the server ends a session idle inside a transaction for 5 s (RELIABILITY.md R4). A session
    # whose peer vanished in the middle of a statement is not idle: the server's TCP keepalives
    # find it gone within about 11 s (5 s quiet, then 3 probes 2 s apart) and end it too.
    options = " ".join(f"-c {name}={value}" for name, value in PG_SESSION_SETTINGS.items())
    # psycopg's synchronous driver, each transaction on a thread of `Database._pg_threads`: a
    # statement is one blocking round trip, without the event-loop hops and greenlet switches of
    # the async adapter (most of a step's CPU).
    engine = create_engine(
        url,
        pool_size=PG_POOL_SIZE,
        max_overflow=PG_MAX_OVERFLOW,
        # The connection returned last is handed out next: psycopg prepares a statement on a
        # connection after its fifth run there, so a pool handing out all ten in turn kept most
        # statements unprepared, each parsed and planned again by the server (100-200 us).
        # PostgreSQL fan-out 0.78-0.84 -> 0.69-0.72 ms/step (bench/engine.py, issue 7).
        pool_use_lifo=True,
        connect_args={"connect_timeout": 5, "options": options, **PG_CLIENT_KEEPALIVES},
    )
    _ping_idle_connections(engine)
    return engine


#: a pooled PostgreSQL connection unused for longer than this is pinged before it is handed out
PG_PING_AFTER_IDLE_S = 1.0


def _ping_idle_connections(engine: Engine) -> None:
    """Ping a connection on check-out only when it sat idle in the pool for a while.

    The ping finds connections that died with a database restart before a transaction sends
    anything on them. A ping on every check-out (`pool_pre_ping`) is one more round trip per
    transaction, about 7 % of a no-op step (bench/engine.py, issue 7); a connection returned a
    moment ago has just answered, and a restart in that moment fails its next transaction
    exactly as it could fail right after any ping.
    """

    @event.listens_for(engine, "checkin")
    def on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["baton_returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("baton_returned_at")
        if returned is None or time.monotonic() - returned <= PG_PING_AFTER_IDLE_S:
            return  # new (it has just connected), or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as error:
            if engine.dialect.is_disconnect(error, dbapi_conn, None):
                raise exc.DisconnectionError(f"a pooled connection is gone: {error}") from error
            raise


#: what every Baton session sets on the PostgreSQL server
PG_SESSION_SETTINGS = {
    "idle_in_transaction_session_timeout": "5000",
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}
#: libpq's keepalives on this side: a statement waiting on a server that vanished fails in about
#: 11 s instead of waiting for the operating system's two hours
PG_CLIENT_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


def _pool_setting(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise UsageError(f"{name} must be a whole number of connections, not {raw!r}")
    return int(raw)


#: connections a process keeps open to PostgreSQL, and how many more it may open in a burst; every
#: process (API server, worker) has its own pool, so N processes may hold N x (size + overflow)
#: connections: keep that under the server's max_connections. No burst by default: an overflow
#: connection is closed as soon as it is returned, so under steady load the pool opened and
#: closed connections all the time (a new backend process each), and live streams on PostgreSQL
#: waited 0.4 s at the median for it; with 10 connections kept, 85 ms (bench/stream.py, issue 7).
PG_POOL_SIZE = _pool_setting("BATON_PG_POOL_SIZE", 10)
PG_MAX_OVERFLOW = _pool_setting("BATON_PG_MAX_OVERFLOW", 0)


def _install_sqlite_discipline(engine: Engine, *, read_only: bool) -> None:
    """WAL, busy timeout, foreign keys, synchronous=FULL; BEGIN IMMEDIATE for every write.

    pysqlite's own transaction handling is switched off so that SQLAlchemy's `begin` decides
    how a transaction starts: a deferred BEGIN that later writes can fail with SQLITE_BUSY
    without honouring busy_timeout, which IMMEDIATE avoids. Reads use their own connections,
    made query_only, so a write slipped into a read transaction fails loudly instead of taking
    the write lock late, where busy_timeout cannot help.
    """

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        if read_only:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        # On the cursor: through `exec_driver_sql` this cost a tenth of a no-op step's writer time.
        without_waiting = not read_only and conn.info.get(_BEGIN_WITHOUT_WAITING, False)
        if without_waiting:
            direct.execute_sql(conn, "PRAGMA busy_timeout=0")
        try:
            direct.execute_sql(conn, "BEGIN" if read_only else "BEGIN IMMEDIATE")
        except exc.DBAPIError as error:
            if without_waiting and _is_contention(error):
                raise _WriteLockTaken() from error
            raise
        finally:
            if without_waiting:
                direct.execute_sql(conn, f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


#: how long a SQLite write waits for another process's write lock before it fails (then retried)
SQLITE_BUSY_TIMEOUT_MS = 5000
#: set in a write connection's `info`: its next transaction starts only if the write lock is free
_BEGIN_WITHOUT_WAITING = "baton_begin_without_waiting"


class _WriteLockTaken(Exception):
    """Another connection holds SQLite's write lock, and this transaction was not to wait for it."""


def _is_contention(error: exc.DBAPIError) -> bool:
    message = str(error.orig).lower() if error.orig is not None else str(error).lower()
    if (
        "database is locked" in message
        or "database is busy" in message
        or "database table is locked" in message
    ):
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    return sqlstate in {"40001", "40P01", "55P03"}


def _is_unreachable(error: exc.DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    message = str(error.orig).lower() if error.orig is not None else ""
    return any(
        marker in message
        for marker in (
            "connection refused",
            "could not connect",
            "unable to open database",
            "connection failed",
            "timeout expired",
            "server closed",
        )
    )


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
