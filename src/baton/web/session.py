"""Dashboard sign-in: the login link, a pasted token, sign-out, and who a page's visitor is.

The session is the API token itself, signed with the server secret into the HttpOnly
`baton_session` cookie; the API accepts that cookie as it accepts a bearer token. Writes made
with the cookie must echo the non-HttpOnly `baton_csrf` cookie in the X-Baton-CSRF header
(double submit), which only a script on this origin can read.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import Connection

from baton.auth import hash_token, hashes_match, sign, unsign
from baton.runtime import Runtime
from baton.store import tenancy as tenancy_store

#: the same names the API's `principal` dependency reads (baton.api.dependencies)
SESSION_COOKIE = "baton_session"
CSRF_COOKIE = "baton_csrf"
#: the project the dashboard shows; the switcher sets it
PROJECT_COOKIE = "baton_project"
SESSION_MAX_AGE_S = 30 * 86400

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Viewer:
    """The signed-in person, with the role they hold in each project they can see."""

    user_id: str
    user_name: str
    token_id: str
    is_admin: bool
    roles: dict[str, str] = field(default_factory=dict)

    def sees(self, project_id: str | None, created_by: str | None) -> bool:
        """The API's rule: members see a project's runs; runs outside projects only their owner."""
        if project_id is None:
            return created_by == self.user_id
        return project_id in self.roles

    def project_ids(self) -> list[str]:
        return sorted(self.roles)

    def may_act(self, project_id: str | None, created_by: str | None) -> bool:
        """Confirm, cancel, retry, answer: members and admins (viewers only watch)."""
        if project_id is None:
            return created_by == self.user_id
        return self.roles.get(project_id) in ("member", "admin")


def _lookup(conn: Connection, secret: str) -> Viewer | None:
    # Mirrors baton.api.dependencies._resolve (the web layer does not import the API layer).
    row = tenancy_store.find_token(conn, hash_token(secret))
    if row is None or not hashes_match(row.token_hash, secret):
        return None
    roles = tenancy_store.roles_of(conn, row.user_id)
    if row.project_id is not None:  # a project token sees that one project only
        roles = {row.project_id: roles[row.project_id]} if row.project_id in roles else {}
    return Viewer(
        user_id=row.user_id,
        user_name=row.user_name,
        token_id=row.id,
        is_admin=bool(row.is_admin),
        roles=roles,
    )


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _secret(request: Request) -> str:
    return str(request.app.state.settings.secret)


async def current_viewer(request: Request) -> Viewer | None:
    """The visitor of a page, from the session cookie; None when signed out or the token died."""
    signed = request.cookies.get(SESSION_COOKIE)
    token = unsign(signed, _secret(request)) if signed else None
    if not token:
        return None
    return await _runtime(request).db.read(_lookup, token)


def safe_next(value: str | None) -> str:
    """Only a path on this site: never `//host` or `https://host` (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/"


def _start_session(request: Request, token: str, target: str) -> Response:
    response = RedirectResponse(safe_next(target), status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE,
        sign(token, _secret(request)),
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="lax",
        secure=secure,
        path="/",
    )
    response.set_cookie(
        CSRF_COOKIE,
        secrets.token_urlsafe(24),
        max_age=SESSION_MAX_AGE_S,
        httponly=False,  # the dashboard's script reads it and sends it back as X-Baton-CSRF
        samesite="lax",
        secure=secure,
        path="/",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _sign_in_page(request: Request, *, error: str = "", next_path: str = "/", status: int = 200) -> Response:
    from baton.web.render import render

    return render(
        request,
        "login.html",
        {"error": error, "next_path": safe_next(next_path), "page": "login"},
        viewer=None,
        status=status,
    )


@router.get("/login")
async def login(request: Request, token: str | None = None, next: str | None = None) -> Response:
    """The login link `baton serve` prints signs in directly; without a token, the sign-in form."""
    if token is None:
        return _sign_in_page(request, next_path=next or "/")
    if await _runtime(request).db.read(_lookup, token.strip()) is None:
        return _sign_in_page(
            request,
            error="That sign-in link is not valid: its token is unknown, revoked or expired.",
            next_path=next or "/",
            status=401,
        )
    return _start_session(request, token.strip(), next or "/")


def _same_origin(request: Request) -> bool:
    """A browser names the page a form came from; refuse forms posted from another site."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return origin == f"{request.url.scheme}://{request.url.netloc}"


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", errors="replace")
    return {key: values[0] for key, values in parse_qs(body, keep_blank_values=True).items()}


@router.post("/login")
async def login_with_token(request: Request) -> Response:
    """The pasted token. Knowing the token is the proof, so a forged post gains nothing it lacks."""
    form = await _form(request)
    next_path = form.get("next", "/")
    if not _same_origin(request):
        return _sign_in_page(
            request, error="This form was posted from another site.", next_path=next_path, status=403
        )
    token = form.get("token", "").strip()
    if not token or await _runtime(request).db.read(_lookup, token) is None:
        return _sign_in_page(
            request,
            error="That token is not valid: it is unknown, revoked or expired.",
            next_path=next_path,
            status=401,
        )
    return _start_session(request, token, next_path)


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Sign out: the form carries the CSRF value, so another site cannot sign a visitor out."""
    form = await _form(request)
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not secrets.compare_digest(form.get("csrf", ""), expected):
        return RedirectResponse("/", status_code=303)
    response = RedirectResponse("/login", status_code=303)
    for name in (SESSION_COOKIE, CSRF_COOKIE, PROJECT_COOKIE):
        response.delete_cookie(name, path="/")
    return response


def redirect_to_login(request: Request) -> Response:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = "/login" if path == "/" else f"/login?next={quote(path, safe='/')}"
    return RedirectResponse(target, status_code=303)


def current_project(request: Request, viewer: Viewer) -> str | None:
    """`?project=` if the viewer is in it, else the switcher's cookie, else their first project."""
    for candidate in (request.query_params.get("project"), request.cookies.get(PROJECT_COOKIE)):
        if candidate and candidate in viewer.roles:
            return candidate
    return viewer.project_ids()[0] if viewer.roles else None
