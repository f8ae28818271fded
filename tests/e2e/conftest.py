"""End-to-end fixtures: a real `baton serve` on a loopback port over SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import Server, make_token, running_server


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    """`baton serve` with one in-process worker on a fresh database (SQLite, then PostgreSQL)."""
    with running_server(database_url, tmp_path) as srv:
        yield srv


@pytest.fixture
def admin_token(server: Server) -> str:
    """An admin of project `p1`."""
    return make_token(server.database_url, "alice", "p1", role="admin")
