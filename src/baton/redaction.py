"""Known secret values (model keys, tokens, passwords) cut out of whatever a run or a log line keeps.

A secret is the value of an environment variable whose name says it is one (`*_API_KEY`,
`*_TOKEN`, `*_SECRET`, `*_PASSWORD`…), or a value handed to `register` (a key given to an engine
in code). Step output, errors, events, artifacts, problem details and log records pass through
`redact` before they are stored or printed, so a careless flow, a chatty command agent or a model
error that echoes the key cannot put it in the database, an export or the server's log.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MARKER = "[redacted]"
#: variable names that hold secrets (matched on the upper-cased name)
SECRET_NAME = re.compile(
    r"(?:^|_)(?:API_?KEY|ACCESS_?KEY|SECRET(?:_?KEY)?|TOKEN|PASS|CREDENTIALS?|AUTH)$|PASSW(?:OR)?D$"
)
#: shorter values are left alone: redacting "1" or "true" everywhere would garble text
MIN_SECRET_CHARS = 8

_registered: set[str] = set()
_lock = threading.Lock()


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    # Cached: every recorded step asks about every variable of the environment.
    return bool(SECRET_NAME.search(name.upper()))


def secrets_in(environ: Mapping[str, str]) -> set[str]:
    """The secret values of an environment (by their variables' names)."""
    return {
        value
        for name, value in environ.items()
        if is_secret_name(name) and len(value.strip()) >= MIN_SECRET_CHARS
    }


def register(*values: str | None) -> None:
    """Treat these values as secrets from now on (a key given in code, not in the environment)."""
    global _known
    with _lock:
        _registered.update(v for v in values if v and len(v) >= MIN_SECRET_CHARS)
        _known = None


#: (a copy of the environment it was computed from, the registered count, the answer) of `known_secrets`
_known: tuple[dict[Any, Any], int, list[str]] | None = None


def known_secrets() -> list[str]:
    """Longest first, so a secret containing another is cut out whole.

    Asked for every recorded step: decoding and matching the whole environment each time was a
    tenth of a no-op step's cost (bench/engine.py), so the answer is kept until the environment's
    raw items change (a variable set, changed or removed) or a secret is registered.
    """
    global _known
    # os.environ's undecoded items, compared with a copy as dictionaries: the values are the same
    # objects until a variable is set, so the comparison is a fraction of a microsecond (a set of
    # the items, built at every call, cost 10 us in a step), and decoding them would cost more.
    raw = getattr(os.environ, "_data", os.environ)
    with _lock:
        known = _known
        if known is not None and known[1] == len(_registered) and known[0] == raw:
            return known[2]
        found = set(_registered) | secrets_in(os.environ)
        answer = sorted(found, key=len, reverse=True)
        _known = (dict(raw), len(_registered), answer)
        return answer


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    for secret in known_secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, MARKER)
    return text


def redact(value: Any, secrets: Iterable[str] | None = None) -> Any:
    """The value with every known secret replaced by MARKER: strings, bytes, and inside dicts/lists."""
    found = known_secrets() if secrets is None else list(secrets)
    if not found:
        return value
    return _walk(value, found)


def _walk(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        for secret in secrets:
            data = data.replace(secret.encode(), MARKER.encode())
        return data
    if isinstance(value, Mapping):
        return {_walk(k, secrets): _walk(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_walk(v, secrets) for v in value)
    return value


# --- log records -------------------------------------------------------------------------------


def _redacting_factory(original: Any) -> Any:
    formatter = logging.Formatter()

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = original(*args, **kwargs)
        found = known_secrets()
        if not found:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logging module's to report
            return record
        clean = redact_text(message, found)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            trace = formatter.formatException(record.exc_info)
            clean_trace = redact_text(trace, found)
            if clean_trace != trace:
                # Handlers print exc_text when exc_info is gone; they never see the raw exception.
                record.exc_info, record.exc_text = None, clean_trace
        return record

    return make


def install_log_redaction() -> None:
    """Redact every log record of this process, whichever handler prints it (idempotent).

    Installed again if something (a logging instrumentation's teardown) put back a factory
    without it.
    """
    with _lock:
        current = logging.getLogRecordFactory()
        if not getattr(current, "baton_redacts", False):
            factory = _redacting_factory(current)
            factory.baton_redacts = True
            logging.setLogRecordFactory(factory)


__all__ = [
    "MARKER",
    "install_log_redaction",
    "is_secret_name",
    "known_secrets",
    "redact",
    "redact_text",
    "register",
    "secrets_in",
]
