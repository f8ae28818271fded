"""Flows declared in YAML, with every problem of a source reported at once as `file:line: …`.

A source is a YAML file or a folder. A folder contributes its `baton.yaml` (sections `flows:`,
`agents:`, `cli_agents:`), its `flows/*.yaml` files, and the agents of its `agents.yaml` and
`personas/` (see baton.agents.personas, which loads and checks every agent declaration). A file
holds either those sections or one flow at the top level:

    name: review                  # letters, digits, '_', '.', '-'
    title: Review a change
    category: Review              # Analysis, Discovery, Planning, Authoring or Review
    require_confirmation: true
    policy: {read_only: true}
    input_schema:                 # a JSON Schema; `default`s fill inputs a run leaves out
      type: object
      properties: {focus: {type: string, default: overall health}}
    bands:                        # sizes: the steps each runs (a loop: its max_attempts)
      small: {steps: [facts, reviewer]}
    report_template: |            # Jinja over run, steps, by_key
      # {{ run.title }}
    steps:                        # in order; a step is an agent, a code call or an input
      facts: {call: mypackage.facts:collect}           # fn(ctx), sync or async
      reviewer: {agent: critic, prompt: Review it., needs: [facts]}
      approve: {kind: input, prompt: Ship it?, schema: {type: object}, needs: [reviewer]}
      synth:
        agent: {persona: You summarize., engine: default, output_schema: {type: object}}
        needs: [reviewer, approve]

A loop flow (`kind: loop`) names `producer`, `evaluator` and `reviser` (an agent name, or
`{agent: …, prompt: …}`), `max_attempts` and `pass_threshold` instead of steps (see baton.flows.loop).

An agent named by a step is taken from the source's own agents (copied into the step), else from
the agents of BATON_AGENTS (looked up again when the step runs). A `call:` is imported from the
Python path, else from a `.py` file next to the YAML file.

Past the 800-line budget on purpose: most lines are the messages of individual checks, each naming
its field, value, line and fix; split graph steps and loop roles apart if it grows further.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from baton.agents import personas
from baton.agents.personas import AgentCatalog, AgentSpec, InvalidAgents
from baton.domain.errors import BatonError, InvalidDeclarations, InvalidFlow
from baton.domain.policy import FIELDS as POLICY_FIELDS
from baton.domain.policy import parse_layer
from baton.domain.status import StepKind
from baton.flows.loop import loop_flow
from baton.flows.spec import _KEY, BAND_NAMES, CATEGORIES, Flow, StepSpec, check_bands, find_cycle

# The agents loader's YAML reading: mappings and lists that remember the line of each entry.
_Located = personas._Located
_LocatedList = personas._LocatedList

YAML_SUFFIXES = (".yaml", ".yml")
#: The file of a folder that may declare flows, agents and cli agents together.
ROOT_NAMES = ("baton.yaml", "baton.yml")
#: The sub-folder of a folder whose YAML files declare flows.
FLOWS_DIR = "flows"

_SECTIONS = ("flows", "agents", "cli_agents")
_FLOW_COMMON = (
    "name",
    "kind",
    "title",
    "description",
    "category",
    "version",
    "input_schema",
    "require_confirmation",
    "policy",
    "timeout_s",
    "report_template",
    "bands",
)
_FLOW_FIELDS = {
    "graph": (*_FLOW_COMMON, "steps"),
    "loop": (*_FLOW_COMMON, "producer", "evaluator", "reviser", "max_attempts", "pass_threshold"),
}
_STEP_COMMON = ("key", "kind", "needs", "label", "timeout_s")
_STEP_FIELDS = {
    "agent": (*_STEP_COMMON, "agent", "prompt", "max_attempts", "backoff_s", "artifact"),
    "code": (*_STEP_COMMON, "call", "max_attempts", "backoff_s", "artifact"),
    "input": (*_STEP_COMMON, "prompt", "schema"),
}
_ROLES = ("producer", "evaluator", "reviser")
_ROLE_FIELDS = ("agent", "prompt", "timeout_s", "max_attempts")
_BAND_FIELDS = {"graph": ("steps", "description"), "loop": ("max_attempts", "description")}
_INLINE_AGENT_FIELDS = personas._ENTRY_FIELDS


class InvalidYamlFlows(InvalidDeclarations):
    """One or more YAML flow declarations are not valid; `problems` lists each as `file:line: …`."""

    subject = "the YAML flows"


@dataclass
class YamlFlows:
    """What a YAML source declares: its flows, where each is (`file:line`), and what is wrong."""

    flows: list[Flow] = field(default_factory=list)
    locations: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: remarks that are not errors, such as agents that can only be checked when a run starts
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def is_yaml_source(source: str | os.PathLike[str]) -> bool:
    """Whether a flow source names a YAML file or a folder (rather than a Python module or file)."""
    path = Path(source).expanduser()
    if path.suffix.lower() in YAML_SUFFIXES:
        return True
    if not path.is_dir():
        return False
    if any((path / name).is_file() for name in ROOT_NAMES) or _yaml_files(path / FLOWS_DIR):
        return True
    return not (path / "__init__.py").is_file()  # a Python package is imported as a module


def load_yaml_flows(source: str | os.PathLike[str], *, agents: AgentCatalog | None = None) -> list[Flow]:
    """The flows of a YAML file or folder.

    Raises:
        InvalidYamlFlows: listing every problem, each as `file:line: …`.
    """
    found = read_yaml_flows(source, agents=agents)
    if found.problems:
        raise InvalidYamlFlows(found.problems)
    return found.flows


def read_yaml_flows(source: str | os.PathLike[str], *, agents: AgentCatalog | None = None) -> YamlFlows:
    """Read and check a YAML source without raising: its flows and every problem found.

    `agents` are the declared agents steps may name besides the source's own; by default the
    agents of BATON_AGENTS, when it is set.
    """
    reader = _Reader(agents)
    reader.read(Path(source).expanduser())
    result = reader.result
    result.problems = _in_file_order([*reader.problems, *reader.agents.problems])
    return result


# --- reading -------------------------------------------------------------------------------------


@dataclass
class _StepDecl:
    key: str
    line: int
    kind: StepKind
    needs: list[tuple[str, int]]
    build: Callable[[Flow, tuple[str, ...]], None]


class _Reader:
    def __init__(self, agents: AgentCatalog | None) -> None:
        self.result = YamlFlows()
        self.problems: list[str] = []
        #: the agents loader: checks inline and declared agents, collects their problems
        self.agents = personas._Loader()
        self.external = agents
        self.where: dict[str, str] = {}
        #: folders a `call:` module may also be found in: the YAML file's, then the source's
        self.folders: list[Path] = []

    def count(self) -> int:
        """Problems found so far, the agent loader's included."""
        return len(self.problems) + len(self.agents.problems)

    # --- files

    def read(self, path: Path) -> None:
        if not path.exists():
            self.problems.append(f"{path}: no such file or folder of flows")
            return
        files = self.files_of(path)
        if files is None:
            return
        self.result.files = files
        self.folders = [path] if path.is_dir() else []
        parsed = [(file, self.agents.parse_yaml(file, self.agents.read(file))) for file in files]
        if path.is_dir() and _folder_has_agents(path, dict(parsed)):
            self.agents.load_folder(path)  # agents.yaml, baton.yaml's agents:, personas/*.md
        for file, data in parsed:
            if isinstance(data, _Located) and "agents" in data and not (path.is_dir() and _is_root(file)):
                self.declared_agents(file, data)
        if self.external is None and personas.default_agent_sources():
            try:
                self.external = personas.load_agent_sources(personas.default_agent_sources())
            except InvalidAgents as error:
                self.problems += [f"{personas.AGENTS_ENV}: {problem}" for problem in error.problems]
        for file, data in parsed:
            self.file(file, data)

    def files_of(self, path: Path) -> list[Path] | None:
        if path.is_file():
            if path.suffix.lower() not in YAML_SUFFIXES:
                self.problems.append(f"{path}: not a YAML file: expected .yaml or .yml, or a folder")
                return None
            return [path]
        roots = [path / name for name in ROOT_NAMES if (path / name).is_file()]
        found = _yaml_files(path / FLOWS_DIR)
        if not roots and not found:
            self.problems.append(
                f"{path}: no flows here: expected baton.yaml or {FLOWS_DIR}/*.yaml (or name a YAML file)"
            )
            return None
        return [*roots, *found]

    def declared_agents(self, path: Path, data: _Located) -> None:
        for entry, name, line in self.agents.entries(path, data, "agents"):
            self.agents.add(self.agents.entry(path, entry, name, line))

    def file(self, path: Path, data: Any) -> None:
        if data is None:
            return  # empty, or not YAML: the parser said so
        if not isinstance(data, _Located):
            self.problems.append(
                f"{path}:1: expected a flow (a mapping with name and steps) or a flows: list"
            )
            return
        if any(key in data for key in _SECTIONS):
            for key in data:
                if key not in _SECTIONS:
                    self.problems.append(
                        f"{path}:{data.key_lines[key]}: unknown top-level field {key!r}: expected "
                        f"{', '.join(_SECTIONS)}{_did_you_mean(key, _SECTIONS)}"
                    )
            for entry, name, line in self.entries(path, data, "flows"):
                self.flow(path, entry, name, line)
        else:
            self.flow(path, data, "", data.line)

    def entries(self, path: Path, data: _Located, section: str) -> Iterable[tuple[_Located, str, int]]:
        value = data.get(section)
        line = data.key_lines.get(section, data.line)
        if value is None:
            return []
        if isinstance(value, _Located):
            items = [(entry, str(name), value.key_lines[name]) for name, entry in value.items()]
        elif isinstance(value, _LocatedList):
            items = [(entry, "", item_line) for entry, item_line in zip(value, value.item_lines, strict=True)]
        else:
            self.problems.append(
                f"{path}:{line}: {section} must be a list of entries or a mapping of name → entry, "
                f"got {_show(value)}"
            )
            return []
        kept = []
        for entry, key, entry_line in items:
            if not isinstance(entry, _Located):
                self.problems.append(
                    f"{path}:{entry_line}: each {section} entry must be a mapping of fields, "
                    f"got {_show(entry)}"
                )
            else:
                kept.append((entry, key, entry_line))
        return kept

    # --- one flow

    def flow(self, path: Path, data: _Located, key: str, line: int) -> None:
        before = self.count()
        at = _At(path, data)
        given = data.get("name")
        if key and given is not None and given != key:
            self.problems.append(
                at.key("name", f"flow {key!r} has another name {given!r}: drop name: or agree")
            )
        name = key or given
        if name is None:
            self.problems.append(f"{path}:{line}: a flow needs a name: give `name:`")
            return
        if not isinstance(name, str) or not _KEY.match(name):
            where = at.line_of("name") if given is not None else line
            self.problems.append(
                f"{path}:{where}: flow name must be letters, digits, '_', '.' or '-', got {_show(name)}"
            )
            return
        label = f"flow {name!r}"
        kind = data.get("kind", "graph")
        if kind not in _FLOW_FIELDS:
            self.problems.append(at.key("kind", f"{label}: kind must be graph or loop, got {_show(kind)}"))
            return
        for field_name in data:
            if field_name not in _FLOW_FIELDS[kind]:
                self.problems.append(at.unknown(label, field_name, _FLOW_FIELDS[kind]))
        if name in self.where:
            self.problems.append(f"{path}:{line}: {label} is declared twice (first at {self.where[name]})")
        self.where.setdefault(name, f"{path}:{line}")

        options: dict[str, Any] = {"name": name}
        for field_name in ("title", "description"):
            if field_name in data:
                options[field_name] = self.text(at, label, field_name)
        if "version" in data:
            version = data["version"]
            if isinstance(version, str | int | float) and not isinstance(version, bool):
                options["version"] = str(version)
            else:
                self.problems.append(
                    at.key("version", f"{label}: version must be text, got {_show(version)}")
                )
        if "category" in data:
            category = data["category"]
            if category in CATEGORIES:
                options["category"] = category
            else:
                self.problems.append(
                    at.key(
                        "category",
                        f"{label}: category {_show(category)} is not one of {', '.join(CATEGORIES)}"
                        + _did_you_mean(category, CATEGORIES),
                    )
                )
        if "require_confirmation" in data:
            options["require_confirmation"] = self.boolean(at, label, "require_confirmation")
        if "timeout_s" in data:
            options["timeout_s"] = self.seconds(at, label, "timeout_s")
        if "input_schema" in data:
            options["input_schema"] = self.input_schema(at, label)
        if "policy" in data:
            options["policy"] = self.policy(at, label)
        if "report_template" in data:
            options["report_template"] = self.template(at, label)

        steps = self.steps(path, data, label) if kind == "graph" else []
        roles: dict[str, Any] = {r: self.role(at, label, r) for r in _ROLES} if kind == "loop" else {}
        loop = self.loop_settings(at, label) if kind == "loop" else {}
        bands = self.bands(at, label, kind, {s.key for s in steps})
        if self.count() > before:
            return  # a flow is built only when its declaration is clean
        try:
            flow = (
                _graph(options, steps, bands)
                if kind == "graph"
                else loop_flow(**options, **roles, **loop, bands=bands)
            )
        except (BatonError, TypeError, ValueError) as error:  # checked above; kept for safety
            self.problems.append(f"{path}:{line}: {label}: {_message(error)}")
            return
        self.result.flows.append(flow)
        self.result.locations[flow.name] = f"{path}:{line}"

    # --- flow fields

    def text(self, at: _At, label: str, key: str) -> str:
        value = at.data[key]
        if isinstance(value, str):
            return value
        self.problems.append(at.key(key, f"{label}: {key} must be text, got {_show(value)}"))
        return ""

    def boolean(self, at: _At, label: str, key: str) -> bool:
        value = at.data[key]
        if isinstance(value, bool):
            return value
        self.problems.append(at.key(key, f"{label}: {key} must be true or false, got {_show(value)}"))
        return False

    def seconds(self, at: _At, label: str, key: str) -> float | None:
        value = at.data[key]
        if value is None:
            return None
        if _number(value) and value > 0:
            return float(value)
        self.problems.append(
            at.key(key, f"{label}: {key} must be a positive number of seconds, got {_show(value)}")
        )
        return None

    def whole(self, at: _At, label: str, key: str, minimum: int = 1) -> int:
        value = at.data[key]
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        self.problems.append(
            at.key(key, f"{label}: {key} must be a whole number of at least {minimum}, got {_show(value)}")
        )
        return minimum

    def schema(self, at: _At, label: str, key: str) -> dict[str, Any] | None:
        value = at.data[key]
        if not isinstance(value, Mapping):
            self.problems.append(
                at.key(key, f"{label}: {key} must be a JSON Schema (a mapping), got {_show(value)}")
            )
            return None
        plain = _plain(value)
        try:
            Draft202012Validator.check_schema(plain)
        except SchemaError as error:
            inner = tuple(error.path)
            where = f" at {'/'.join(map(str, inner))}" if inner else ""
            self.problems.append(
                at.deep((key, *inner), f"{label}: {key} is not a valid JSON Schema{where}: {error.message}")
            )
            return None
        return dict(plain)

    def input_schema(self, at: _At, label: str) -> dict[str, Any] | None:
        schema = self.schema(at, label, "input_schema")
        if schema is None:
            return None
        properties = schema.get("properties")
        if isinstance(properties, Mapping):
            for prop_name, prop in properties.items():
                if not isinstance(prop, Mapping) or "default" not in prop:
                    continue
                for error in Draft202012Validator(prop).iter_errors(prop["default"]):
                    self.problems.append(
                        at.deep(
                            ("input_schema", "properties", prop_name, "default"),
                            f"{label}: input {prop_name!r}: its default does not match its schema: "
                            f"{error.message}",
                        )
                    )
                    break
        return schema

    def policy(self, at: _At, label: str) -> dict[str, Any]:
        value = at.data["policy"]
        if not isinstance(value, Mapping):
            self.problems.append(
                at.key(
                    "policy",
                    f"{label}: policy must be a mapping such as {{read_only: true}}, got {_show(value)}",
                )
            )
            return {}
        clean: dict[str, Any] = {}
        for key, setting in value.items():
            if key not in POLICY_FIELDS:
                self.problems.append(
                    at.deep(
                        ("policy", key),
                        f"{label}: unknown policy field {key!r}: expected one of {', '.join(POLICY_FIELDS)}"
                        + _did_you_mean(key, POLICY_FIELDS),
                    )
                )
                continue
            try:
                clean.update(parse_layer({key: _plain(setting)}, layer="flow"))
            except BatonError as error:
                self.problems.append(at.deep(("policy", key), f"{label}: {_message(error)}"))
        return clean

    def template(self, at: _At, label: str) -> str:
        text = self.text(at, label, "report_template")
        try:
            SandboxedEnvironment().parse(text)
        except TemplateSyntaxError as error:
            # A block scalar (`|`) starts on the line after its key.
            line = at.line_of("report_template") + ((error.lineno or 1) if "\n" in text else 0)
            self.problems.append(f"{at.path}:{line}: {label}: report_template: {error.message}")
        return text

    def bands(self, at: _At, label: str, kind: str, step_keys: set[str]) -> dict[str, Any]:
        if "bands" not in at.data:
            return {}
        value = at.data["bands"]
        if not isinstance(value, _Located):
            self.problems.append(
                at.key("bands", f"{label}: bands must map small/medium/large to settings, got {_show(value)}")
            )
            return {}
        bands: dict[str, Any] = {}
        for name, band in value.items():
            path = ("bands", name)
            if name not in BAND_NAMES:
                self.problems.append(
                    at.deep(
                        path,
                        f"{label}: band {name!r} is not one of {', '.join(BAND_NAMES)}"
                        + _did_you_mean(name, BAND_NAMES),
                    )
                )
                continue
            if band is None and kind == "graph":
                bands[name] = {}  # the whole flow
                continue
            if not isinstance(band, _Located):
                what = "{steps: [...]}" if kind == "graph" else "{max_attempts: 2}"
                self.problems.append(
                    at.deep(path, f"{label}: band {name!r} must be a mapping such as {what}")
                )
                continue
            inner = _At(at.path, band)
            for key in band:
                if key not in _BAND_FIELDS[kind]:
                    self.problems.append(inner.unknown(f"{label}: band {name!r}", key, _BAND_FIELDS[kind]))
            if "description" in band:
                self.text(inner, f"{label}: band {name!r}", "description")
            if kind == "loop" and "max_attempts" in band:
                self.whole(inner, f"{label}: band {name!r}", "max_attempts")
            elif kind == "loop":
                self.problems.append(at.deep(path, f"{label}: band {name!r} needs max_attempts"))
            if kind == "graph" and "steps" in band:
                self.band_steps(inner, f"{label}: band {name!r}", step_keys)
            bands[name] = _plain(band)
        return bands

    def band_steps(self, at: _At, label: str, step_keys: set[str]) -> None:
        chosen = at.data["steps"]
        if not isinstance(chosen, _LocatedList) or not chosen:
            self.problems.append(at.key("steps", f"{label}: steps must be a non-empty list of step keys"))
            return
        for item, item_line in zip(chosen, chosen.item_lines, strict=True):
            if item not in step_keys:
                self.problems.append(
                    f"{at.path}:{item_line}: {label}: {_show(item)} is not a step of this flow"
                    + _did_you_mean(item, step_keys)
                )

    # --- graph steps

    def steps(self, path: Path, data: _Located, label: str) -> list[_StepDecl]:
        at = _At(path, data)
        if "steps" not in data:
            self.problems.append(f"{path}:{data.line}: {label}: a graph flow needs steps:")
            return []
        declared: list[_StepDecl] = []
        seen: dict[str, int] = {}
        for entry, key, line in self.entries(path, data, "steps"):
            given = entry.get("key")
            if key and given is not None and given != key:
                self.problems.append(_At(path, entry).key("key", f"step {key!r} has another key {given!r}"))
                continue
            step_key = key or given
            if step_key is None:
                self.problems.append(f"{path}:{line}: {label}: a step needs a key: give `key:`")
                continue
            if not isinstance(step_key, str) or not _KEY.match(step_key):
                self.problems.append(
                    f"{path}:{line}: {label}: a step key must be letters, digits, '_', '.' or '-', "
                    f"got {_show(step_key)}"
                )
                continue
            key = step_key
            if key in seen:
                self.problems.append(
                    f"{path}:{line}: step {key!r} is declared twice (first on line {seen[key]})"
                )
                continue
            seen[key] = line
            decl = self.step(path, entry, key, line)
            if decl is not None:
                declared.append(decl)
        if isinstance(data["steps"], list | dict) and not data["steps"]:
            self.problems.append(at.key("steps", f"{label}: steps is empty: declare at least one step"))
        known = set(seen)
        for decl in declared:
            for need, need_line in decl.needs:
                if need not in known:
                    self.problems.append(
                        f"{path}:{need_line}: step {decl.key!r}: needs {need!r}, which is not a step of "
                        f"this flow{_did_you_mean(need, known)}"
                    )
        cycle = find_cycle(
            [
                StepSpec(key=d.key, kind=d.kind, needs=tuple(n for n, _ in d.needs if n in known))
                for d in declared
            ]
        )
        if cycle:
            first = next(d for d in declared if d.key == cycle[0])
            self.problems.append(
                f"{path}:{first.line}: step {first.key!r}: the needs form a cycle: {' -> '.join(cycle)}"
            )
        return declared

    def step(self, path: Path, data: _Located, key: str, line: int) -> _StepDecl | None:
        before = self.count()
        at = _At(path, data)
        label = f"step {key!r}"
        kind = data.get("kind")
        if kind is None:
            kind = "code" if "call" in data else "agent" if ("agent" in data or "prompt" in data) else None
        if kind not in _STEP_FIELDS:
            if "kind" in data:
                message = f"{label}: kind must be agent, code or input, got {_show(kind)}"
                self.problems.append(at.key("kind", message))
            else:
                self.problems.append(
                    f"{path}:{line}: {label}: say what it does: agent: NAME (or an inline agent), "
                    "call: package.module:function, or kind: input with a prompt"
                )
            return None
        for field_name in data:
            if field_name not in _STEP_FIELDS[kind]:
                self.problems.append(at.unknown(label, field_name, _STEP_FIELDS[kind], kind=kind))
        needs = self.needs(at, label)
        common: dict[str, Any] = {}
        if "label" in data:
            common["label"] = self.text(at, label, "label")
        if "timeout_s" in data:
            common["timeout_s"] = self.seconds(at, label, "timeout_s")
        retries: dict[str, Any] = {}
        if "max_attempts" in data:
            retries["max_attempts"] = self.whole(at, label, "max_attempts")
        if "backoff_s" in data:
            value = data["backoff_s"]
            if _number(value) and value >= 0:
                retries["backoff_s"] = float(value)
            else:
                self.problems.append(
                    at.key("backoff_s", f"{label}: backoff_s must be a number ≥ 0, got {_show(value)}")
                )
        if "artifact" in data:
            retries["artifact"] = self.text(at, label, "artifact")
        prompt = self.text(at, label, "prompt") if "prompt" in data else ""

        build: Callable[[Flow, tuple[str, ...]], None]
        if kind == "input":
            if not prompt.strip():
                self.problems.append(
                    f"{path}:{line}: {label}: an input step needs a prompt: the question to ask"
                )
            schema = self.schema(at, label, "schema") if "schema" in data else None

            def build(flow: Flow, needs: tuple[str, ...]) -> None:
                flow.input(key, prompt=prompt, schema=schema, needs=needs, **common)

            kind_enum = StepKind.INPUT
        elif kind == "code":
            fn = self.call(at, label) if "call" in data else None
            if "call" not in data:
                self.problems.append(
                    f"{path}:{line}: {label}: a code step needs call: package.module:function"
                )

            def build(flow: Flow, needs: tuple[str, ...]) -> None:
                assert fn is not None
                flow.step(key, needs=needs, **common, **retries)(fn)

            kind_enum = StepKind.CODE
        else:
            agent = self.agent(at, label, key) if "agent" in data else None

            def build(flow: Flow, needs: tuple[str, ...]) -> None:
                flow.agent(key, agent=agent, prompt=prompt, needs=needs, **common, **retries)

            kind_enum = StepKind.AGENT
        if self.count() > before:
            return _StepDecl(key, line, kind_enum, needs, _never)
        return _StepDecl(key, line, kind_enum, needs, build)

    def needs(self, at: _At, label: str) -> list[tuple[str, int]]:
        if "needs" not in at.data:
            return []
        value = at.data["needs"]
        line = at.line_of("needs")
        if isinstance(value, str):
            return [(value, line)]
        if not isinstance(value, _LocatedList) or not all(isinstance(n, str) for n in value):
            self.problems.append(
                at.key("needs", f"{label}: needs must be a list of step keys, got {_show(value)}")
            )
            return []
        return list(zip(value, value.item_lines, strict=True))

    def call(self, at: _At, label: str) -> Callable[..., Any] | None:
        target = at.data["call"]
        if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
            self.problems.append(
                at.key("call", f"{label}: call must be package.module:function, got {_show(target)}")
            )
            return None
        module_name, attr = target.split(":")
        try:
            module = _import_near(module_name, [at.path.parent, *self.folders])
        except Exception as error:  # any import failure of user code is the declaration's problem
            self.problems.append(
                at.key(
                    "call", f"{label}: call {target!r} cannot be imported: {type(error).__name__}: {error}"
                )
            )
            return None
        fn = getattr(module, attr, None)
        if fn is None:
            self.problems.append(
                at.key("call", f"{label}: call {target!r}: module {module_name!r} has no {attr!r}")
            )
            return None
        if not callable(fn):
            self.problems.append(at.key("call", f"{label}: call {target!r} is not a function"))
            return None
        return fn

    def agent(self, at: _At, label: str, key: str) -> str | dict[str, Any] | None:
        """A declared agent's name (looked up when the step runs), or the agent's fields."""
        value = at.data["agent"]
        line = at.line_of("agent")
        if isinstance(value, str):
            local = self.agents.catalog
            if value in local:
                return _fields_of(local.get(value))
            if self.external is not None and value in self.external:
                return value
            known = [*local.names(), *(self.external.names() if self.external is not None else [])]
            if self.external is not None or len(local):
                self.problems.append(
                    f"{at.path}:{line}: {label}: agent {value!r} is not declared "
                    f"(declared: {', '.join(sorted(known)) or 'none'}){_did_you_mean(value, known)}"
                )
                return None
            self.result.notes.append(
                f"{at.path}:{line}: {label}: agent {value!r} is looked up when the run starts "
                f"(no agents to check it against here: set {personas.AGENTS_ENV} or pass --agents)"
            )
            return value
        if not isinstance(value, _Located):
            self.problems.append(
                f"{at.path}:{line}: {label}: agent must be an agent's name or an inline agent "
                f"(persona, engine, tools, output_schema…), got {_show(value)}"
            )
            return None
        if "persona" in value or "persona_file" in value:
            spec = self.agents.entry(at.path, value, key, value.line)
            return _fields_of(spec) if spec is not None else None
        fields = self.agents.fields(at.path, value, key, _INLINE_AGENT_FIELDS)
        clean: dict[str, Any] = {"name": fields.get("name", key)}
        for name in ("description", "engine", "tools", "output_schema"):
            if name in fields:
                clean[name] = list(fields[name]) if name == "tools" else fields[name]
        if "settings" in fields:
            clean["model_settings"] = dict(fields["settings"])
        return clean

    # --- loops

    def role(self, at: _At, label: str, role: str) -> dict[str, Any] | None:
        if role not in at.data:
            self.problems.append(f"{at.path}:{at.data.line}: {label}: a loop flow needs {role}: (an agent)")
            return None
        value = at.data[role]
        role_label = f"{label}: {role}"
        if isinstance(value, str):
            holder = _Located({"agent": value})
            holder.line, holder.key_lines = at.line_of(role), {"agent": at.line_of(role)}
            return {"agent": self.agent(_At(at.path, holder), role_label, role)}
        if not isinstance(value, _Located):
            self.problems.append(
                at.key(
                    role,
                    f"{role_label} must be an agent's name or {{agent: NAME, prompt: …}}, got {_show(value)}",
                )
            )
            return None
        inner = _At(at.path, value)
        for key in value:
            if key not in _ROLE_FIELDS:
                self.problems.append(inner.unknown(role_label, key, _ROLE_FIELDS))
        found: dict[str, Any] = {
            "prompt": self.text(inner, role_label, "prompt") if "prompt" in value else ""
        }
        if "agent" in value:
            found["agent"] = self.agent(inner, role_label, role)
        else:
            found["engine"] = "default"
        if "timeout_s" in value:
            found["timeout_s"] = self.seconds(inner, role_label, "timeout_s")
        if "max_attempts" in value:
            found["max_attempts"] = self.whole(inner, role_label, "max_attempts")
        return found

    def loop_settings(self, at: _At, label: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if "max_attempts" in at.data:
            found["max_attempts"] = self.whole(at, label, "max_attempts")
        if "pass_threshold" in at.data:
            value = at.data["pass_threshold"]
            if _number(value) and 0 <= value <= 1:
                found["pass_threshold"] = float(value)
            else:
                self.problems.append(
                    at.key(
                        "pass_threshold",
                        f"{label}: pass_threshold must be a number from 0 to 1, got {_show(value)}",
                    )
                )
        return found


# --- helpers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _At:
    """A mapping read from a file, to name the line of one of its fields."""

    path: Path
    data: _Located

    def line_of(self, key: str) -> int:
        return int(self.data.key_lines.get(key, self.data.line))

    def key(self, key: str, message: str) -> str:
        return f"{self.path}:{self.line_of(key)}: {message}"

    def deep(self, keys: Sequence[Any], message: str) -> str:
        return f"{self.path}:{personas._line_at(self.data, keys)}: {message}"

    def unknown(self, label: str, key: Any, allowed: Sequence[str], *, kind: str = "") -> str:
        expected = f"expected one of {', '.join(allowed)}"
        if kind:
            expected = f"a{'n' if kind[0] in 'aeiou' else ''} {kind} step takes {', '.join(allowed)}"
        return self.key(key, f"{label}: unknown field {key!r}: {expected}{_did_you_mean(key, allowed)}")


def _never(flow: Flow, needs: tuple[str, ...]) -> None:  # pragma: no cover - built only when valid
    raise InvalidFlow("this step has problems and cannot be built")


def _graph(options: Mapping[str, Any], steps: Sequence[_StepDecl], bands: Mapping[str, Any]) -> Flow:
    flow = Flow(**options, bands=bands)
    # Added in an order where each step's needs come first, then put back in file order.
    order = {s.key: i for i, s in enumerate(steps)}
    for decl in _topological(steps):
        decl.build(flow, tuple(n for n, _ in decl.needs))
    flow.steps.sort(key=lambda s: order[s.key])
    check_bands(flow)
    return flow


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in YAML_SUFFIXES and p.is_file())


def _is_root(path: Path) -> bool:
    return path.name.lower() in ROOT_NAMES


def _folder_has_agents(folder: Path, parsed: Mapping[Path, Any]) -> bool:
    """Whether the agents loader finds agents in `folder` (it complains about a folder without)."""
    if any((folder / name).is_file() for name in personas.YAML_NAMES if not name.startswith("baton.")):
        return True
    if any(p.is_file() for sub in personas.PERSONA_DIRS for p in (folder / sub).glob("*.md")):
        return True
    return any(
        isinstance(data, _Located) and ("agents" in data or "cli_agents" in data)
        for path, data in parsed.items()
        if _is_root(path)
    )


def _fields_of(spec: AgentSpec) -> dict[str, Any]:
    data = spec.to_json()
    return {
        key: data[key]
        for key in ("name", "description", "persona", "engine", "model_settings", "tools", "output_schema")
        if data.get(key) not in (None, "", [], {})
    }


def _topological(steps: Sequence[_StepDecl]) -> list[_StepDecl]:
    """Steps in an order where each comes after its needs, otherwise in their given order."""
    placed: set[str] = set()
    left = list(steps)
    ordered: list[_StepDecl] = []
    while left:
        ready = next((s for s in left if all(n in placed for n, _ in s.needs)), None)
        if ready is None:  # a cycle or an unknown need: reported before; add the rest as they are
            return ordered + left
        ordered.append(ready)
        placed.add(ready.key)
        left.remove(ready)
    return ordered


def _import_near(module_name: str, folders: Sequence[Path]) -> Any:
    """Import a module from the Python path, or else from a `.py` file under one of `folders`."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        top = module_name.split(".")[0]
        found = [f.joinpath(*module_name.split(".")).with_suffix(".py") for f in folders]
        candidate = next((c for c in found if c.is_file()), None)
        if error.name != top or candidate is None:
            raise
    from baton.flows.catalog import _import_file

    return _import_file(candidate.resolve())


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _message(error: BaseException) -> str:
    text = error.message if isinstance(error, BatonError) else str(error)
    # Flow's own checks start with "flow NAME: "; the caller names the flow already.
    return text.split(": ", 1)[1] if text.startswith("flow ") and ": " in text else text


def _plain(value: Any) -> Any:
    return personas._plain(value)


def _show(value: Any) -> str:
    return personas._show(value)


def _did_you_mean(key: Any, options: Iterable[str]) -> str:
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _in_file_order(problems: Sequence[str]) -> list[str]:
    """Problems grouped by file, by line within a file, each once."""

    def order(problem: str) -> tuple[str, int]:
        path, _, rest = problem.partition(":")
        line = rest.partition(":")[0]
        return (path, int(line) if line.isdigit() else 0)

    return sorted(dict.fromkeys(problems), key=order)
