"""API tokens: made, hashed and checked here (shared by the API, the dashboard and the CLI)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "bt_"


def new_token() -> str:
    """A fresh secret: `bt_` and 43 URL-safe characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_display_prefix(token: str) -> str:
    return token[:10]


def hashes_match(stored_hash: str, token: str) -> bool:
    """Constant-time comparison of a stored hash with a presented token."""
    return hmac.compare_digest(stored_hash, hash_token(token))


def sign(value: str, secret: str) -> str:
    mac = hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()
    return f"{value}.{mac}"


def unsign(signed: str, secret: str) -> str | None:
    value, _, mac = signed.rpartition(".")
    if not value:
        return None
    expected = hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()
    return value if hmac.compare_digest(expected, mac) else None
