"""First start on an empty database: a `default` project, an admin, and a one-time login token."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from baton.auth import hash_token, new_token, token_display_prefix
from baton.store import tenancy as tenancy_store


@dataclass(frozen=True)
class Bootstrap:
    user_id: str
    token: str


def bootstrap_if_empty(conn: Connection, admin_name: str = "admin") -> Bootstrap | None:
    """Only when there is no user at all; a second start creates nothing."""
    if tenancy_store.count_users(conn) > 0:
        return None
    user_id = tenancy_store.create_user(conn, admin_name, is_admin=True)
    if tenancy_store.get_project(conn, "default") is None:
        tenancy_store.create_project(conn, "default", "Default project", {})
    tenancy_store.set_membership(conn, "default", user_id, "admin")
    secret = new_token()
    tenancy_store.insert_token(conn, user_id, "login", hash_token(secret), token_display_prefix(secret))
    return Bootstrap(user_id=user_id, token=secret)


def create_token_for(
    conn: Connection,
    user_name: str,
    *,
    project_id: str | None,
    name: str,
    admin: bool = False,
    role: str = "member",
) -> str:
    """`baton token create`: a token for a user (made if new), a member of the project if given."""
    user = tenancy_store.get_user_by_name(conn, user_name)
    user_id = user.id if user is not None else tenancy_store.create_user(conn, user_name, is_admin=admin)
    if project_id is not None:
        if tenancy_store.get_project(conn, project_id) is None:
            tenancy_store.create_project(conn, project_id, project_id, {})
        if project_id not in tenancy_store.roles_of(conn, user_id):
            tenancy_store.set_membership(conn, project_id, user_id, role)
    secret = new_token()
    tenancy_store.insert_token(conn, user_id, name, hash_token(secret), token_display_prefix(secret))
    return secret
