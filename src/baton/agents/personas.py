"""Agent declarations: in Python, in Markdown persona files with a front-matter, or in `agents.yaml`.

Every problem found while loading names the file and line, the agent, the field and what was
expected; all the problems of a load are collected and raised together as one `InvalidAgents`.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel

from baton.domain.errors import InvalidDeclarations, NotFound

#: The environment variable that picks the engine of agents whose engine is `default`.
DEFAULT_ENGINE_ENV = "BATON_DEFAULT_ENGINE"
#: The environment variable listing agent sources (comma-separated files or folders).
AGENTS_ENV = "BATON_AGENTS"
#: Files loaded from an agents folder.
YAML_NAMES = ("agents.yaml", "agents.yml", "baton.yaml", "baton.yml")
#: Sub-folders of an agents folder whose `*.md` files are persona files.
PERSONA_DIRS = ("personas", "agents")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

#: (message, path inside the field's value): the path finds the line of a nested problem.
Problem = tuple[str, tuple[Any, ...]]


def _number(low: float, high: float) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value) and low <= value <= high

    return ok


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Model settings an agent may declare: name → (check, what is expected). pydantic-ai's names.
SETTINGS: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (_number(0, 2), "a number between 0 and 2"),
    "max_tokens": (lambda v: _whole(v) and v >= 1, "a whole number of at least 1"),
    "top_p": (_number(0, 1), "a number between 0 and 1"),
    "seed": (_whole, "a whole number"),
    "presence_penalty": (_number(-2, 2), "a number between -2 and 2"),
    "frequency_penalty": (_number(-2, 2), "a number between -2 and 2"),
}


class InvalidAgents(InvalidDeclarations):
    """One or more agent declarations are not valid; `problems` lists each as `file:line: …`."""

    subject = "the agent declarations"


class UnknownAgent(NotFound):
    """No agent with that name is loaded."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"unknown agent {name!r}: the loaded agents are {', '.join(self.known) or 'none'}. "
            f"Declare it in agents.yaml or a persona file and load it with {AGENTS_ENV}."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.known))


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSpec:
    """A named worker persona: its system prompt, engine, model settings, tools and output schema."""

    name: str
    #: the system prompt (Markdown)
    persona: str
    description: str = ""
    #: an engine spec (`offline`, `openai:MODEL`, `cli:NAME`, …); `default`: see `resolve_engine_spec`
    engine: str = "offline"
    #: pydantic-ai model settings, each one of `SETTINGS`
    model_settings: Mapping[str, Any] = field(default_factory=dict)
    #: names of registered tools (see `baton.agents.tools`)
    tools: tuple[str, ...] = ()
    #: the JSON Schema structured output must satisfy; None means free text
    output_schema: Mapping[str, Any] | None = None
    #: where it was declared (`file:line` when known), for messages
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_settings", dict(self.model_settings))
        object.__setattr__(self, "tools", tuple(self.tools))
        if self.output_schema is not None:
            object.__setattr__(self, "output_schema", _plain(self.output_schema))
        values = {
            "name": self.name,
            "description": self.description,
            "engine": self.engine,
            "settings": self.model_settings,
            "tools": list(self.tools),
            "output_schema": self.output_schema,
        }
        found = [message for key, value in values.items() for message, _ in check_field(key, value)]
        if not isinstance(self.persona, str) or not self.persona.strip():
            found.append(_MISSING_PERSONA)
        if found:
            where = f"{self.source}: " if self.source else ""
            raise InvalidAgents([f"{where}agent {self.name!r}: {message}" for message in found])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view for `baton agents ls` and `/v1/agents` (`engine` as declared)."""
        return {
            "name": self.name,
            "description": self.description,
            "engine": self.engine,
            "model_settings": dict(self.model_settings),
            "tools": list(self.tools),
            "output_schema": _plain(self.output_schema),
            "persona": self.persona,
            "source": self.source,
        }


_MISSING_PERSONA = "missing persona: give the system prompt (Markdown text)"


def agent(
    name: str,
    *,
    persona: str,
    engine: str = "offline",
    description: str = "",
    settings: Mapping[str, Any] | None = None,
    tools: Sequence[str] = (),
    output: type[BaseModel] | Mapping[str, Any] | None = None,
) -> AgentSpec:
    """Declare an agent in Python.

    Args:
        name: the agent's name (letters, digits, `_`, `.`, `-`).
        persona: the system prompt (Markdown).
        engine: an engine spec; `default` means BATON_DEFAULT_ENGINE, or `offline` when unset.
        description: one line for listings.
        settings: model settings: `temperature` (0 to 2), `max_tokens` (1 or more), `top_p` (0 to 1), ...
        tools: names of registered tools.
        output: a pydantic model class or a JSON Schema that the structured output must satisfy.

    Raises:
        InvalidAgents: naming each invalid field.
    """
    frame = inspect.currentframe()
    caller = frame.f_back if frame is not None else None
    source = f"{caller.f_code.co_filename}:{caller.f_lineno}" if caller is not None else ""
    given: object = output  # checked at run time too: Python callers are not always type-checked
    schema: Mapping[str, Any] | None
    if isinstance(given, type) and issubclass(given, BaseModel):
        schema = given.model_json_schema()
    elif given is None or isinstance(given, Mapping):
        schema = given
    else:
        message = f"output must be a pydantic model class or a JSON Schema mapping, got {_show(given)}"
        raise InvalidAgents([f"{source}: agent {name!r}: {message}"])
    return AgentSpec(
        name=name,
        persona=persona,
        description=description,
        engine=engine,
        model_settings=dict(settings or {}),
        tools=(tools,) if isinstance(tools, str) else tuple(tools),
        output_schema=schema,
        source=source,
    )


def resolve_engine_spec(spec: str | None, environ: Mapping[str, str] | None = None) -> str:
    """`spec` itself, or for `default`/None/"" the value of BATON_DEFAULT_ENGINE, else `offline`."""
    if spec and spec != "default":
        return spec
    chosen = (os.environ if environ is None else environ).get(DEFAULT_ENGINE_ENV, "").strip()
    return chosen if chosen and chosen != "default" else "offline"


def default_agent_sources() -> list[str]:
    """The comma-separated files or folders in BATON_AGENTS, in order, each once."""
    listed = (part.strip() for part in os.environ.get(AGENTS_ENV, "").split(","))
    return list(dict.fromkeys(part for part in listed if part))


class AgentCatalog:
    """Agents by name, plus the raw `cli_agents` entries of the loaded files (parsed by the CLI engine)."""

    def __init__(self, agents: Iterable[AgentSpec] = ()) -> None:
        self._agents: dict[str, AgentSpec] = {}
        #: `cli_agents` entries by name, as plain YAML data
        self.cli_agents: dict[str, Any] = {}
        #: where each `cli_agents` entry was declared, `file:line`
        self.cli_agent_sources: dict[str, str] = {}
        for spec in agents:
            self.add(spec)

    def add(self, spec: AgentSpec) -> None:
        """Add `spec`, refusing a second agent of the same name; re-adding the same object is a no-op."""
        existing = self._agents.get(spec.name)
        if existing is spec:
            return
        if existing is not None:
            where = f"{spec.source}: " if spec.source else ""
            raise InvalidAgents(
                [
                    f"{where}agent {spec.name!r} is declared twice: first at "
                    f"{existing.source or 'an unnamed source'}; agent names must be unique"
                ]
            )
        self._agents[spec.name] = spec

    def add_cli_agent(self, name: str, entry: Any, *, source: str = "") -> None:
        """Keep one raw `cli_agents` entry; a name may be declared once."""
        if name in self.cli_agents:
            first = self.cli_agent_sources.get(name) or "an unnamed source"
            where = f"{source}: " if source else ""
            raise InvalidAgents([f"{where}cli agent {name!r} is declared twice: first at {first}"])
        self.cli_agents[name] = entry
        self.cli_agent_sources[name] = source

    def get(self, name: str) -> AgentSpec:
        try:
            return self._agents[name]
        except KeyError:
            raise UnknownAgent(name, self._agents) from None

    def names(self) -> list[str]:
        return sorted(self._agents)

    def resolve_engine_spec(self, spec: str | None) -> str:
        """`spec`, or BATON_DEFAULT_ENGINE (else `offline`) for `default`/None; read at each call."""
        return resolve_engine_spec(spec)

    def engine_for(self, name: str) -> str:
        """The engine spec agent `name` runs with, `default` resolved."""
        return resolve_engine_spec(self.get(name).engine)

    def __iter__(self) -> Iterator[AgentSpec]:
        return iter([self._agents[name] for name in self.names()])

    def __len__(self) -> int:
        return len(self._agents)

    def __contains__(self, name: object) -> bool:
        return name in self._agents


def load_agents(path: str | os.PathLike[str]) -> AgentCatalog:
    """Load an `agents.yaml`, a persona `.md` file, or a folder of them.

    A folder contributes its `agents.yaml`/`baton.yaml` and every `*.md` file of its `personas/`
    or `agents/` sub-folder (a file already named by a `persona_file:` is not loaded twice).

    Raises:
        InvalidAgents: listing every problem, each as `file:line: agent 'NAME': …`.
    """
    return load_agent_sources([path])


def load_agent_sources(sources: Iterable[str | os.PathLike[str]]) -> AgentCatalog:
    """Load several sources (such as `default_agent_sources()`) into one catalog; all problems at once."""
    loader = _Loader()
    for source in sources:
        loader.load_path(Path(source))
    loader.raise_problems()
    return loader.catalog


def load_persona_file(path: str | os.PathLike[str]) -> AgentSpec:
    """One agent from a Markdown file: a YAML front-matter between `---` lines, body = persona.

    Front-matter fields: name (default: the file's stem), description, engine, tools,
    output_schema (an inline JSON Schema), settings, or the settings themselves (temperature, …).
    """
    loader = _Loader()
    spec = loader.persona_file(Path(path))
    loader.raise_problems()
    if spec is None:  # pragma: no cover - None always comes with a problem
        raise InvalidAgents([f"{path}: not a valid persona file"])
    return spec


# --- checks shared by Python declarations and files ----------------------------------------------


def check_field(key: str, value: Any) -> list[Problem]:
    """The problems of one declaration field (`settings`, a setting name, `tools`, …); [] when valid."""
    if value is None:
        return []
    if key in SETTINGS:
        ok, expected = SETTINGS[key]
        return [] if ok(value) else [(f"{key} must be {expected}, got {_show(value)}", ())]
    if key == "name":
        if isinstance(value, str) and _NAME_RE.match(value):
            return []
        return [(f"name must be letters, digits, '_', '.' or '-', got {_show(value)}", ())]
    if key in ("description", "persona"):
        return [] if isinstance(value, str) else [(f"{key} must be text, got {_show(value)}", ())]
    if key == "engine":
        if isinstance(value, str) and value.strip() and not any(c.isspace() for c in value):
            return []
        return [(f"engine must be a spec such as offline, default, ollama:MODEL, got {_show(value)}", ())]
    if key == "persona_file":
        if isinstance(value, str) and value.strip():
            return []
        return [(f"persona_file must be the path of a Markdown file, got {_show(value)}", ())]
    if key == "tools":
        if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
            return [(f"tools must be a list of tool names, got {_show(value)}", ())]
        return []
    if key == "settings":
        if not isinstance(value, Mapping):
            return [(f"settings must be a mapping such as {{temperature: 0.2}}, got {_show(value)}", ())]
        found: list[Problem] = []
        for name, setting in value.items():
            if name not in SETTINGS:
                unknown = f"unknown setting {name!r}: expected one of {', '.join(SETTINGS)}"
                found.append((unknown + _did_you_mean(name, SETTINGS), (name,)))
            else:
                found += [(message, (name,)) for message, _ in check_field(name, setting)]
        return found
    if key == "output_schema":
        if not isinstance(value, Mapping):
            return [(f"output_schema must be a JSON Schema (a mapping), got {_show(value)}", ())]
        try:
            Draft202012Validator.check_schema(_plain(value))
        except SchemaError as error:
            where = tuple(error.path)
            at = f" at {'/'.join(str(part) for part in where)}" if where else ""
            return [(f"output_schema is not a valid JSON Schema{at}: {error.message}", where)]
        return []
    return [(f"unknown field {key!r}", ())]


# --- YAML with line numbers ----------------------------------------------------------------------


class _Located(dict[Any, Any]):
    """A YAML mapping that remembers its own line and the line of each key."""

    line: int = 0
    key_lines: dict[Any, int]


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings are `_Located` and that refuses a key given twice."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Iterator[_Located]:
    data = _Located()
    data.line, data.key_lines = node.start_mark.line + 1, {}
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value", key_node.start_mark
            )
        if key in data:
            first = data.key_lines[key]
            raise yaml.constructor.ConstructorError(
                None, None, f"{key!r} is given twice (first on line {first})", key_node.start_mark
            )
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = key_node.start_mark.line + 1


class _LocatedList(list[Any]):
    """A YAML sequence that remembers its own line and the line of each item."""

    line: int = 0
    item_lines: list[int]


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> Iterator[_LocatedList]:
    data = _LocatedList()
    data.line, data.item_lines = node.start_mark.line + 1, [n.start_mark.line + 1 for n in node.value]
    yield data
    data.extend(loader.construct_object(child) for child in node.value)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _line_at(data: _Located, path: Iterable[Any]) -> int:
    """The line of the deepest mapping key or list item along `path` inside `data`."""
    line: int = data.line
    node: Any = data
    for step in path:
        if isinstance(node, _Located) and step in node:
            line, node = node.key_lines.get(step, line), node[step]
        elif isinstance(node, _LocatedList) and isinstance(step, int) and 0 <= step < len(node):
            line, node = node.item_lines[step], node[step]
        else:
            break
    return line


# --- loading -------------------------------------------------------------------------------------

_FRONT_MATTER_FIELDS = ("name", "description", "engine", "settings", "tools", "output_schema", *SETTINGS)
_ENTRY_FIELDS = (*_FRONT_MATTER_FIELDS, "persona", "persona_file")
_TOP_LEVEL = ("agents", "cli_agents")


class _Loader:
    """Reads files into one catalog, collecting every problem as `file:line: …`."""

    def __init__(self) -> None:
        self.catalog = AgentCatalog()
        self.problems: list[str] = []
        #: persona files already read through a `persona_file:` (resolved)
        self.used: set[Path] = set()

    def raise_problems(self) -> None:
        if self.problems:
            raise InvalidAgents(self.problems)

    def add(self, spec: AgentSpec | None) -> None:
        try:
            if spec is not None:
                self.catalog.add(spec)
        except InvalidAgents as error:
            self.problems += error.problems

    def load_path(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if path.is_dir():
            self.load_folder(path)
        elif not path.exists():
            self.problems.append(f"{path}: no such file or folder of agents")
        elif suffix in (".yaml", ".yml"):
            self.yaml_file(path)
        elif suffix == ".md":
            self.add(self.persona_file(path))
        else:
            self.problems.append(f"{path}: not an agents file: expected .yaml, a .md persona or a folder")

    def load_folder(self, folder: Path) -> None:
        yaml_files = [folder / name for name in YAML_NAMES if (folder / name).is_file()]
        personas = sorted(
            path
            for sub in PERSONA_DIRS
            for path in (folder / sub).glob("*.md")
            if path.is_file() and path.name.lower() != "readme.md"
        )
        if not yaml_files and not personas:
            self.problems.append(
                f"{folder}: no agents here: expected agents.yaml or baton.yaml, "
                "or *.md persona files in personas/ or agents/"
            )
        for path in yaml_files:
            self.yaml_file(path)
        for path in personas:
            if path.resolve() not in self.used:
                self.add(self.persona_file(path))

    def yaml_file(self, path: Path) -> None:
        data = self.parse_yaml(path, self.read(path))
        if data is None:
            return
        if not isinstance(data, _Located):
            self.problems.append(f"{path}:1: expected a mapping with an `agents:` list at the top")
            return
        if not path.name.lower().startswith("baton."):  # baton.yaml holds other sections too
            for key in data:
                if key not in _TOP_LEVEL:
                    self.problems.append(
                        f"{path}:{data.key_lines[key]}: unknown top-level field {key!r}: expected "
                        f"agents or cli_agents{_did_you_mean(key, _TOP_LEVEL)}"
                    )
        for entry, name, line in self.entries(path, data, "agents"):
            self.add(self.entry(path, entry, name, line))
        for entry, name, line in self.entries(path, data, "cli_agents"):
            try:
                self.catalog.add_cli_agent(name, _plain(entry), source=f"{path}:{line}")
            except InvalidAgents as error:
                self.problems += error.problems

    def entries(self, path: Path, data: _Located, section: str) -> Iterator[tuple[_Located, str, int]]:
        """(entry, name, line) of a section written as a list of entries or a mapping name → entry."""
        value = data.get(section)
        line = data.key_lines.get(section, data.line)
        if value is None:
            return
        if isinstance(value, _Located):
            items = [(entry, str(name), value.key_lines[name]) for name, entry in value.items()]
        elif isinstance(value, _LocatedList):
            items = [(entry, "", item_line) for entry, item_line in zip(value, value.item_lines, strict=True)]
        else:
            self.problems.append(
                f"{path}:{line}: {section} must be a list of entries or a mapping of name → entry, "
                f"got {_show(value)}"
            )
            return
        for entry, key, entry_line in items:
            if not isinstance(entry, _Located):
                self.problems.append(
                    f"{path}:{entry_line}: each {section} entry must be a mapping of fields, "
                    f"got {_show(entry)}"
                )
                continue
            given = entry.get("name")
            if key and given is not None and given != key:
                self.problems.append(
                    f"{path}:{entry.key_lines['name']}: {section} entry {key!r} has another name "
                    f"{given!r}: drop `name:` or make them agree"
                )
                continue
            name = key or (given if isinstance(given, str) else "")
            if section == "cli_agents" and not name:
                self.problems.append(f"{path}:{entry.line}: a cli agent needs a `name:`")
                continue
            yield entry, name, entry_line

    def entry(self, path: Path, entry: _Located, name: str, line: int) -> AgentSpec | None:
        """One `agents:` entry, over the front-matter of its `persona_file` when it has one."""
        before = len(self.problems)
        fields = self.fields(path, entry, name, _ENTRY_FIELDS)
        if name and "name" not in entry:  # the mapping form: named by its key
            self.report(path, line, name, check_field("name", name))
            fields["name"] = name
        base: dict[str, Any] = {}
        if "persona_file" in fields:
            where = f"{path}:{entry.key_lines['persona_file']}"
            target = (path.parent / fields.pop("persona_file")).resolve()
            if "persona" in fields:
                self.problems.append(f"{where}: agent {name!r}: give persona or persona_file, not both")
            elif not target.is_file():
                self.problems.append(
                    f"{where}: agent {name!r}: persona_file {entry['persona_file']!r} not found "
                    f"(looked for {target})"
                )
            else:
                self.used.add(target)
                base = self.front_matter(target) or {}
                base.setdefault("name", target.stem)
        elif "persona" not in entry:
            self.problems.append(
                f"{path}:{line}: agent {name or fields.get('name', '?')!r}: missing persona: give persona "
                "(inline text) or persona_file (a Markdown file, relative to this file)"
            )
        if "name" not in entry and not name and not base:
            self.problems.append(f"{path}:{line}: an agent: missing name: give `name:`")
        if len(self.problems) > before:
            return None
        settings = {**base.get("settings", {}), **fields.get("settings", {})}
        return self.build({**base, **fields, "settings": settings}, f"{path}:{line}")

    def persona_file(self, path: Path) -> AgentSpec | None:
        before = len(self.problems)
        fields = self.front_matter(path)
        if fields is None or len(self.problems) > before:
            return None
        fields.setdefault("name", path.stem)
        return self.build(fields, str(path))

    def front_matter(self, path: Path) -> dict[str, Any] | None:
        """The checked front-matter fields of a persona file plus `persona` (its body)."""
        text = self.read(path)
        if text is None:
            return None
        lines = text.splitlines(keepends=True)
        fields: dict[str, Any] = {}
        body_line = 1
        if lines and lines[0].strip() == "---":
            end = next((i for i in range(1, len(lines)) if lines[i].rstrip() in ("---", "...")), None)
            if end is None:
                self.problems.append(f"{path}:1: the front-matter opened by '---' is never closed by '---'")
                return None
            # One newline of padding, so that YAML marks are the file's own line numbers.
            data = self.parse_yaml(path, "\n" + "".join(lines[1:end]))
            text, body_line = "".join(lines[end + 1 :]), end + 2
            if isinstance(data, _Located):
                fields = self.fields(path, data, path.stem, _FRONT_MATTER_FIELDS)
            elif data is not None:
                self.problems.append(f"{path}:2: the front-matter must be a mapping, got {_show(data)}")
        fields["persona"] = text.strip()
        if not fields["persona"]:
            name = fields.get("name", path.stem)
            self.problems.append(
                f"{path}:{body_line}: agent {name!r}: missing persona: write the system prompt "
                "below the front-matter"
            )
        return fields

    def fields(self, path: Path, data: _Located, name: str, allowed: Sequence[str]) -> dict[str, Any]:
        """The valid fields of one declaration; each invalid one becomes a problem at its line."""
        given = data.get("name")
        name = given if isinstance(given, str) and given else name
        clean: dict[str, Any] = {}
        settings: dict[str, Any] = {}
        for key, value in data.items():
            if key not in allowed:
                message = f"unknown field {key!r}: expected one of {', '.join(allowed)}"
                self.report(path, data.key_lines[key], name, [(message + _did_you_mean(key, allowed), ())])
                continue
            found = check_field(key, value)
            self.report(path, data, name, found, key)
            if found or value is None:
                continue
            if key in SETTINGS or key == "settings":
                given_settings = {key: value} if key in SETTINGS else value
                for twice in settings.keys() & given_settings.keys():
                    line = _line_at(data, (key, twice) if key == "settings" else (key,))
                    self.report(path, line, name, [(f"{twice} is given twice (alone and in settings)", ())])
                settings.update(given_settings)
            else:
                clean[key] = tuple(dict.fromkeys(value)) if key == "tools" else _plain(value)
                if key == "persona":
                    clean[key] = value.strip()
        if settings:
            clean["settings"] = _plain(settings)
        return clean

    def report(
        self, path: Path, where: _Located | int, name: str, found: list[Problem], key: str = ""
    ) -> None:
        for message, inner in found:
            line = where if isinstance(where, int) else _line_at(where, (key, *inner))
            agent_name = f"agent {name!r}" if name else "an agent"
            self.problems.append(f"{path}:{line}: {agent_name}: {message}")

    def build(self, fields: Mapping[str, Any], source: str) -> AgentSpec | None:
        try:
            return AgentSpec(
                name=fields["name"],
                persona=fields.get("persona", ""),
                description=fields.get("description", ""),
                engine=fields.get("engine", "offline"),
                model_settings=fields.get("settings", {}),
                tools=fields.get("tools", ()),
                output_schema=fields.get("output_schema"),
                source=source,
            )
        except InvalidAgents as error:  # checked field by field above; kept for safety
            self.problems += error.problems
            return None

    def read(self, path: Path) -> str | None:
        try:
            return path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            self.problems.append(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})")
        except OSError as error:
            self.problems.append(f"{path}: cannot be read: {error.strerror or error}")
        return None

    def parse_yaml(self, path: Path, text: str | None) -> Any:
        if text is None:
            return None
        try:
            return yaml.load(text, Loader=_LineLoader)  # a SafeLoader: plain data only
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line = f"{mark.line + 1}:" if mark is not None else ""
            what = " ".join(part for part in (error.context, error.problem) if part)
            self.problems.append(f"{path}:{line} not valid YAML: {what}")
        except yaml.YAMLError as error:
            self.problems.append(f"{path}: not valid YAML: {error}")
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _show(value: Any) -> str:
    text = repr(_plain(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(key: Any, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1) if isinstance(key, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""
