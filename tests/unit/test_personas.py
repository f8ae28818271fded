"""Agent declarations: Python, persona files, agents.yaml; every error names its file and line."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from baton.agents.personas import (
    AgentCatalog,
    AgentSpec,
    InvalidAgents,
    UnknownAgent,
    agent,
    default_agent_sources,
    load_agent_sources,
    load_agents,
    load_persona_file,
    resolve_engine_spec,
)
from baton.domain.errors import InvalidFlow, NotFound

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "agents"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(InvalidAgents) as caught:
        load_agents(path)
    return caught.value.problems


# --- persona files -------------------------------------------------------------------------------


def test_a_persona_file_has_settings_in_its_front_matter(tmp_path: Path) -> None:
    path = write(
        tmp_path / "reviewer.md",
        """
        ---
        description: Reviews code.
        engine: ollama:qwen2.5
        temperature: 0.3
        settings:
          max_tokens: 500
        tools: [read_file, search_files]
        output_schema:
          type: object
          properties: {verdict: {type: string}}
        ---

        You review code **carefully**.

        Be brief.
        """,
    )
    spec = load_persona_file(path)
    assert spec == AgentSpec(
        name="reviewer",
        persona="You review code **carefully**.\n\nBe brief.",
        description="Reviews code.",
        engine="ollama:qwen2.5",
        model_settings={"temperature": 0.3, "max_tokens": 500},
        tools=("read_file", "search_files"),
        output_schema={"type": "object", "properties": {"verdict": {"type": "string"}}},
        source=str(path),
    )


def test_a_persona_file_without_front_matter_is_all_persona(tmp_path: Path) -> None:
    spec = load_persona_file(write(tmp_path / "plain.md", "# Plain\n\nJust a prompt.\n"))
    assert (spec.name, spec.persona, spec.engine, spec.model_settings) == (
        "plain",
        "# Plain\n\nJust a prompt.",
        "offline",
        {},
    )


def test_the_front_matter_may_name_the_agent(tmp_path: Path) -> None:
    spec = load_persona_file(write(tmp_path / "file.md", "---\nname: other\n---\nHello.\n"))
    assert spec.name == "other"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("---\nname: x\nHello\n", "x.md:1: the front-matter opened by '---' is never closed by '---'"),
        ("---\nname: x\n---\n\n", "x.md:4: agent 'x': missing persona: write the system prompt below"),
        ("---\ntemperature: 3\n---\nHi\n", "x.md:2: agent 'x': temperature must be a number between 0 and 2"),
        ("---\n- a list\n---\nHi\n", "x.md:2: the front-matter must be a mapping, got ['a list']"),
        ("---\nname: [unclosed\n---\nHi\n", "x.md:3: not valid YAML"),
        ("---\nengine: a\nengine: b\n---\nHi\n", "x.md:3: not valid YAML: 'engine' is given twice (first on"),
    ],
)
def test_persona_file_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "x.md", text)
    with pytest.raises(InvalidAgents) as caught:
        load_persona_file(path)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(str(tmp_path / expected))


# --- agents.yaml ---------------------------------------------------------------------------------


def test_the_fixture_folder_loads_yaml_and_persona_files() -> None:
    catalog = load_agents(FIXTURES)
    assert catalog.names() == ["critic", "planner", "writer"]

    critic = catalog.get("critic")
    assert critic.engine == "default"
    assert critic.model_settings == {"temperature": 0.2, "max_tokens": 800}
    assert critic.tools == ("list_files", "read_file", "search_files")
    assert critic.output_schema is not None and critic.output_schema["required"] == ["score", "notes"]
    assert critic.persona.startswith("You are a careful critic.")
    assert critic.source == f"{FIXTURES / 'agents.yaml'}:4"

    # persona_file: the front-matter, with the entry's own fields on top; loaded once only.
    writer = catalog.get("writer")
    assert writer.model_settings == {"temperature": 0.7, "max_tokens": 1200}
    assert writer.tools == ("read_file",)
    assert writer.persona.startswith("You are a clear, concise technical writer.")

    planner = catalog.get("planner")
    assert planner.source == str(FIXTURES / "personas" / "planner.md")
    assert planner.model_settings == {"temperature": 0.1}

    assert catalog.cli_agents["echo"]["command"][0] == "python"
    assert catalog.cli_agent_sources["echo"].startswith(f"{FIXTURES / 'agents.yaml'}:")


def test_agents_may_be_a_mapping_of_name_to_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path / "agents.yaml",
        """
        agents:
          summarizer:
            persona: Summarize.
            engine: openai:gpt-4o-mini
            settings: {top_p: 0.9, seed: 7}
          checker:
            name: checker
            persona: Check.
        """,
    )
    catalog = load_agents(path)
    assert catalog.names() == ["checker", "summarizer"]
    summarizer = catalog.get("summarizer")
    assert summarizer.model_settings == {"top_p": 0.9, "seed": 7}
    assert summarizer.source == f"{path}:2"
    assert summarizer.to_json()["engine"] == "openai:gpt-4o-mini"


def test_baton_yaml_may_hold_other_sections(tmp_path: Path) -> None:
    write(tmp_path / "baton.yaml", "server: {port: 1}\nagents:\n  - name: a\n    persona: Hi.\n")
    assert load_agents(tmp_path).names() == ["a"]


BAD = """
agents:
  - name: critic
    persona: Be critical.
    temperature: hot
  - name: writer
    persona: Write.
    temprature: 0.3
  - name: planner
    persona: Plan.
    output_schema:
      type: object
      properties:
        steps: {type: strin}
  - name: empty
    engine: offline
  - name: missing
    persona_file: personas/nope.md
  - name: tuned
    persona: Tune.
    settings:
      top_p: 3
      temperatur: 1
extras: 1
"""


def test_every_problem_is_reported_at_once_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "agents.yaml", BAD)
    with pytest.raises(InvalidAgents) as caught:
        load_agents(path)
    f = str(path)
    assert caught.value.problems == [
        f"{f}:23: unknown top-level field 'extras': expected agents or cli_agents",
        f"{f}:4: agent 'critic': temperature must be a number between 0 and 2, got 'hot'",
        f"{f}:7: agent 'writer': unknown field 'temprature': expected one of name, description, engine, "
        "settings, tools, output_schema, temperature, max_tokens, top_p, seed, presence_penalty, "
        "frequency_penalty, persona, persona_file (did you mean 'temperature'?)",
        f"{f}:13: agent 'planner': output_schema is not a valid JSON Schema at properties/steps/type: "
        "'strin' is not valid under any of the given schemas",
        f"{f}:14: agent 'empty': missing persona: give persona (inline text) or persona_file "
        "(a Markdown file, relative to this file)",
        f"{f}:17: agent 'missing': persona_file 'personas/nope.md' not found "
        f"(looked for {tmp_path / 'personas' / 'nope.md'})",
        f"{f}:21: agent 'tuned': top_p must be a number between 0 and 1, got 3",
        f"{f}:22: agent 'tuned': unknown setting 'temperatur': expected one of temperature, max_tokens, "
        "top_p, seed, presence_penalty, frequency_penalty (did you mean 'temperature'?)",
    ]
    assert caught.value.message.startswith("8 problems in the agent declarations:\n  ")
    assert isinstance(caught.value, InvalidFlow)
    assert pickle.loads(pickle.dumps(caught.value)).problems == caught.value.problems


def test_duplicate_names_name_both_sources(tmp_path: Path) -> None:
    write(tmp_path / "agents.yaml", "agents:\n  - name: critic\n    persona: One.\n")
    write(tmp_path / "personas" / "critic.md", "The other critic.\n")
    assert problems_of(tmp_path) == [
        f"{tmp_path / 'personas' / 'critic.md'}: agent 'critic' is declared twice: "
        f"first at {tmp_path / 'agents.yaml'}:2; agent names must be unique"
    ]


def test_duplicates_inside_one_file_name_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "agents.yaml",
        "agents:\n  - name: a\n    persona: One.\n  - name: a\n    persona: Two.\n",
    )
    assert problems_of(path) == [
        f"{path}:4: agent 'a' is declared twice: first at {path}:2; agent names must be unique"
    ]


@pytest.mark.parametrize(
    ("yaml_text", "line", "message"),
    [
        ("agents:\n  - persona: Hi.\n", 2, "an agent: missing name: give `name:`"),
        ("agents:\n  - name: a\n    persona: Hi\n    persona_file: a.md\n", 4, "agent 'a': give persona or"),
        (
            "agents:\n  - name: a\n    persona: Hi\n    tools: read_file\n",
            4,
            "agent 'a': tools must be a list",
        ),
        (
            "agents:\n  - name: a\n    persona: Hi\n    max_tokens: 0\n",
            4,
            "agent 'a': max_tokens must be a whole",
        ),
        ("agents:\n  - name: a\n    persona: Hi\n    max_tokens: true\n", 4, "agent 'a': max_tokens must be"),
        ("agents:\n  - name: a\n    persona: Hi\n    engine: ''\n", 4, "agent 'a': engine must be a spec"),
        ("agents:\n  - name: bad name\n    persona: Hi\n", 2, "agent 'bad name': name must be letters"),
        ("agents:\n  x:\n    name: y\n    persona: Hi\n", 3, "agents entry 'x' has another name 'y'"),
        ("agents:\n  - just text\n", 2, "each agents entry must be a mapping of fields"),
        ("agents: 3\n", 1, "agents must be a list of entries or a mapping of name → entry, got 3"),
        ("- a\n", 1, "expected a mapping with an `agents:` list at the top"),
        (
            "agents:\n  - name: a\n    persona: Hi\n    temperature: 1\n    settings: {temperature: 1}\n",
            5,
            "twice",
        ),
        ("agents:\n  - name: a\n    persona: [1\n", 4, "not valid YAML"),
        (
            "agents:\n  - name: a\n    persona: Hi\n    output_schema:\n      required:\n        - 1\n",
            6,
            "output_schema is not a valid JSON Schema at required/0: 1 is not of type 'string'",
        ),
        (
            "agents:\n  - name: a\n    persona: Hi\n    output_schema: 3\n",
            4,
            "output_schema must be a JSON Schema",
        ),
    ],
)
def test_entry_errors_name_the_line(tmp_path: Path, yaml_text: str, line: int, message: str) -> None:
    path = write(tmp_path / "agents.yaml", yaml_text)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line}:")
    assert message in problem


def test_persona_file_errors_point_into_the_persona_file(tmp_path: Path) -> None:
    write(tmp_path / "p" / "w.md", "---\ntop_p: 2\n---\nWrite.\n")
    path = write(tmp_path / "agents.yaml", "agents:\n  - persona_file: p/w.md\n")
    assert problems_of(path) == [
        f"{tmp_path / 'p' / 'w.md'}:2: agent 'w': top_p must be a number between 0 and 1, got 2"
    ]


def test_missing_sources_and_empty_folders_are_reported(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'}: no such file or folder of agents"]
    assert problems_of(tmp_path)[0].startswith(f"{tmp_path}: no agents here")
    text = write(tmp_path / "notes.txt", "x")
    assert "not an agents file" in problems_of(text)[0]


def test_several_sources_load_into_one_catalog(tmp_path: Path) -> None:
    extra = write(tmp_path / "extra.md", "---\nengine: default\n---\nExtra.\n")
    catalog = load_agent_sources([FIXTURES, extra])
    assert catalog.names() == ["critic", "extra", "planner", "writer"]


# --- Python declarations -------------------------------------------------------------------------


class Verdict(BaseModel):
    score: float = Field(ge=0, le=10)
    notes: list[str]


def test_agent_in_python_with_a_pydantic_output() -> None:
    spec = agent(
        "judge",
        persona="Judge the draft.",
        engine="default",
        settings={"temperature": 0},
        tools=["read_file"],
        output=Verdict,
    )
    assert spec.output_schema == Verdict.model_json_schema()
    assert spec.output_schema["required"] == ["score", "notes"]
    assert spec.source.startswith(f"{__file__}:")
    assert spec.tools == ("read_file",)


def test_agent_in_python_with_a_json_schema_output() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    assert agent("checker", persona="Check.", output=schema).output_schema == schema


def test_agent_in_python_reports_every_invalid_field() -> None:
    with pytest.raises(InvalidAgents) as caught:
        agent(
            "judge",
            persona=" ",
            settings={"temperature": "hot", "top_k": 3},
            output={"type": "strin"},
        )
    assert [problem.split(": agent 'judge': ")[1] for problem in caught.value.problems] == [
        "temperature must be a number between 0 and 2, got 'hot'",
        "unknown setting 'top_k': expected one of temperature, max_tokens, top_p, seed, "
        "presence_penalty, frequency_penalty (did you mean 'top_p'?)",
        "output_schema is not a valid JSON Schema at type: "
        "'strin' is not valid under any of the given schemas",
        "missing persona: give the system prompt (Markdown text)",
    ]
    assert caught.value.problems[0].startswith(f"{__file__}:")
    with pytest.raises(InvalidAgents, match="output must be a pydantic model class or a JSON Schema"):
        agent("judge", persona="x", output=str)  # type: ignore[arg-type]


# --- the catalog and engines ---------------------------------------------------------------------


def test_an_unknown_agent_lists_the_known_ones() -> None:
    catalog = AgentCatalog([agent("b", persona="B."), agent("a", persona="A.")])
    with pytest.raises(UnknownAgent) as caught:
        catalog.get("c")
    assert caught.value.message.startswith("unknown agent 'c': the loaded agents are a, b.")
    assert isinstance(caught.value, NotFound)
    assert [spec.name for spec in catalog] == ["a", "b"]
    assert len(catalog) == 2 and "a" in catalog and "c" not in catalog


def test_adding_the_same_spec_twice_is_a_no_op() -> None:
    spec = agent("a", persona="A.")
    catalog = AgentCatalog([spec, spec])
    assert catalog.names() == ["a"]
    with pytest.raises(InvalidAgents, match="agent 'a' is declared twice: first at "):
        catalog.add(agent("a", persona="Again."))


def test_default_engine_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = AgentCatalog(
        [agent("fixed", persona="F.", engine="offline"), agent("switchable", persona="S.", engine="default")]
    )
    monkeypatch.delenv("BATON_DEFAULT_ENGINE", raising=False)
    assert catalog.engine_for("switchable") == "offline"
    assert catalog.resolve_engine_spec(None) == "offline"

    monkeypatch.setenv("BATON_DEFAULT_ENGINE", "ollama:qwen2.5")
    assert catalog.engine_for("switchable") == "ollama:qwen2.5"
    assert catalog.resolve_engine_spec("default") == "ollama:qwen2.5"
    assert catalog.resolve_engine_spec(None) == "ollama:qwen2.5"
    assert catalog.engine_for("fixed") == "offline"
    assert resolve_engine_spec("openai:gpt-4o") == "openai:gpt-4o"
    assert resolve_engine_spec("default", {"BATON_DEFAULT_ENGINE": "default"}) == "offline"
    assert resolve_engine_spec("default", {}) == "offline"


def test_agent_sources_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_AGENTS", raising=False)
    assert default_agent_sources() == []
    monkeypatch.setenv("BATON_AGENTS", " ./agents , team/agents.yaml,,./agents")
    assert default_agent_sources() == ["./agents", "team/agents.yaml"]
