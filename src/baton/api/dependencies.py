"""Who is calling and what they may touch: bearer tokens, session cookies, CSRF, rate limits."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Connection

from baton.api.problems import TooManyRequests
from baton.auth import hash_token, hashes_match, unsign
from baton.domain.errors import Forbidden, NotFound, Unauthorized
from baton.runtime import Runtime
from baton.store import runs as run_store
from baton.store import tenancy as tenancy_store

ROLE_RANK = {"viewer": 0, "member": 1, "admin": 2}
SESSION_COOKIE = "baton_session"
CSRF_COOKIE = "baton_csrf"
CSRF_HEADER = "x-baton-csrf"
#: last-used times are written at most this often per token, not on every request
_LAST_USED_EVERY_S = 60.0


@dataclass(frozen=True)
class Principal:
    """The authenticated caller, with the projects it can see and its role in each."""

    user_id: str
    user_name: str
    token_id: str
    is_admin: bool
    roles: dict[str, str] = field(default_factory=dict)
    #: the one project a project token is limited to; None for a user's own token
    token_project: str | None = None

    def can(self, project_id: str | None, role: str, *, owner: str | None = None) -> bool:
        if project_id is None:
            return owner == self.user_id
        have = self.roles.get(project_id)
        return have is not None and ROLE_RANK[have] >= ROLE_RANK[role]

    @property
    def project_ids(self) -> list[str]:
        return sorted(self.roles)


class RateLimiter:
    """A token bucket per API token, in memory (per process)."""

    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s = per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> None:
        now = time.monotonic()
        level, last = self._buckets.get(key, (float(self.burst), now))
        level = min(float(self.burst), level + (now - last) * self.per_s)
        if level < 1:
            raise TooManyRequests(
                f"more than {self.per_s:g} requests per second for this token; retry shortly"
            )
        self._buckets[key] = (level - 1, now)


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _resolve(conn: Connection, secret: str) -> tuple[Any, dict[str, str]] | None:
    row = tenancy_store.find_token(conn, hash_token(secret))
    if row is None or not hashes_match(row.token_hash, secret):
        return None
    roles = tenancy_store.roles_of(conn, row.user_id)
    if row.project_id is not None:  # a project token sees that one project only
        roles = {row.project_id: roles[row.project_id]} if row.project_id in roles else {}
    return row, roles


async def principal(request: Request) -> Principal:
    """Bearer token first, else the signed session cookie (then writes need the CSRF header)."""
    rt: Runtime = request.app.state.runtime
    header = request.headers.get("authorization", "")
    via_cookie = False
    secret = None
    if header.lower().startswith("bearer "):
        secret = header[7:].strip()
    elif SESSION_COOKIE in request.cookies:
        secret = unsign(request.cookies[SESSION_COOKIE], request.app.state.settings.secret)
        via_cookie = True
    if not secret:
        raise Unauthorized(
            "missing credentials: send 'Authorization: Bearer <token>' (make one with `baton token create`)"
        )
    found = await rt.db.read(_resolve, secret)
    if found is None:
        raise Unauthorized("the token is not valid: it is unknown, revoked or expired")
    row, roles = found
    if via_cookie and request.method not in ("GET", "HEAD", "OPTIONS"):
        if not csrf_matches(request.headers.get(CSRF_HEADER), request.cookies.get(CSRF_COOKIE)):
            raise Forbidden(
                "cookie-authenticated writes need the X-Baton-CSRF header matching the baton_csrf cookie"
            )
    request.app.state.rate_limiter.take(row.id)
    _note_use(request, row.id)
    return Principal(
        user_id=row.user_id,
        user_name=row.user_name,
        token_id=row.id,
        # A project token carries no server-wide powers, even when its user is a server admin.
        is_admin=bool(row.is_admin) and row.project_id is None,
        roles=roles,
        token_project=row.project_id,
    )


def csrf_matches(sent: str | None, expected: str | None) -> bool:
    """The double-submit check, in constant time; an empty value never matches."""
    if not sent or not expected:
        return False
    return hmac.compare_digest(sent.encode(), expected.encode())


def _note_use(request: Request, token_id: str) -> None:
    seen: dict[str, float] = request.app.state.token_last_used
    now = time.monotonic()
    if now - seen.get(token_id, 0.0) >= _LAST_USED_EVERY_S:
        seen[token_id] = now
        request.app.state.background_writes.append(token_id)


Caller = Annotated[Principal, Depends(principal)]
Rt = Annotated[Runtime, Depends(runtime)]


async def visible_run(rt: Runtime, who: Principal, run_id: str, role: str = "viewer") -> Any:
    """The run row if the caller may act on it with `role`; 404 otherwise, never a leak."""
    run = await rt.db.read(run_store.get_run, run_id)
    if run is None or not who.can(run.project_id, "viewer", owner=run.created_by):
        raise NotFound(f"run {run_id} not found")
    if not who.can(run.project_id, role, owner=run.created_by):
        raise Forbidden(f"your role in project {run.project_id} does not allow this; it needs {role}")
    return run
