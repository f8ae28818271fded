"""PostgreSQL sessions: a partitioned or frozen process cannot hold its locks for long.

The settings come from the connection string, so every session of every Baton process has them:
checked here on the server side (what the server will enforce) and on the client socket.
"""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import Connection, text

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
