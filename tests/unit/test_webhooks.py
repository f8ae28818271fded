"""Pure webhook decisions: subscriptions, signatures, the retry schedule, the address policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.domain.errors import InvalidInputs
from baton.domain.webhooks import (
    ALL_EVENTS,
    WEBHOOK_EVENT_TYPES,
    RetryPolicy,
    address_kind,
    backoff_delay,
    next_attempt_in,
    normalize_event_types,
    parse_target,
    refusal,
    signature_header,
    subscribes,
    verify_signature,
)


def test_event_types_are_validated_and_normalized() -> None:
    assert normalize_event_types(["run.failed", "run.succeeded", "run.failed"]) == [
        "run.failed",
        "run.succeeded",
    ]
    assert normalize_event_types(["run.failed", "*"]) == [ALL_EVENTS]
    with pytest.raises(InvalidInputs) as caught:
        normalize_event_types(["run.done", "run.failed"])
    assert "'run.done'" in caught.value.message and "run.succeeded" in caught.value.message
    assert caught.value.problems[0]["field"] == "event_types"
    with pytest.raises(InvalidInputs):
        normalize_event_types([])


def test_subscriptions_match_known_types_only() -> None:
    assert subscribes(["*"], "run.succeeded") and subscribes(["run.failed"], "run.failed")
    assert not subscribes(["run.failed"], "run.succeeded")
    assert not subscribes(["*"], "step.delta"), "token chatter is never sent"


@given(secret=st.text(min_size=1), body=st.binary(), t=st.integers(min_value=0, max_value=2**40))
def test_a_signature_verifies_and_any_change_breaks_it(secret: str, body: bytes, t: int) -> None:
    header = signature_header(secret, t, body)
    assert header.startswith(f"t={t},v1=")
    assert verify_signature(secret, header, body, now=t)
    assert not verify_signature(secret, header, body + b"x", now=t)
    assert not verify_signature(secret + "x", header, body, now=t)
    assert not verify_signature(secret, header, body, now=t + 301), "stale timestamps are refused"
    assert not verify_signature(secret, "v1=abc", body, now=t)


def test_signature_matches_a_known_vector() -> None:
    # python -c 'import hmac,hashlib;print(hmac.new(b"k",b"1700000000.{}",hashlib.sha256).hexdigest())'
    expected = "c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
    assert signature_header("k", 1_700_000_000, b"{}") == f"t=1700000000,v1={expected}"


def test_the_default_schedule_spreads_attempts_over_most_of_a_day() -> None:
    policy = RetryPolicy()
    delays = [backoff_delay(policy, n, 0.5) for n in range(1, policy.max_attempts)]
    assert delays[0] == 60.0 and delays == sorted(delays)
    assert max(delays) <= policy.max_delay_s
    assert 12 * 3600 < sum(delays) < policy.max_age_s
    assert next_attempt_in(policy, policy.max_attempts, 0.0, 0.5) is None, "stops after the last attempt"


@given(attempts=st.integers(min_value=1, max_value=50), jitter=st.floats(min_value=0, max_value=0.999))
def test_backoff_is_bounded_and_jittered_within_20_percent(attempts: int, jitter: float) -> None:
    policy = RetryPolicy(max_attempts=100, base_s=1.0, factor=2.0, max_delay_s=100.0)
    delay = backoff_delay(policy, attempts, jitter)
    plain = min(2.0 ** (attempts - 1), 100.0)
    assert 0.8 * plain <= delay <= 1.2 * plain


def test_no_attempt_is_planned_past_the_maximum_age() -> None:
    policy = RetryPolicy(max_attempts=10, base_s=100.0, factor=1.0, max_age_s=150.0)
    assert next_attempt_in(policy, 1, 0.0, 0.5) == 100.0
    assert next_attempt_in(policy, 2, 100.0, 0.5) is None


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("192.168.0.10", "a private address"),
        ("172.16.5.4", "a private address"),
        ("169.254.169.254", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("100.64.0.1", "a non-public address"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(address) == kind


def test_a_refusal_names_the_address_and_the_setting() -> None:
    message = refusal("localhost", ["127.0.0.1"], allow_private=False)
    assert message == (
        "localhost resolves to 127.0.0.1, a loopback address; webhook targets must be public unless "
        "the server sets BATON_WEBHOOKS_ALLOW_PRIVATE=1"
    )
    assert refusal("hooks.example", ["93.184.216.34", "10.0.0.1"], allow_private=False) is not None
    assert refusal("localhost", ["127.0.0.1"], allow_private=True) is None
    assert refusal("nowhere", [], allow_private=True) == "nowhere does not resolve to any address"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "https://",
        "http://user:pw@example.com/",
        "http://x:99999/",
    ],
)
def test_only_plain_http_urls_are_targets(url: str) -> None:
    with pytest.raises(InvalidInputs):
        parse_target(url)


def test_a_target_is_taken_apart() -> None:
    target = parse_target("https://Example.com/hooks?x=1")
    assert (target.scheme, target.host, target.port) == ("https", "example.com", 443)
    assert parse_target("http://[::1]:8080/").host == "::1"


def test_every_subscribable_type_is_a_real_event_type() -> None:
    from typing import get_args

    from baton.domain.events import EventType

    assert set(WEBHOOK_EVENT_TYPES) <= set(get_args(EventType))
