"""Server settings from flags and BATON_* environment variables; errors name the variable."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton.domain.errors import UsageError


@dataclass(frozen=True)
class ServerSettings:
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    #: in-process worker loops; 0 makes an API-only replica
    workers: int = 1
    concurrency: int = 8
    lease_s: float = 30.0
    flow_sources: tuple[str, ...] | None = None
    #: signs dashboard cookies; BATON_SECRET, else a random one kept beside the SQLite file
    secret: str = ""
    server_policy: dict[str, Any] = field(default_factory=dict)
    max_body_bytes: int = 1_048_576
    #: requests per second per token, with bursts up to `rate_burst`
    rate_per_s: float = 50.0
    rate_burst: int = 200
    max_streams_per_token: int = 100
    public_url: str | None = None

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


def settings_from_env(**overrides: Any) -> ServerSettings:
    """Flags win over the environment; the environment wins over defaults."""
    env = os.environ
    values: dict[str, Any] = {}
    if env.get("BATON_SERVER_POLICY"):
        try:
            values["server_policy"] = json.loads(env["BATON_SERVER_POLICY"])
        except json.JSONDecodeError as error:
            raise UsageError(f"BATON_SERVER_POLICY is not valid JSON: {error}") from error
    for name, key, cast in (
        ("BATON_MAX_BODY_BYTES", "max_body_bytes", int),
        ("BATON_RATE_PER_S", "rate_per_s", float),
        ("BATON_RATE_BURST", "rate_burst", int),
        ("BATON_MAX_STREAMS_PER_TOKEN", "max_streams_per_token", int),
    ):
        if env.get(name):
            try:
                values[key] = cast(env[name])
            except ValueError as error:
                raise UsageError(f"{name} must be a number, got {env[name]!r}") from error
    values.update({k: v for k, v in overrides.items() if v is not None})
    if not values.get("secret"):
        values["secret"] = env.get("BATON_SECRET") or _stored_secret()
    return ServerSettings(**values)


def _stored_secret() -> str:
    home = Path(os.environ.get("BATON_HOME") or Path("~/.baton").expanduser())
    path = home / "secret"
    try:
        if path.exists():
            return path.read_text().strip()
        home.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        path.write_text(value)
        path.chmod(0o600)
        return value
    except OSError:
        return secrets.token_urlsafe(32)
