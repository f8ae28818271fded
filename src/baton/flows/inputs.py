"""Checking run inputs against a flow's JSON Schema, and turning `KEY=VALUE` arguments into inputs."""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from referencing.exceptions import Unresolvable

from baton.domain.errors import InvalidFlow, InvalidInputs

Problem = dict[str, Any]


def validate_schema(schema: Any, *, what: str) -> None:
    """Raise InvalidFlow, naming `what`, unless `schema` is itself a valid JSON Schema (2020-12)."""
    if not isinstance(schema, Mapping | bool):
        got = type(schema).__name__
        raise InvalidFlow(f"{what} is not a valid JSON Schema: expected an object, got {got}")
    text = _schema_text(schema)
    try:
        if text is None:
            Draft202012Validator.check_schema(_plain(schema))
        else:
            _check_schema(text)
    except SchemaError as error:
        where = _path(error.path)
        at = f" at {where}" if where else ""
        raise InvalidFlow(f"{what} is not a valid JSON Schema{at}: {error.message}") from None


def validate_inputs(schema: Mapping[str, Any], inputs: Mapping[str, Any], *, flow: str) -> dict[str, Any]:
    """The inputs with top-level defaults filled in, or InvalidInputs naming every failing field."""
    validate_schema(schema, what=f"the input schema of flow {flow}")
    values = _plain(inputs)
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        for name, prop in properties.items():
            if name not in values and isinstance(prop, Mapping) and "default" in prop:
                # A copy, so one run mutating its inputs cannot change the next run's default.
                values[name] = copy.deepcopy(prop["default"])

    text = _schema_text(schema)
    validator = _validator(text) if text is not None else _new_validator(_plain(schema))
    try:
        errors = list(validator.iter_errors(values))
    except Unresolvable as error:
        what = f"the input schema of flow {flow}"
        raise InvalidFlow(f"{what} has a $ref that cannot be resolved: {error}") from None

    found = _dedupe(p for error in errors for p in _problems(error))
    problems = sorted(found, key=lambda p: str(p["field"]))
    if problems:
        raise InvalidInputs(f"inputs for flow {flow} are not valid: {_describe(problems)}", problems)
    return values


def parse_cli_inputs(pairs: Sequence[str], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Turn `KEY=VALUE` arguments into inputs, typed by the schema's property types.

    `KEY=@path` reads the value from a file (`KEY=@@text` is the literal `@text`). A value that
    does not fit its property's type is reported here, where the message can quote what was typed.
    """
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append({"field": "", "message": f"expected KEY=VALUE, got {pair!r}"})
            continue
        if key in values:
            problems.append({"field": key, "message": "given more than once"})
            continue
        try:
            text = _read_value(raw)
            prop = properties.get(key)
            values[key] = _coerce(text, prop.get("type") if isinstance(prop, Mapping) else None)
        except ValueError as error:
            problems.append({"field": key, "message": str(error)})
    if problems:
        raise InvalidInputs(_describe(problems), problems)
    return values


# --- messages --------------------------------------------------------------------------------


def _problems(error: ValidationError) -> list[Problem]:
    """One problem per field an error is about; `required` and `additionalProperties` name theirs."""
    base = _path(error.absolute_path)
    instance, rule, schema = error.instance, error.validator_value, error.schema
    if error.validator == "required" and isinstance(instance, Mapping) and isinstance(rule, list):
        missing = [name for name in rule if name not in instance]
        return [{"field": _join(base, name), "message": "required property missing"} for name in missing]
    if error.validator == "additionalProperties" and rule is False and isinstance(schema, Mapping):
        extras = _unexpected(instance, schema)
        if extras:
            allowed = ", ".join(sorted(_as_mapping(schema.get("properties")))) or "none"
            return [
                {"field": _join(base, name), "message": f"unexpected property (allowed: {allowed})"}
                for name in extras
            ]
    return [{"field": base, "message": error.message}]


def _unexpected(instance: Any, schema: Mapping[str, Any]) -> list[str]:
    if not isinstance(instance, Mapping):
        return []
    known = _as_mapping(schema.get("properties"))
    patterns = list(_as_mapping(schema.get("patternProperties")))
    return [
        name
        for name in instance
        if name not in known and not any(re.search(pattern, name) for pattern in patterns)
    ]


def _describe(problems: Iterable[Problem]) -> str:
    return "; ".join(f"{p['field']!r}: {p['message']}" if p["field"] else p["message"] for p in problems)


def _dedupe(problems: Iterable[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    kept = []
    for problem in problems:
        mark = (problem["field"], problem["message"])
        if mark not in seen:
            seen.add(mark)
            kept.append(problem)
    return kept


def _path(parts: Iterable[Any]) -> str:
    """`a.b[0]` for the path ['a', 'b', 0]."""
    text = ""
    for part in parts:
        text = f"{text}[{part}]" if isinstance(part, int) else _join(text, str(part))
    return text


def _join(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


def _as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _schema_text(schema: Any) -> str | None:
    """`schema` as JSON text, the key under which it is checked and its validator built once;
    None when it holds what JSON cannot (a date read from YAML): then it is done every time."""
    try:
        return json.dumps(_plain(schema))
    except (TypeError, ValueError):
        return None


# A flow's input schema was checked, and its validator built, again on every run created.
@functools.lru_cache(maxsize=256)
def _check_schema(text: str) -> None:
    Draft202012Validator.check_schema(json.loads(text))


@functools.lru_cache(maxsize=256)
def _validator(text: str) -> Draft202012Validator:
    return _new_validator(json.loads(text))


def _new_validator(schema: Any) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _plain(value: Any) -> Any:
    """Mappings as dicts and tuples as lists: jsonschema only recognises the built-in types."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- command-line values ---------------------------------------------------------------------


def _read_value(raw: str) -> str:
    if raw.startswith("@@"):
        return raw[1:]
    if raw.startswith("@"):
        path = Path(raw[1:]).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise ValueError(f"cannot read {str(path)!r}: {reason}") from None
    return raw


_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}


def _to_boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true/false/yes/no, got {text!r}")


def _to_integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _to_number(text: str) -> int | float:
    try:
        return int(text.strip())
    except ValueError:
        pass
    try:
        number = float(text.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {text!r}")
    return number


def _json_of(kind: type, name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            where = f"{error.msg} at column {error.colno}"
            raise ValueError(f"expected a JSON {name}, got {text!r} ({where})") from None
        if not isinstance(value, kind):
            raise ValueError(f"expected a JSON {name}, got {text!r}")
        return value

    return parse


def _to_null(text: str) -> None:
    if text.strip().lower() in ("", "null", "none"):
        return None
    raise ValueError(f"expected null, got {text!r}")


_COERCE: dict[str, Callable[[str], Any]] = {
    "string": str,
    "integer": _to_integer,
    "number": _to_number,
    "boolean": _to_boolean,
    "array": _json_of(list, "array"),
    "object": _json_of(dict, "object"),
    "null": _to_null,
}


def _coerce(text: str, declared: Any) -> Any:
    """The value of `text` as the declared type; a list of types takes the first that fits."""
    kinds = [declared] if isinstance(declared, str) else list(declared or [])
    kinds = [k for k in kinds if k in _COERCE]
    if not kinds:
        return text
    # Try the non-string types first, so ["integer", "string"] turns "3" into 3.
    ordered = sorted(kinds, key=lambda k: k == "string")
    errors: list[ValueError] = []
    for kind in ordered:
        try:
            return _COERCE[kind](text)
        except ValueError as error:
            errors.append(error)
    raise errors[0]
