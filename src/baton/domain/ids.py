"""Identifiers: sortable run/step/artifact ids and per-process worker identities."""

from __future__ import annotations

import os
import secrets
import socket
import time


def new_id(prefix: str) -> str:
    """A time-sortable id such as `run_0193ab…`: 12 hex digits of milliseconds, 10 random."""
    millis = int(time.time() * 1000)
    return f"{prefix}_{millis:012x}{secrets.token_hex(5)}"


def new_lease_token() -> str:
    return secrets.token_hex(12)


def new_worker_id() -> str:
    """`host:pid:random`: random per process start, so a restarted worker never reuses an identity."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
