"""/v1/projects, members and /v1/tokens: tenancy administration."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import Connection

from baton.api.dependencies import Caller, Principal, Rt
from baton.api.schemas import (
    MemberIn,
    MemberOut,
    PolicyBody,
    ProjectCreate,
    ProjectOut,
    TokenCreate,
    TokenCreated,
    TokenOut,
    iso,
    iso_required,
)
from baton.auth import hash_token, new_token, token_display_prefix
from baton.domain.errors import Conflict, Forbidden, NotFound
from baton.domain.policy import parse_layer
from baton.store import tenancy as tenancy_store
from baton.store.clock import db_now

router = APIRouter(prefix="/v1", tags=["tenancy"])


def _project_out(row: Any, who: Principal) -> ProjectOut:
    return ProjectOut(
        id=row.id,
        name=row.name,
        policy=row.policy or {},
        role=who.roles.get(row.id),
        created_at=iso_required(row.created_at),
    )


def _require(who: Principal, project_id: str, role: str) -> None:
    if project_id not in who.roles:
        raise NotFound(f"project {project_id} not found")
    if not who.can(project_id, role):
        raise Forbidden(f"your role in project {project_id} is {who.roles[project_id]}; this needs {role}")


@router.get("/projects", response_model=list[ProjectOut], operation_id="list_projects")
async def list_projects(who: Caller, rt: Rt) -> list[ProjectOut]:
    rows = await rt.db.read(tenancy_store.list_projects, who.project_ids)
    return [_project_out(r, who) for r in rows]


@router.post("/projects", status_code=201, response_model=ProjectOut, operation_id="create_project")
async def create_project(body: ProjectCreate, who: Caller, rt: Rt) -> ProjectOut:
    """Server admins create projects and become their admin."""
    if not who.is_admin:
        raise Forbidden("only a server admin can create projects")
    policy = parse_layer(body.policy, layer="project")

    def create(conn: Connection) -> Any:
        if tenancy_store.get_project(conn, body.id) is not None:
            raise Conflict(f"project {body.id} already exists")
        tenancy_store.create_project(conn, body.id, body.name or body.id, policy)
        tenancy_store.set_membership(conn, body.id, who.user_id, "admin")
        return tenancy_store.get_project(conn, body.id)

    row = await rt.db.write(create)
    return _project_out(
        row, Principal(who.user_id, who.user_name, who.token_id, who.is_admin, {body.id: "admin"})
    )


@router.get("/projects/{project_id}", response_model=ProjectOut, operation_id="get_project")
async def get_project(project_id: str, who: Caller, rt: Rt) -> ProjectOut:
    _require(who, project_id, "viewer")
    row = await rt.db.read(tenancy_store.get_project, project_id)
    if row is None:
        raise NotFound(f"project {project_id} not found")
    return _project_out(row, who)


@router.put("/projects/{project_id}/policy", response_model=ProjectOut, operation_id="set_project_policy")
async def set_project_policy(project_id: str, body: PolicyBody, who: Caller, rt: Rt) -> ProjectOut:
    """Project admins set the project's policy layer (it applies to runs created afterwards)."""
    _require(who, project_id, "admin")
    policy = parse_layer(body.policy, layer="project")

    def update(conn: Connection) -> Any:
        tenancy_store.set_project_policy(conn, project_id, policy)
        return tenancy_store.get_project(conn, project_id)

    return _project_out(await rt.db.write(update), who)


@router.get("/projects/{project_id}/members", response_model=list[MemberOut], operation_id="list_members")
async def list_members(project_id: str, who: Caller, rt: Rt) -> list[MemberOut]:
    _require(who, project_id, "viewer")
    rows = await rt.db.read(tenancy_store.list_members, project_id)
    return [
        MemberOut(user_id=r.id, user=r.name, role=r.role, created_at=iso_required(r.created_at)) for r in rows
    ]


@router.post("/projects/{project_id}/members", response_model=MemberOut, operation_id="set_member")
async def set_member(project_id: str, body: MemberIn, who: Caller, rt: Rt) -> MemberOut:
    """Project admins add a user (made on first mention) or change a member's role."""
    _require(who, project_id, "admin")

    def upsert(conn: Connection) -> Any:
        user = tenancy_store.get_user_by_name(conn, body.user)
        user_id = user.id if user is not None else tenancy_store.create_user(conn, body.user)
        tenancy_store.set_membership(conn, project_id, user_id, body.role)
        return next(r for r in tenancy_store.list_members(conn, project_id) if r.id == user_id)

    row = await rt.db.write(upsert)
    return MemberOut(user_id=row.id, user=row.name, role=row.role, created_at=iso_required(row.created_at))


def _token_out(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "project_id": row.project_id,
        "created_at": iso(row.created_at),
        "last_used_at": iso(row.last_used_at),
        "expires_at": iso(row.expires_at),
        "revoked_at": iso(row.revoked_at),
    }


@router.get("/tokens", response_model=list[TokenOut], operation_id="list_tokens")
async def list_tokens(who: Caller, rt: Rt) -> list[TokenOut]:
    """The caller's own tokens (never their secrets); a project token sees its project's only."""
    rows = await rt.db.read(tenancy_store.list_tokens, who.user_id)
    return [TokenOut(**_token_out(r)) for r in rows if _token_visible(who, r)]


def _token_visible(who: Principal, row: Any) -> bool:
    """A project token is limited to its project: it neither sees nor mints wider tokens."""
    return who.token_project is None or row.project_id == who.token_project


@router.post("/tokens", status_code=201, response_model=TokenCreated, operation_id="create_token")
async def create_token(body: TokenCreate, who: Caller, rt: Rt) -> TokenCreated:
    """A new token for the caller, optionally limited to one of its projects and in time."""
    if body.project_id is not None and body.project_id not in who.roles:
        raise NotFound(f"project {body.project_id} not found")
    # A project token makes tokens of its own project only (else it could mint a user-wide one).
    project_id = body.project_id if who.token_project is None else who.token_project
    secret = new_token()

    def create(conn: Connection) -> Any:
        expires = db_now(conn) + body.expires_in_s if body.expires_in_s else None
        token_id = tenancy_store.insert_token(
            conn,
            who.user_id,
            body.name,
            hash_token(secret),
            token_display_prefix(secret),
            project_id=project_id,
            expires_at=expires,
        )
        return tenancy_store.get_token(conn, token_id)

    row = await rt.db.write(create)
    return TokenCreated(token=secret, **_token_out(row))


@router.delete("/tokens/{token_id}", response_model=TokenOut, operation_id="revoke_token")
async def revoke_token(token_id: str, who: Caller, rt: Rt) -> TokenOut:
    """Revoke one of the caller's tokens (server admins may revoke any); it stops working at once."""

    def revoke(conn: Connection) -> Any:
        row = tenancy_store.get_token(conn, token_id)
        if row is None or (row.user_id != who.user_id and not who.is_admin) or not _token_visible(who, row):
            raise NotFound(f"token {token_id} not found")
        tenancy_store.revoke_token(conn, token_id)
        return tenancy_store.get_token(conn, token_id)

    return TokenOut(**_token_out(await rt.db.write(revoke)))
