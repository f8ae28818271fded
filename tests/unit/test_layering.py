"""The package layering of STYLE.md: lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "baton"

#: package -> the baton packages it may import (itself always allowed)
ALLOWED = {
    "domain": set(),
    # flows may read agent declarations (YAML flows declare agents); agents never import flows
    "flows": {"domain", "agents"},
    "store": {"domain"},
    "agents": {"domain"},
    "engine": {"domain", "flows", "store", "agents", "config", "telemetry"},
}
#: leaf modules every layer may use: they import no other baton layer
UTILITIES = {"failpoints", "redaction"}


def _baton_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("baton."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("baton."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    allowed = ALLOWED[layer] | {layer} | UTILITIES
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(_baton_imports(path) - allowed)
        for path in (PACKAGE / layer).rglob("*.py")
        if _baton_imports(path) - allowed
    }
    assert offenders == {}


@pytest.mark.parametrize("utility", sorted(UTILITIES))
def test_utilities_import_no_layer(utility: str) -> None:
    path = PACKAGE / f"{utility}.py"
    if not path.exists():
        pytest.skip(f"{utility}.py is not part of this checkout")
    assert _baton_imports(path) - UTILITIES == set()
