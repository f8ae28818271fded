"""Webhook decisions without I/O: event topics, signatures, the retry schedule, the address policy."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import get_args
from urllib.parse import urlsplit

from baton.domain.errors import InvalidInputs
from baton.domain.events import EventType

#: The event types a webhook may subscribe to: what happens to runs and their questions, not the
#: per-token chatter (`step.delta`, `log`), which would flood a receiver. Every `run.*` type is
#: one, including those added later.
_ALSO_SENT = frozenset({"step.failed", "input.requested", "input.answered", "artifact.created"})
WEBHOOK_EVENT_TYPES: tuple[str, ...] = tuple(
    kind for kind in get_args(EventType) if kind.startswith(("run.", "plan.")) or kind in _ALSO_SENT
)
#: Subscribes to every type of `WEBHOOK_EVENT_TYPES`, including ones added later.
ALL_EVENTS = "*"
#: The type of a test delivery sent on request (`POST /v1/webhooks/{id}/ping`); never subscribed to.
PING_EVENT = "webhook.ping"

SIGNATURE_HEADER = "Baton-Signature"
EVENT_HEADER = "Baton-Event"
DELIVERY_HEADER = "Baton-Delivery"
#: How old a signed timestamp a receiver should accept; older ones may be replays.
DEFAULT_TOLERANCE_S = 300.0


def normalize_event_types(requested: Sequence[str]) -> list[str]:
    """The subscription as stored: `["*"]`, or the named types deduplicated and sorted.

    Raises InvalidInputs naming every unknown type and listing the valid ones.
    """
    names = [name.strip() for name in requested]
    if not names:
        raise InvalidInputs(
            "event_types is empty: name at least one event type, or '*' for all of them",
            [{"field": "event_types", "message": "must not be empty"}],
        )
    if ALL_EVENTS in names:
        return [ALL_EVENTS]
    unknown = sorted({name for name in names if name not in WEBHOOK_EVENT_TYPES})
    if unknown:
        valid = ", ".join(WEBHOOK_EVENT_TYPES)
        raise InvalidInputs(
            f"unknown event type{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
            f"the valid ones are {valid}, or '*' for all of them",
            [{"field": "event_types", "message": f"unknown: {', '.join(unknown)}"}],
        )
    return sorted(set(names))


def subscribes(event_types: Iterable[str], event_type: str) -> bool:
    """Whether a webhook with this subscription receives an event of `event_type`."""
    if event_type not in WEBHOOK_EVENT_TYPES:
        return False
    types = set(event_types)
    return ALL_EVENTS in types or event_type in types


# --- signatures -----------------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `f"{timestamp}.{body}"` under the webhook's secret."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def new_secret() -> str:
    """A signing secret for a webhook whose creator gave none."""
    return f"whsec_{secrets.token_urlsafe(32)}"


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The `Baton-Signature` value: `t=<unix seconds>,v1=<hex>` (Stripe's layout)."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify_signature(
    secret: str, header: str, body: bytes, now: float, tolerance_s: float = DEFAULT_TOLERANCE_S
) -> bool:
    """What a receiver does: the header is well formed, fresh, and one of its `v1` values matches."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


# --- retries --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """When a failed delivery is tried again, and when it is given up.

    The default spreads 8 attempts over about 18 hours (1 min, 3, 9, 27 min, 1.4 h, 4 h, 6 h apart,
    each ±20 %), so a receiver that is down for a night still gets its events.
    """

    max_attempts: int = 8
    base_s: float = 60.0
    factor: float = 3.0
    max_delay_s: float = 6 * 3600.0
    #: no attempt starts later than this after the event
    max_age_s: float = 86400.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_s < 0 or self.factor < 1 or self.max_delay_s < 0 or self.max_age_s < 0:
            raise ValueError("base_s, max_delay_s and max_age_s must be >= 0 and factor >= 1")


def backoff_delay(policy: RetryPolicy, attempts_made: int, jitter: float) -> float:
    """Seconds to wait after the `attempts_made`-th failure; `jitter` in [0, 1) spreads it ±20 %."""
    exponent = max(attempts_made - 1, 0)
    delay = policy.base_s * policy.factor ** min(exponent, 64)
    return min(delay, policy.max_delay_s) * (0.8 + 0.4 * jitter)


def next_attempt_in(policy: RetryPolicy, attempts_made: int, age_s: float, jitter: float) -> float | None:
    """Seconds until the next attempt after a failure, or None when the delivery should be given up."""
    if attempts_made >= policy.max_attempts:
        return None
    delay = backoff_delay(policy, attempts_made, jitter)
    if age_s + delay > policy.max_age_s:
        return None
    return delay


def is_success(status_code: int) -> bool:
    return 200 <= status_code < 300


# --- where deliveries may go ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A webhook URL taken apart: only http and https, with a host."""

    scheme: str
    host: str
    port: int


def parse_target(url: str) -> Target:
    """Check the URL's shape (not yet where it points); InvalidInputs says what is wrong."""

    def invalid(why: str) -> InvalidInputs:
        return InvalidInputs(f"url {url!r} {why}", [{"field": "url", "message": why}])

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise invalid("is not a valid URL: give one like https://example.com/hooks/baton") from None
    if parts.scheme not in ("http", "https"):
        raise invalid("must start with http:// or https://")
    if not parts.hostname:
        raise invalid("has no host: give one like https://example.com/hooks/baton")
    if parts.username is not None or parts.password is not None:
        raise invalid("must not carry credentials: the signature authenticates Baton to the receiver")
    return Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


def address_kind(address: str) -> str | None:
    """Why an IP address is not a public one ("a loopback address", …), or None when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "a non-public address"),
    )
    return next((kind for hit, kind in checks if hit), None)


def refusal(host: str, addresses: Sequence[str], *, allow_private: bool) -> str | None:
    """The reason a target may not be used, or None. Every address must be public: DNS may answer any."""
    if not addresses:
        return f"{host} does not resolve to any address"
    if allow_private:
        return None
    for address in addresses:
        kind = address_kind(address)
        if kind is not None:
            where = f"{host} is" if host == address else f"{host} resolves to {address},"
            return (
                f"{where} {kind}; webhook targets must be public unless the server sets "
                "BATON_WEBHOOKS_ALLOW_PRIVATE=1"
            )
    return None
