"""baton.redaction: which variables hold secrets, and cutting their values out of text, data and logs."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton import redaction
from baton.redaction import MARKER, is_secret_name, redact, redact_text, secrets_in


@pytest.mark.parametrize(
    "name",
    ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GITHUB_TOKEN", "BATON_SECRET", "PGPASSWORD",
     "AWS_SECRET_ACCESS_KEY", "aws_access_key", "DB_PASSWORD", "my_apikey"],
)  # fmt: skip
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["PATH", "HOME", "TOKENIZERS_PARALLELISM", "OPENAI_BASE_URL", "KEYBOARD"])
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


def test_short_values_are_not_secrets() -> None:
    assert secrets_in({"X_TOKEN": "1", "Y_API_KEY": "sk-long-enough", "PATH": "/usr/bin:/bin"}) == {
        "sk-long-enough"
    }


def test_redact_walks_strings_bytes_and_containers() -> None:
    key = "sk-planted-0123456789"
    value = {"a": [f"x {key} y", (key,)], key: b"raw " + key.encode(), "n": 3, "none": None}
    assert redact(value, [key]) == {
        "a": [f"x {MARKER} y", (MARKER,)],
        MARKER: b"raw " + MARKER.encode(),
        "n": 3,
        "none": None,
    }


def test_the_longer_secret_is_cut_whole() -> None:
    assert redact_text("abcdefgh-ijklmnop", ["abcdefgh-ijklmnop", "abcdefgh"]) == MARKER


@given(st.text(), st.text(min_size=8, alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_"))
def test_no_secret_survives(prefix: str, secret: str) -> None:
    out = redact_text(prefix + secret + prefix + secret, [secret])
    assert secret not in out


def test_secrets_come_from_the_environment_and_register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-from-the-env-123")
    redaction.register("given-in-code-456")
    found = redaction.known_secrets()
    assert "tok-from-the-env-123" in found and "given-in-code-456" in found
    assert redact_text("a tok-from-the-env-123 b given-in-code-456") == f"a {MARKER} b {MARKER}"


def test_log_records_are_redacted_messages_and_tracebacks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PLANTED_API_KEY", "sk-planted-in-a-log")
    redaction.install_log_redaction()
    redaction.install_log_redaction()  # idempotent
    logger = logging.getLogger("baton.test_redaction")
    with caplog.at_level(logging.INFO, logger="baton.test_redaction"):
        logger.info("calling with %s", "sk-planted-in-a-log")
        try:
            raise RuntimeError("refused sk-planted-in-a-log")
        except RuntimeError:
            logger.exception("step failed")
        logger.info("nothing secret here: %d", 42)
    text = "\n".join(logging.Formatter().format(r) for r in caplog.records)
    assert "sk-planted-in-a-log" not in text
    assert text.count(MARKER) >= 2 and "nothing secret here: 42" in text
    assert "RuntimeError" in text  # the traceback is kept, only the key is cut


def test_known_secrets_follow_the_environment_between_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    # The answer is kept between calls; a variable set, changed or removed must still count at once.
    monkeypatch.delenv("BATON_TEST_LATE_TOKEN", raising=False)
    assert "late-secret-value-1" not in redaction.known_secrets()
    monkeypatch.setenv("BATON_TEST_LATE_TOKEN", "late-secret-value-1")
    assert "late-secret-value-1" in redaction.known_secrets()
    monkeypatch.setenv("BATON_TEST_LATE_TOKEN", "late-secret-value-2")
    assert "late-secret-value-1" not in redaction.known_secrets()
    assert redaction.redact_text("x late-secret-value-2 y") == f"x {redaction.MARKER} y"
    monkeypatch.delenv("BATON_TEST_LATE_TOKEN")
    assert "late-secret-value-2" not in redaction.known_secrets()
    redaction.register("registered-after-the-cache")
    assert "registered-after-the-cache" in redaction.known_secrets()
