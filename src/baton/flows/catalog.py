"""The loaded flows, by name, and loading them from Python modules or files."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, ModuleType

from baton.domain.errors import BatonError, InvalidFlow, UnknownFlow
from baton.flows.inputs import validate_schema
from baton.flows.spec import Flow, check_bands

#: Modules loaded when no `--flows` is given; BATON_FLOWS adds to them.
DEFAULT_SOURCES = ("baton.examples",)


class Catalog:
    """Flows by name. A name is declared once: two flows may not share one."""

    def __init__(self, flows: Iterable[Flow] = ()) -> None:
        self._flows: dict[str, Flow] = {}
        self._origins: dict[str, str] = {}
        for flow in flows:
            self.add(flow)

    def add(self, flow: Flow, *, source: str | None = None) -> None:
        """Add `flow`, refusing another flow of the same name; re-adding the same object is a no-op."""
        existing = self._flows.get(flow.name)
        if existing is flow:
            return
        if existing is not None:
            where = f" (first from {self._origins[flow.name]})" if flow.name in self._origins else ""
            also = f", again from {source}" if source else ""
            raise InvalidFlow(f"flow {flow.name!r} is declared twice{where}{also}: flow names must be unique")
        validate_schema(flow.input_schema, what=f"the input schema of flow {flow.name}")
        check_bands(flow)
        self._flows[flow.name] = flow
        if source:
            self._origins[flow.name] = source

    def get(self, name: str) -> Flow:
        try:
            return self._flows[name]
        except KeyError:
            raise UnknownFlow(name, list(self._flows)) from None

    def names(self) -> list[str]:
        return sorted(self._flows)

    def as_mapping(self) -> Mapping[str, Flow]:
        """A live read-only view by name, for code that only looks flows up."""
        return MappingProxyType(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter([self._flows[name] for name in self.names()])

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, name: object) -> bool:
        return name in self._flows


def default_sources() -> list[str]:
    """`baton.examples` plus the comma-separated modules or files in BATON_FLOWS."""
    extra = [s.strip() for s in os.environ.get("BATON_FLOWS", "").split(",")]
    return list(dict.fromkeys([*DEFAULT_SOURCES, *(s for s in extra if s)]))


def load_catalog(sources: Sequence[str]) -> Catalog:
    """Collect the flows of each source: a dotted module name, a `.py` path, or YAML (a `.yaml`
    file, or a folder with `baton.yaml` or `flows/*.yaml`; see baton.flows.yaml_loader)."""
    from baton.flows.yaml_loader import is_yaml_source, load_yaml_flows

    catalog = Catalog()
    for source in sources:
        source = source.strip()
        if not source:
            continue
        found = load_yaml_flows(source) if is_yaml_source(source) else flows_in(_import(source), source)
        for flow in found:
            catalog.add(flow, source=source)
    return catalog


def flows_in(module: ModuleType, source: str) -> list[Flow]:
    """Every module-level Flow of `module`, and those of its `FLOWS` list, each once."""
    found: dict[int, Flow] = {}
    listed = getattr(module, "FLOWS", [])
    if not isinstance(listed, list | tuple) or not all(isinstance(f, Flow) for f in listed):
        raise InvalidFlow(f"flow source {source!r}: FLOWS must be a list of Flow objects")
    for value in [*listed, *vars(module).values()]:
        if isinstance(value, Flow):
            found.setdefault(id(value), value)
    return list(found.values())


def _is_path(source: str) -> bool:
    return source.endswith(".py") or "/" in source or os.sep in source


def _import(source: str) -> ModuleType:
    path = Path(source).expanduser().resolve() if _is_path(source) else None
    if path is not None and not path.is_file():
        raise InvalidFlow(f"cannot load flows from {source!r}: no such file ({path})")
    try:
        return _import_file(path) if path is not None else importlib.import_module(source)
    except (Exception, SystemExit) as error:  # SystemExit too: a flow file must not end the server
        reason = error.message if isinstance(error, BatonError) else f"{type(error).__name__}: {error}"
        raise InvalidFlow(f"cannot load flows from {source!r}: {reason}") from error


def _import_file(path: Path) -> ModuleType:
    # A name unique per path, so two files called flows.py do not replace each other.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_baton_flows_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python source file")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses and pickling look a module up by its name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
