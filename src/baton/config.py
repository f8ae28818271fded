"""Server settings from flags and BATON_* environment variables; errors name the variable."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton.domain.errors import UsageError
from baton.domain.webhooks import RetryPolicy


@dataclass(frozen=True)
class WebhookSettings:
    """Webhook delivery: where targets may point, how long an attempt may take, how often to retry."""

    #: BATON_WEBHOOKS_ALLOW_PRIVATE=1 lets targets resolve to loopback/private addresses (tests, LANs)
    allow_private: bool = False
    #: BATON_WEBHOOKS_TIMEOUT_S: one attempt's connect + response budget
    timeout_s: float = 10.0
    #: BATON_WEBHOOKS_MAX_ATTEMPTS, BATON_WEBHOOKS_RETRY_BASE_S, BATON_WEBHOOKS_MAX_AGE_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: how often an idle delivery service looks for due retries
    poll_s: float = 1.0
    #: BATON_WEBHOOKS_KEEP_DAYS: how long finished deliveries (succeeded or failed) stay listed
    keep_days: float = 30.0


def webhook_settings_from_env() -> WebhookSettings:
    """BATON_WEBHOOKS_* variables over the defaults; read by the API and by every worker's service."""
    env = os.environ
    numbers: dict[str, float] = {}
    for name in ("TIMEOUT_S", "MAX_ATTEMPTS", "RETRY_BASE_S", "MAX_AGE_S", "POLL_S", "KEEP_DAYS"):
        raw = env.get(f"BATON_WEBHOOKS_{name}")
        if raw:
            try:
                numbers[name] = float(raw)
            except ValueError as error:
                raise UsageError(f"BATON_WEBHOOKS_{name} must be a number, got {raw!r}") from error
    defaults = RetryPolicy()
    try:
        retry = RetryPolicy(
            max_attempts=int(numbers.get("MAX_ATTEMPTS", defaults.max_attempts)),
            base_s=numbers.get("RETRY_BASE_S", defaults.base_s),
            max_age_s=numbers.get("MAX_AGE_S", defaults.max_age_s),
        )
    except ValueError as error:
        raise UsageError(f"BATON_WEBHOOKS_* retry settings are not valid: {error}") from error
    keep_days = numbers.get("KEEP_DAYS", 30.0)
    if keep_days <= 0:
        raise UsageError(f"BATON_WEBHOOKS_KEEP_DAYS must be a positive number of days, got {keep_days:g}")
    return WebhookSettings(
        allow_private=env.get("BATON_WEBHOOKS_ALLOW_PRIVATE", "").strip().lower() in ("1", "true", "yes"),
        timeout_s=numbers.get("TIMEOUT_S", 10.0),
        retry=retry,
        poll_s=numbers.get("POLL_S", 1.0),
        keep_days=keep_days,
    )


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
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

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
    values["webhooks"] = webhook_settings_from_env()
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
