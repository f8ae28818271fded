"""Reports: the template renders in a sandbox, and a broken template still yields a report."""

from __future__ import annotations

import json
from typing import Any

import pytest

from baton.flows.report import MAX_OUTPUT_CHARS, output_text, render_report
from baton.flows.spec import DEFAULT_REPORT

RUN: dict[str, Any] = {
    "id": "run_1",
    "flow": "demo",
    "title": "Cats",
    "status": "succeeded",
    "status_reason": "all steps succeeded",
    "inputs": {"topic": "cats"},
}


def make_step(
    key: str, status: str = "succeeded", output: Any = None, error: str | None = None
) -> dict[str, Any]:
    return {
        "key": key,
        "kind": "agent",
        "status": status,
        "output": output,
        "output_text": output_text(output),
        "error": error,
        "attempt": 1,
    }


STEPS = [
    make_step("draft", output="Cats are *great* & <fun>"),
    make_step("check", "failed", error="too short"),
]


def test_the_default_template_renders_steps_and_errors() -> None:
    report = render_report(DEFAULT_REPORT, run=RUN, steps=STEPS)
    assert report.startswith("# Cats\n")
    assert "Flow **demo** · run `run_1` · succeeded (all steps succeeded)" in report
    assert "## draft — succeeded\n\nCats are *great* & <fun>\n" in report
    assert "## check — failed\n\nError: too short\n" in report


def test_markdown_is_not_html_escaped() -> None:
    assert render_report("{{ steps[0].output }}", run=RUN, steps=STEPS) == "Cats are *great* & <fun>"


def test_undefined_values_render_empty() -> None:
    assert (
        render_report("[{{ run.nothing }}|{{ run.nothing.deeper }}|{{ missing }}]", run=RUN, steps=[])
        == "[||]"
    )


def test_steps_are_available_by_key_and_output_text_is_a_filter() -> None:
    steps = [make_step("score", output={"score": 0.9})]
    template = "{{ by_key.score.output.score }}\n{{ run.inputs | output_text }}"
    assert render_report(template, run=RUN, steps=steps) == '0.9\n```json\n{\n  "topic": "cats"\n}\n```'


def test_output_text_is_computed_when_a_step_lacks_it() -> None:
    step = {"key": "a", "kind": "code", "status": "succeeded", "output": [1], "error": None, "attempt": 1}
    assert render_report("{{ steps[0].output_text }}", run=RUN, steps=[step]) == "```json\n[\n  1\n]\n```"


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{% for %}", "syntax error on line 1"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError"),
        ("{{ run.title() }}", "TypeError"),
    ],
)
def test_a_failing_template_yields_a_plain_report_saying_why(template: str, reason: str) -> None:
    report = render_report(template, run=RUN, steps=STEPS)
    assert report.startswith("# Cats\n")
    assert "The report template failed" in report
    assert reason in report
    assert "## draft — succeeded\n\nCats are *great* & <fun>\n" in report
    assert "## check — failed\n\nError: too short\n" in report


def test_a_compiled_template_is_reused_with_each_runs_own_values() -> None:
    template = "{{ run.title }}: {% for s in steps %}{{ s.key }} {% endfor %}"
    first = render_report(template, run=RUN, steps=STEPS)
    second = render_report(template, run={**RUN, "title": "Dogs"}, steps=STEPS[:1])
    assert (first, second) == ("Cats: draft check ", "Dogs: draft ")
    # A broken template is not cached as broken or as fixed: it fails the same way each time.
    for _ in range(2):
        assert "syntax error on line 1" in render_report("{% for %}", run=RUN, steps=STEPS)


def test_the_sandbox_blocks_reaching_python_internals() -> None:
    report = render_report("{{ steps.__class__.__subclasses__() }}", run=RUN, steps=STEPS)
    assert "subclasses" not in report.split("Reason:", 1)[0]
    assert "object" not in report.split("Reason:", 1)[0]


# --- output_text -----------------------------------------------------------------------------


def test_output_text_of_plain_values() -> None:
    assert output_text(None) == ""
    assert output_text("as **is**\n") == "as **is**\n"
    assert output_text(3) == "3"
    assert output_text(True) == "true"


def test_output_text_of_structures_is_fenced_pretty_json() -> None:
    assert output_text({"é": [1, 2]}) == '```json\n{\n  "é": [\n    1,\n    2\n  ]\n}\n```'
    assert output_text((1,)) == "```json\n[\n  1\n]\n```"


def test_long_structured_output_is_truncated_with_a_note() -> None:
    value = {"text": "x" * (MAX_OUTPUT_CHARS * 2)}
    full = len(json.dumps(value, indent=2))
    text = output_text(value)
    body = text.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert len(body) == MAX_OUTPUT_CHARS
    assert text.endswith(f"_(output truncated: showing 20,000 of {full:,} characters)_")


def test_values_json_cannot_encode_are_shown_as_text() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    assert '"a thing"' in output_text({"v": Thing()})
