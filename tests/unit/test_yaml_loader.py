"""YAML flows: valid graph and loop declarations become Flows; every mistake is named at its file:line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from baton.agents.personas import load_agents
from baton.domain.errors import InvalidFlow, UsageError
from baton.domain.status import StepKind
from baton.flows.catalog import Catalog, load_catalog
from baton.flows.loop import loop_settings
from baton.flows.spec import Flow
from baton.flows.yaml_loader import (
    InvalidYamlFlows,
    is_yaml_source,
    load_yaml_flows,
    read_yaml_flows,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "flows"
AGENTS = Path(__file__).resolve().parents[1] / "fixtures" / "agents"


@pytest.fixture(autouse=True)
def _no_agents_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_AGENTS", raising=False)


def write(tmp_path: Path, text: str, name: str = "flow.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems_of(path: Path, **kw: object) -> list[str]:
    """The problems, with the file named relative to its folder as a user would see it."""
    found = read_yaml_flows(path, **kw)  # type: ignore[arg-type]
    return [p.replace(f"{path.parent}/", "") for p in found.problems]


GRAPH = """
name: review
steps:
  facts: {call: "os.path:join"}
  reviewer:
    agent: {persona: You review., engine: default}
    prompt: Review it.
    needs: [facts]
  synth:
    prompt: Combine.
    needs: [reviewer]
"""


# --- valid declarations --------------------------------------------------------------------------


def test_the_fixture_folder_declares_a_graph_and_a_loop_flow() -> None:
    found = read_yaml_flows(FIXTURES / "good")
    assert found.problems == [] and found.notes == []
    by_name = {flow.name: flow for flow in found.flows}
    assert set(by_name) == {"yaml-review", "yaml-tagline"}
    assert found.locations["yaml-review"].endswith("good/baton.yaml:11")
    assert found.locations["yaml-tagline"].endswith("good/flows/tagline.yaml:2")

    review = by_name["yaml-review"]
    assert (review.title, review.category, review.require_confirmation) == (
        "Review a folder (YAML)",
        "Review",
        True,
    )
    assert review.policy == {"read_only": True}
    assert review.input_schema["properties"]["focus"]["default"] == "overall health"
    assert [(s.key, s.kind, s.needs) for s in review.steps] == [
        ("facts", StepKind.CODE, ()),
        ("reviewer", StepKind.AGENT, ("facts",)),
        ("approve", StepKind.INPUT, ("reviewer",)),
        ("summary", StepKind.AGENT, ("reviewer", "approve")),
    ]
    steps = {s.key: s for s in review.steps}
    assert review.functions["facts"].__name__ == "facts" and steps["facts"].label == "gather facts"
    # The source's own agent is copied into the step: the flow needs no BATON_AGENTS to run.
    assert steps["reviewer"].agent is not None
    assert steps["reviewer"].agent["persona"].startswith("You are a careful reviewer")
    assert steps["reviewer"].prompt == "Review the facts."
    assert steps["summary"].agent is not None
    assert steps["summary"].agent["output_schema"]["required"] == ["bullets"]
    assert steps["summary"].artifact == "summary.json"
    assert steps["approve"].prompt == "Publish the summary?"
    assert steps["approve"].schema is not None and steps["approve"].schema["required"] == ["ok"]
    assert review.bands["small"] == {"steps": ["facts", "approve", "summary"], "description": "no reviewer"}
    assert "YAML review" in review.report_template

    tagline = by_name["yaml-tagline"]
    settings = loop_settings(tagline)
    assert (settings.max_attempts, settings.pass_threshold) == (3, 0.25)
    assert settings.attempts_for("small") == 1 and settings.attempts_for("large") == 5
    assert tagline.bands == {"small": {"max_attempts": 1}, "large": {"max_attempts": 5}}
    assert settings.producer.agent is not None and settings.producer.agent["name"] == "reviewer"
    assert settings.evaluator.agent is not None
    assert settings.evaluator.agent["output_schema"]["required"] == ["score", "feedback"]


def test_a_single_file_and_the_flows_list_forms(tmp_path: Path) -> None:
    [flow] = load_yaml_flows(write(tmp_path, GRAPH))
    assert [s.key for s in flow.steps] == ["facts", "reviewer", "synth"]
    assert flow.category == "Analysis" and flow.bands == {}

    listed = write(
        tmp_path,
        """
        flows:
          - name: one
            steps: [{key: a, call: "os.path:join"}, {key: b, prompt: Go on., needs: a}]
          - name: two
            steps: {c: {kind: input, prompt: "Which one?"}}
        """,
        "many.yaml",
    )
    flows = {f.name: f for f in load_yaml_flows(listed)}
    assert [(s.key, s.needs) for s in flows["one"].steps] == [("a", ()), ("b", ("a",))]
    assert flows["two"].steps[0].kind is StepKind.INPUT


def test_steps_are_kept_in_file_order_even_when_a_need_comes_later(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: later-first
        steps:
          end: {prompt: Finish., needs: [begin]}
          begin: {call: "os.path:join"}
        """,
    )
    [flow] = load_yaml_flows(path)
    assert [(s.key, s.needs) for s in flow.steps] == [("end", ("begin",)), ("begin", ())]


def test_agents_by_name_come_from_the_agents_catalog_and_are_looked_up_at_run_time(tmp_path: Path) -> None:
    path = write(tmp_path, "name: named\nsteps:\n  judge: {agent: critic, prompt: Judge.}\n")
    found = read_yaml_flows(path, agents=load_agents(AGENTS))
    assert found.problems == []
    assert found.flows[0].steps[0].agent == {"ref": "critic", "name": "judge"}
    # Without any agents to check against, the name is kept and a note says so.
    found = read_yaml_flows(path)
    assert found.problems == [] and len(found.flows) == 1
    assert found.notes and "agent 'critic' is looked up when the run starts" in found.notes[0]


def test_a_call_can_name_a_module_beside_the_yaml_file(tmp_path: Path) -> None:
    write(tmp_path, "def go(ctx):\n    return 'went'\n", "beside_steps_mod.py")
    [flow] = load_yaml_flows(write(tmp_path, "name: beside\nsteps:\n  go: {call: 'beside_steps_mod:go'}\n"))
    assert flow.functions["go"](None) == "went"


def test_bands_choose_steps_and_rewire_needs_past_the_steps_left_out() -> None:
    [review] = [f for f in load_yaml_flows(FIXTURES / "good") if f.name == "yaml-review"]
    small = review.steps_for_band("small")
    assert [(s.key, s.needs) for s in small] == [
        ("facts", ()),
        ("approve", ("facts",)),
        ("summary", ("facts", "approve")),
    ]
    assert [s.key for s in review.steps_for_band("large")] == [s.key for s in review.steps]
    assert review.steps_for_band(None) == review.steps
    with pytest.raises(UsageError, match="has no band 'huge'"):
        review.steps_for_band("huge")


def test_the_catalog_loads_yaml_files_and_folders() -> None:
    catalog = load_catalog(["baton.examples", str(FIXTURES / "good")])
    assert {"yaml-review", "yaml-tagline", "repo-review", "handoff"} <= set(catalog.names())
    assert is_yaml_source(str(FIXTURES / "good")) and is_yaml_source("x.yaml")
    assert not is_yaml_source("baton.examples")
    with pytest.raises(InvalidYamlFlows, match=r"review\.yaml:3: flow 'review': category"):
        load_catalog([str(FIXTURES / "bad")])


# --- every mistake, at its line ------------------------------------------------------------------


def test_the_bad_fixture_reports_every_problem_with_its_line() -> None:
    assert problems_of(FIXTURES / "bad" / "flows" / "review.yaml") == [
        "review.yaml:3: flow 'review': category 'Reviw' is not one of Analysis, Discovery, Planning, "
        "Authoring, Review (did you mean 'Review'?)",
        "review.yaml:4: flow 'review': the flow policy is not valid: read_only must be true or false, "
        "got 'maybe'",
        "review.yaml:8: flow 'review': input_schema is not a valid JSON Schema at properties/focus/type: "
        "'strin' is not valid under any of the given schemas",
        "review.yaml:10: flow 'review': band 'huge' is not one of small, medium, large",
        "review.yaml:12: step 'facts': call 'no_such_module_anywhere:collect' cannot be imported: "
        "ModuleNotFoundError: No module named 'no_such_module_anywhere'",
        "review.yaml:14: agent 'reviewer': unknown field 'temprature': expected one of name, description, "
        "engine, settings, tools, output_schema, temperature, max_tokens, top_p, seed, presence_penalty, "
        "frequency_penalty, persona, persona_file (did you mean 'temperature'?)",
        "review.yaml:15: step 'reviewer': unknown field 'nedds': an agent step takes key, kind, needs, "
        "label, timeout_s, agent, prompt, max_attempts, backoff_s, artifact (did you mean 'needs'?)",
        "review.yaml:18: step 'synth': needs 'reviewr', which is not a step of this flow "
        "(did you mean 'reviewer'?)",
        "review.yaml:19: step 'ask': the needs form a cycle: ask -> later -> ask",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "name: x\ntitel: T\nsteps: {a: {prompt: Go.}}\n",
            "flow.yaml:2: flow 'x': unknown field 'titel': expected one of name, kind, title",
            id="unknown-flow-field",
        ),
        pytest.param(
            "name: x\nsteps:\n  a: {prompt: Go., timeout: 3}\n",
            "flow.yaml:3: step 'a': unknown field 'timeout'",
            id="unknown-step-field",
        ),
        pytest.param(
            "name: x\nrequire_confirmation: sometimes\nsteps: {a: {prompt: Go.}}\n",
            "flow.yaml:2: flow 'x': require_confirmation must be true or false, got 'sometimes'",
            id="wrong-type-bool",
        ),
        pytest.param(
            "name: x\nsteps:\n  a:\n    prompt: Go.\n    max_attempts: 0\n",
            "flow.yaml:5: step 'a': max_attempts must be a whole number of at least 1, got 0",
            id="wrong-type-int",
        ),
        pytest.param(
            "name: x\nsteps:\n  a:\n    prompt: Go.\n    needs: {b: 1}\n",
            "flow.yaml:5: step 'a': needs must be a list of step keys",
            id="wrong-type-needs",
        ),
        pytest.param(
            "name: x\nsteps:\n  a: {prompt: Go.}\n  b:\n    prompt: Then.\n"
            "    needs:\n      - a\n      - c\n",
            "flow.yaml:8: step 'b': needs 'c', which is not a step of this flow",
            id="unknown-need",
        ),
        pytest.param(
            "name: x\nsteps:\n  a: {prompt: Go., needs: [a]}\n",
            "flow.yaml:3: step 'a': the needs form a cycle: a -> a",
            id="self-cycle",
        ),
        pytest.param(
            "name: x\ncategory: Writing\nsteps: {a: {prompt: Go.}}\n",
            "flow.yaml:2: flow 'x': category 'Writing' is not one of Analysis, Discovery",
            id="bad-category",
        ),
        pytest.param(
            "name: x\nsteps:\n  a:\n    kind: input\n    prompt: Which?\n    schema:\n      type: object\n"
            "      properties:\n        n: {type: integer, minimum: low}\n",
            "flow.yaml:9: step 'a': schema is not a valid JSON Schema at properties/n/minimum",
            id="bad-answer-schema",
        ),
        pytest.param(
            "name: x\ninput_schema:\n  type: object\n  properties:\n    n: {type: integer, default: many}\n"
            "steps: {a: {prompt: Go.}}\n",
            "flow.yaml:5: flow 'x': input 'n': its default does not match its schema",
            id="bad-default",
        ),
        pytest.param(
            "name: x\nsteps:\n  a:\n    agent:\n      engine: default\n      output_schema: {type: nope}\n",
            "flow.yaml:6: agent 'a': output_schema is not a valid JSON Schema",
            id="bad-output-schema",
        ),
        pytest.param(
            "name: x\nsteps:\n  a: {call: 'os.path:no_such_function'}\n",
            "flow.yaml:3: step 'a': call 'os.path:no_such_function': module 'os.path' has no "
            "'no_such_function'",
            id="call-missing-attribute",
        ),
        pytest.param(
            "name: x\nsteps:\n  a: {call: os.path.join}\n",
            "flow.yaml:3: step 'a': call must be package.module:function, got 'os.path.join'",
            id="call-malformed",
        ),
        pytest.param(
            "name: x\nsteps:\n  a: {kind: input}\n",
            "flow.yaml:3: step 'a': an input step needs a prompt",
            id="input-without-prompt",
        ),
        pytest.param(
            "name: x\nsteps:\n  a: {label: nothing}\n",
            "flow.yaml:3: step 'a': say what it does",
            id="step-of-no-kind",
        ),
        pytest.param(
            "name: x\nbands:\n  small:\n    steps: [a, b]\nsteps: {a: {prompt: Go.}}\n",
            "flow.yaml:4: flow 'x': band 'small': 'b' is not a step of this flow",
            id="band-unknown-step",
        ),
        pytest.param(
            "name: x\nkind: loop\nproducer: w\nevaluator: e\nreviser: w\npass_threshold: 2\n",
            "flow.yaml:6: flow 'x': pass_threshold must be a number from 0 to 1, got 2",
            id="loop-threshold",
        ),
        pytest.param(
            "name: x\nkind: loop\nproducer: w\nreviser: w\n",
            "flow.yaml:1: flow 'x': a loop flow needs evaluator:",
            id="loop-missing-role",
        ),
        pytest.param(
            "name: x\nkind: loop\nproducer: w\nevaluator: e\nreviser: w\nsteps: {a: {prompt: Go.}}\n",
            "flow.yaml:6: flow 'x': unknown field 'steps'",
            id="loop-has-no-steps",
        ),
        pytest.param(
            "name: x\nkind: loop\nproducer: w\nevaluator: e\nreviser: w\nbands: {small: {}}\n",
            "flow.yaml:6: flow 'x': band 'small' needs max_attempts",
            id="loop-band-without-attempts",
        ),
        pytest.param(
            "name: x\nreport_template: |\n  # Title\n  {% if %}\nsteps: {a: {prompt: Go.}}\n",
            "flow.yaml:4: flow 'x': report_template:",
            id="report-template-syntax",
        ),
        pytest.param(
            "name: x\nsteps:\n  a: {prompt: Go.\n",
            "flow.yaml:4: not valid YAML",
            id="not-yaml",
        ),
        pytest.param(
            "name: Not A Name\nsteps: {a: {prompt: Go.}}\n",
            "flow.yaml:1: flow name must be letters, digits",
            id="bad-flow-name",
        ),
    ],
)
def test_each_mistake_is_reported_at_its_line(tmp_path: Path, text: str, expected: str) -> None:
    found = problems_of(write(tmp_path, text))
    assert any(problem.startswith(expected) for problem in found), found


def test_unknown_agent_names_are_refused_when_agents_are_known(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsteps:\n  a:\n    prompt: Go.\n    agent: critc\n")
    assert problems_of(path, agents=load_agents(AGENTS)) == [
        "flow.yaml:5: step 'a': agent 'critc' is not declared (declared: critic, planner, writer) "
        "(did you mean 'critic'?)"
    ]


def test_every_problem_of_a_folder_is_reported_at_once(tmp_path: Path) -> None:
    write(
        tmp_path, "flows:\n  - name: one\n    categry: Review\n    steps: {a: {prompt: Go.}}\n", "baton.yaml"
    )
    write(tmp_path, "name: two\nsteps:\n  b: {prompt: Go., needs: [z]}\n", "flows/two.yaml")
    write(tmp_path, "name: one\nsteps: {c: {prompt: Go.}}\n", "flows/three.yaml")
    found = read_yaml_flows(tmp_path)
    assert [p.replace(f"{tmp_path}/", "") for p in found.problems] == [
        "baton.yaml:3: flow 'one': unknown field 'categry': expected one of name, kind, title, description, "
        "category, version, input_schema, require_confirmation, policy, timeout_s, report_template, bands, "
        "steps (did you mean 'category'?)",
        "flows/three.yaml:1: flow 'one' is declared twice (first at baton.yaml:2)",
        "flows/two.yaml:3: step 'b': needs 'z', which is not a step of this flow",
    ]
    with pytest.raises(InvalidYamlFlows) as raised:
        load_yaml_flows(tmp_path)
    assert raised.value.problems == found.problems and "3 problems in the YAML flows" in raised.value.message


def test_a_folder_without_flows_and_a_missing_path_are_named(tmp_path: Path) -> None:
    assert read_yaml_flows(tmp_path).problems == [
        f"{tmp_path}: no flows here: expected baton.yaml or flows/*.yaml (or name a YAML file)"
    ]
    assert read_yaml_flows(tmp_path / "gone.yaml").problems == [
        f"{tmp_path / 'gone.yaml'}: no such file or folder of flows"
    ]


def test_a_flow_whose_only_mistake_is_in_an_inline_agent_reports_just_that(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsteps:\n  a:\n    agent:\n      engine: default\n      tools: nope\n")
    assert problems_of(path) == ["flow.yaml:6: agent 'a': tools must be a list of tool names, got 'nope'"]


def test_bands_of_python_flows_are_checked_when_the_catalog_takes_them() -> None:
    flow = Flow("banded", bands={"small": {"steps": ["a", "zz"]}})
    flow.agent("a", prompt="Go.")
    with pytest.raises(InvalidFlow, match="band 'small' names 'zz', which is not a step of this flow"):
        Catalog([flow])
    with pytest.raises(InvalidFlow, match="band 'tiny' is not one of small, medium, large"):
        Catalog([Flow("tiny", bands={"tiny": {}})])
