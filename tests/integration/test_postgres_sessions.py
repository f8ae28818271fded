"""PostgreSQL sessions: a partitioned or frozen process cannot hold its locks for long.

The settings come from the connection string, so every session of every Baton process has them:
checked here on the server side (what the server will enforce) and on the client socket.
"""

from __future__ import annotations

import asyncio
import socket

import psycopg
import pytest
from sqlalchemy import Connection, text

from baton.store import database as database_module
from baton.store.database import PG_SESSION_SETTINGS, Database

pytestmark = pytest.mark.postgres


async def test_every_session_ends_idle_transactions_and_probes_its_peer(postgres_url: str) -> None:
    db = await Database.open(postgres_url)

    def settings(conn: Connection) -> dict[str, str]:
        shown = {name: str(conn.execute(text(f"SHOW {name}")).scalar_one()) for name in PG_SESSION_SETTINGS}
        raw = conn.connection.dbapi_connection
        assert raw is not None
        sock = socket.socket(fileno=raw.pgconn.socket)  # type: ignore[attr-defined]
        try:
            shown["client SO_KEEPALIVE"] = str(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
            shown["client TCP_KEEPIDLE"] = str(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))
        finally:
            sock.detach()  # the socket is libpq's: do not close it
        return shown

    try:
        shown = await db.read(settings)
    finally:
        await db.close()
    assert shown == {
        "idle_in_transaction_session_timeout": "5s",
        "tcp_keepalives_idle": "5",
        "tcp_keepalives_interval": "2",
        "tcp_keepalives_count": "3",
        "client SO_KEEPALIVE": "1",
        "client TCP_KEEPIDLE": "5",
    }


def _backend_pid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


async def test_a_pooled_connection_that_died_while_idle_is_replaced_before_use(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection idle in the pool longer than PG_PING_AFTER_IDLE_S is pinged on check-out."""
    monkeypatch.setattr(database_module, "PG_PING_AFTER_IDLE_S", 0.2)
    db = await Database.open(postgres_url)
    try:
        first = await db.read(_backend_pid)
        with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as admin:
            # Every pooled session dies, as in a restart of the database.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        await asyncio.sleep(0.3)
        second = await db.read(_backend_pid)  # would fail on the dead session without the ping
        assert second != first
    finally:
        await db.close()


async def test_a_connection_returned_a_moment_ago_is_not_pinged(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ping is a round trip per transaction: a connection in steady use goes without it."""
    db = await Database.open(postgres_url)
    pings: list[int] = []
    real = db.engine.dialect.do_ping

    def counted(dbapi_conn: object) -> bool:
        pings.append(1)
        return bool(real(dbapi_conn))

    monkeypatch.setattr(db.engine.dialect, "do_ping", counted)
    try:
        for _ in range(5):
            await db.read(_backend_pid)
        assert pings == []
        monkeypatch.setattr(database_module, "PG_PING_AFTER_IDLE_S", 0.05)
        await asyncio.sleep(0.1)
        await db.read(_backend_pid)
        assert pings == [1]
    finally:
        await db.close()
