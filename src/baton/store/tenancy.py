"""Users, projects, memberships and API tokens (stored as hashes only)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from baton.domain.ids import new_id
from baton.store.clock import db_now
from baton.store.schema import memberships, projects, tokens, users

ROLES = ("viewer", "member", "admin")


def count_users(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(users)).scalar_one())


def create_user(conn: Connection, name: str, *, is_admin: bool = False) -> str:
    user_id = new_id("usr")
    conn.execute(insert(users).values(id=user_id, name=name, is_admin=is_admin, created_at=db_now(conn)))
    return user_id


def get_user(conn: Connection, user_id: str) -> Row[Any] | None:
    return conn.execute(select(users).where(users.c.id == user_id)).first()


def get_user_by_name(conn: Connection, name: str) -> Row[Any] | None:
    return conn.execute(select(users).where(users.c.name == name)).first()


def create_project(
    conn: Connection, project_id: str, name: str, policy: dict[str, Any] | None = None
) -> None:
    conn.execute(
        insert(projects).values(id=project_id, name=name, policy=policy or {}, created_at=db_now(conn))
    )


def get_project(conn: Connection, project_id: str) -> Row[Any] | None:
    return conn.execute(select(projects).where(projects.c.id == project_id)).first()


def set_project_policy(conn: Connection, project_id: str, policy: dict[str, Any]) -> None:
    conn.execute(update(projects).where(projects.c.id == project_id).values(policy=policy))


def list_projects(conn: Connection, project_ids: list[str] | None) -> list[Row[Any]]:
    query = select(projects).order_by(projects.c.id)
    if project_ids is not None:
        query = query.where(projects.c.id.in_(project_ids))
    return list(conn.execute(query))


def set_membership(conn: Connection, project_id: str, user_id: str, role: str) -> None:
    existing = conn.execute(
        select(memberships.c.role).where(
            memberships.c.project_id == project_id, memberships.c.user_id == user_id
        )
    ).first()
    if existing is None:
        conn.execute(
            insert(memberships).values(
                project_id=project_id, user_id=user_id, role=role, created_at=db_now(conn)
            )
        )
    else:
        conn.execute(
            update(memberships)
            .where(memberships.c.project_id == project_id, memberships.c.user_id == user_id)
            .values(role=role)
        )


def roles_of(conn: Connection, user_id: str) -> dict[str, str]:
    """The user's role in each project it belongs to."""
    rows = conn.execute(
        select(memberships.c.project_id, memberships.c.role).where(memberships.c.user_id == user_id)
    )
    return {project_id: role for project_id, role in rows}


def list_members(conn: Connection, project_id: str) -> list[Row[Any]]:
    return list(
        conn.execute(
            select(users.c.id, users.c.name, memberships.c.role, memberships.c.created_at)
            .join(memberships, memberships.c.user_id == users.c.id)
            .where(memberships.c.project_id == project_id)
            .order_by(users.c.name)
        )
    )


def insert_token(
    conn: Connection,
    user_id: str,
    name: str,
    token_hash: str,
    prefix: str,
    *,
    project_id: str | None = None,
    expires_at: float | None = None,
) -> str:
    token_id = new_id("tok")
    conn.execute(
        insert(tokens).values(
            id=token_id,
            user_id=user_id,
            name=name,
            token_hash=token_hash,
            prefix=prefix,
            project_id=project_id,
            created_at=db_now(conn),
            expires_at=expires_at,
        )
    )
    return token_id


def find_token(conn: Connection, token_hash: str) -> Row[Any] | None:
    """The token with this hash and its user, if it is neither revoked nor expired."""
    now = db_now(conn)
    return conn.execute(
        select(tokens, users.c.name.label("user_name"), users.c.is_admin)
        .join(users, users.c.id == tokens.c.user_id)
        .where(
            tokens.c.token_hash == token_hash,
            tokens.c.revoked_at.is_(None),
            (tokens.c.expires_at.is_(None)) | (tokens.c.expires_at > now),
        )
    ).first()


def mark_token_used(conn: Connection, token_id: str) -> None:
    conn.execute(update(tokens).where(tokens.c.id == token_id).values(last_used_at=db_now(conn)))


def list_tokens(conn: Connection, user_id: str | None) -> list[Row[Any]]:
    query = select(*[c for c in tokens.c if c.name != "token_hash"]).order_by(tokens.c.created_at)
    if user_id is not None:
        query = query.where(tokens.c.user_id == user_id)
    return list(conn.execute(query))


def revoke_token(conn: Connection, token_id: str) -> Row[Any] | None:
    return conn.execute(
        update(tokens)
        .where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
        .values(revoked_at=db_now(conn))
        .returning(tokens.c.id, tokens.c.user_id)
    ).first()


def get_token(conn: Connection, token_id: str) -> Row[Any] | None:
    return conn.execute(
        select(*[c for c in tokens.c if c.name != "token_hash"]).where(tokens.c.id == token_id)
    ).first()
