"""Run inputs: defaults, validation messages that name every field, and KEY=VALUE parsing."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from baton.domain.errors import InvalidFlow, InvalidInputs
from baton.flows.inputs import parse_cli_inputs, validate_inputs, validate_schema

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "topic": {"type": "string"},
        "count": {"type": "integer", "default": 3},
        "ratio": {"type": "number"},
        "deep": {"type": "boolean", "default": False},
        "tags": {"type": "array", "items": {"type": "string"}, "default": []},
        "options": {"type": "object"},
        "maybe": {"type": ["integer", "null"]},
    },
    "required": ["topic"],
}


def test_defaults_fill_missing_keys_only() -> None:
    values = validate_inputs(SCHEMA, {"topic": "cats", "count": 7}, flow="demo")
    assert values == {"topic": "cats", "count": 7, "deep": False, "tags": []}


def test_defaults_are_copied_per_call() -> None:
    first = validate_inputs(SCHEMA, {"topic": "a"}, flow="demo")
    first["tags"].append("mutated")
    assert validate_inputs(SCHEMA, {"topic": "b"}, flow="demo")["tags"] == []


def test_the_input_mapping_is_not_modified() -> None:
    given = {"topic": "a"}
    validate_inputs(SCHEMA, given, flow="demo")
    assert given == {"topic": "a"}


def test_every_failing_field_is_named_with_its_reason() -> None:
    with pytest.raises(InvalidInputs) as caught:
        validate_inputs(SCHEMA, {"count": "x"}, flow="demo")
    error = caught.value
    assert error.message == (
        "inputs for flow demo are not valid: 'count': 'x' is not of type 'integer'; "
        "'topic': required property missing"
    )
    assert error.problems == [
        {"field": "count", "message": "'x' is not of type 'integer'"},
        {"field": "topic", "message": "required property missing"},
    ]
    assert error.status_code == 422


def test_nested_fields_are_named_by_path() -> None:
    with pytest.raises(InvalidInputs) as caught:
        validate_inputs(SCHEMA, {"topic": "a", "tags": ["ok", 5]}, flow="demo")
    assert caught.value.problems == [{"field": "tags[1]", "message": "5 is not of type 'string'"}]


def test_each_missing_required_field_is_its_own_problem() -> None:
    schema = {"type": "object", "required": ["a", "b"]}
    with pytest.raises(InvalidInputs) as caught:
        validate_inputs(schema, {}, flow="demo")
    assert [p["field"] for p in caught.value.problems] == ["a", "b"]


def test_unexpected_properties_are_named_with_the_allowed_ones() -> None:
    schema = {"type": "object", "properties": {"a": {}, "b": {}}, "additionalProperties": False}
    with pytest.raises(InvalidInputs) as caught:
        validate_inputs(schema, {"a": 1, "zz": 2}, flow="demo")
    assert caught.value.message == (
        "inputs for flow demo are not valid: 'zz': unexpected property (allowed: a, b)"
    )


def test_formats_are_checked() -> None:
    schema = {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}}
    with pytest.raises(InvalidInputs, match="'day'"):
        validate_inputs(schema, {"day": "not a date"}, flow="demo")
    assert validate_inputs(schema, {"day": "2024-02-29"}, flow="demo") == {"day": "2024-02-29"}


def test_an_invalid_schema_is_a_flow_error_not_an_input_error() -> None:
    with pytest.raises(InvalidFlow, match="the input schema of flow demo is not a valid JSON Schema"):
        validate_inputs({"type": "nonsense"}, {}, flow="demo")


def test_validate_schema_names_what_and_where() -> None:
    validate_schema(SCHEMA, what="flow demo input schema")
    validate_schema(True, what="anything")
    with pytest.raises(InvalidFlow) as caught:
        validate_schema({"properties": {"a": {"type": 5}}}, what="flow demo input schema")
    assert caught.value.message.startswith(
        "flow demo input schema is not a valid JSON Schema at properties.a.type"
    )
    with pytest.raises(InvalidFlow, match="expected an object, got list"):
        validate_schema([], what="flow demo input schema")


# --- parse_cli_inputs ------------------------------------------------------------------------


def test_values_are_typed_by_the_schema() -> None:
    pairs = [
        "topic=a=b",
        "count=12",
        "ratio=0.5",
        "deep=yes",
        'tags=["x", "y"]',
        'options={"k": 1}',
        "maybe=null",
        "extra=42",
    ]
    assert parse_cli_inputs(pairs, SCHEMA) == {
        "topic": "a=b",
        "count": 12,
        "ratio": 0.5,
        "deep": True,
        "tags": ["x", "y"],
        "options": {"k": 1},
        "maybe": None,
        "extra": "42",
    }


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("No", False), ("FALSE", False), ("yes", True)]
)
def test_booleans(text: str, expected: bool) -> None:
    assert parse_cli_inputs([f"deep={text}"], SCHEMA) == {"deep": expected}


def test_a_whole_number_stays_an_int_for_a_number_property() -> None:
    assert parse_cli_inputs(["ratio=2"], SCHEMA) == {"ratio": 2}


def test_a_value_is_read_from_a_file_with_at(tmp_path: Path) -> None:
    brief = tmp_path / "brief.md"
    brief.write_text("# Brief\nline two\n", encoding="utf-8")
    options = tmp_path / "options.json"
    options.write_text('{"depth": 2}\n', encoding="utf-8")
    assert parse_cli_inputs([f"topic=@{brief}", f"options=@{options}"], SCHEMA) == {
        "topic": "# Brief\nline two\n",
        "options": {"depth": 2},
    }


def test_double_at_is_a_literal_at() -> None:
    assert parse_cli_inputs(["topic=@@home"], SCHEMA) == {"topic": "@home"}


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputs, match=r"'topic': cannot read .*nope\.txt"):
        parse_cli_inputs([f"topic=@{tmp_path / 'nope.txt'}"], SCHEMA)


def test_a_pair_without_equals_is_refused() -> None:
    with pytest.raises(InvalidInputs) as caught:
        parse_cli_inputs(["x"], SCHEMA)
    assert caught.value.message == "expected KEY=VALUE, got 'x'"


def test_every_bad_value_is_reported_at_once() -> None:
    with pytest.raises(InvalidInputs) as caught:
        parse_cli_inputs(["count=many", "deep=maybe", "tags={}", "options=[1", "=v"], SCHEMA)
    fields = [p["field"] for p in caught.value.problems]
    assert fields == ["count", "deep", "tags", "options", ""]
    message = caught.value.message
    assert "'count': expected an integer, got 'many'" in message
    assert "'deep': expected true/false/yes/no, got 'maybe'" in message
    assert "'tags': expected a JSON array, got '{}'" in message
    assert "'options': expected a JSON object, got '[1'" in message
    assert "expected KEY=VALUE, got '=v'" in message


def test_a_key_given_twice_is_refused() -> None:
    with pytest.raises(InvalidInputs, match="'count': given more than once"):
        parse_cli_inputs(["count=1", "count=2"], SCHEMA)


def test_parsed_inputs_then_validate() -> None:
    values = validate_inputs(SCHEMA, parse_cli_inputs(["topic=t", "count=2"], SCHEMA), flow="demo")
    assert values == {"topic": "t", "count": 2, "deep": False, "tags": []}


def test_a_checked_schema_still_judges_every_call_on_its_own() -> None:
    """A schema is checked and compiled once, then reused: an invalid one is refused every time,
    a valid one still judges each call's inputs, and one JSON cannot hold is checked as before."""
    bad = {"type": "object", "properties": {"n": {"type": "bogus"}}}
    for _ in range(2):
        with pytest.raises(InvalidFlow, match="not a valid JSON Schema"):
            validate_inputs(bad, {}, flow="f")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert validate_inputs(schema, {"n": 1}, flow="f") == {"n": 1}
    with pytest.raises(InvalidInputs):
        validate_inputs(schema, {"n": "one"}, flow="f")
    assert validate_inputs(dict(schema), {"n": 2}, flow="f") == {"n": 2}
    dated = {"type": "object", "properties": {"day": {"type": "string", "examples": [date(2026, 1, 2)]}}}
    assert validate_inputs(dated, {"day": "x"}, flow="f") == {"day": "x"}
    with pytest.raises(InvalidInputs):
        validate_inputs(dated, {"day": 3}, flow="f")
