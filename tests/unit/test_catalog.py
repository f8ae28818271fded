"""The flow catalog: lookups by name and loading flows from modules and files."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from baton.domain.errors import InvalidFlow, UnknownFlow
from baton.flows.catalog import Catalog, default_sources, load_catalog
from baton.flows.spec import Flow


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def test_flows_are_found_by_name_and_listed_sorted() -> None:
    beta, alpha = Flow("beta"), Flow("alpha")
    catalog = Catalog([beta, alpha])
    assert catalog.get("alpha") is alpha
    assert catalog.names() == ["alpha", "beta"]
    assert list(catalog) == [alpha, beta]
    assert len(catalog) == 2
    assert "beta" in catalog
    assert "gamma" not in catalog


def test_an_unknown_name_lists_the_known_ones() -> None:
    catalog = Catalog([Flow("beta"), Flow("alpha")])
    with pytest.raises(UnknownFlow) as caught:
        catalog.get("gamma")
    assert "unknown flow 'gamma': the loaded flows are alpha, beta" in caught.value.message
    assert caught.value.status_code == 422


def test_two_flows_may_not_share_a_name() -> None:
    catalog = Catalog([Flow("demo")])
    with pytest.raises(InvalidFlow, match="flow 'demo' is declared twice"):
        catalog.add(Flow("demo"))


def test_adding_the_same_flow_again_is_harmless() -> None:
    flow = Flow("demo")
    catalog = Catalog([flow])
    catalog.add(flow)
    assert list(catalog) == [flow]


def test_a_flow_with_an_invalid_input_schema_is_refused() -> None:
    with pytest.raises(InvalidFlow, match="the input schema of flow demo is not a valid JSON Schema"):
        Catalog([Flow("demo", input_schema={"type": "nonsense"})])


def test_loading_a_file_collects_module_level_flows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "flows.py",
        """
        from baton.flows.spec import Flow

        research = Flow("research", category="Discovery")
        review = Flow("review", category="Review")
        alias = research
        not_a_flow = "research"
        """,
    )
    catalog = load_catalog([str(path)])
    assert catalog.names() == ["research", "review"]
    assert catalog.get("review").category == "Review"


def test_a_flows_list_is_collected_too(tmp_path: Path) -> None:
    path = write(
        tmp_path / "listed.py",
        """
        from baton.flows.spec import Flow

        def _make(name):
            return Flow(name)

        FLOWS = [_make("one"), _make("two")]
        three = Flow("three")
        """,
    )
    assert load_catalog([str(path)]).names() == ["one", "three", "two"]


def test_a_bad_flows_list_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "bad_list.py", "FLOWS = ['not a flow']\n")
    with pytest.raises(InvalidFlow, match="FLOWS must be a list of Flow objects"):
        load_catalog([str(path)])


def test_a_file_defining_dataclasses_loads(tmp_path: Path) -> None:
    # dataclasses look their module up in sys.modules while the module is still running.
    path = write(
        tmp_path / "with_dataclass.py",
        """
        from __future__ import annotations
        from dataclasses import dataclass
        from baton.flows.spec import Flow

        @dataclass
        class Options:
            depth: int = 1

        flow = Flow("with_options")
        """,
    )
    assert load_catalog([str(path)]).names() == ["with_options"]


def test_two_files_with_the_same_name_do_not_clash(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write(tmp_path / "a" / "flows.py", "from baton.flows.spec import Flow\nx = Flow('from_a')\n")
    second = write(tmp_path / "b" / "flows.py", "from baton.flows.spec import Flow\nx = Flow('from_b')\n")
    assert load_catalog([str(first), str(second)]).names() == ["from_a", "from_b"]


def test_the_same_name_in_two_sources_is_refused_naming_both(tmp_path: Path) -> None:
    first = write(tmp_path / "one.py", "from baton.flows.spec import Flow\nx = Flow('dup')\n")
    second = write(tmp_path / "two.py", "from baton.flows.spec import Flow\ny = Flow('dup')\n")
    with pytest.raises(InvalidFlow) as caught:
        load_catalog([str(first), str(second)])
    assert str(first) in caught.value.message
    assert str(second) in caught.value.message


def test_a_dotted_module_name_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "myflows_pkg_for_test"
    package.mkdir()
    write(package / "__init__.py", "")
    write(package / "team.py", "from baton.flows.spec import Flow\nteam = Flow('team_flow')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_catalog(["myflows_pkg_for_test.team"]).names() == ["team_flow"]
    finally:
        for name in [n for n in sys.modules if n.startswith("myflows_pkg_for_test")]:
            del sys.modules[name]


def test_an_unknown_module_is_an_invalid_flow_naming_the_source() -> None:
    with pytest.raises(InvalidFlow) as caught:
        load_catalog(["no_such_module_for_baton_tests"])
    message = caught.value.message
    assert message.startswith("cannot load flows from 'no_such_module_for_baton_tests': ModuleNotFoundError")


def test_a_missing_file_is_an_invalid_flow(tmp_path: Path) -> None:
    with pytest.raises(InvalidFlow, match="no such file"):
        load_catalog([str(tmp_path / "absent.py")])


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def broken(:\n", "SyntaxError"),
        ("import no_such_module_for_baton_tests\n", "ModuleNotFoundError"),
        ("raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
        ("import sys\nsys.exit(3)\n", "SystemExit"),
    ],
)
def test_a_file_that_fails_to_import_is_an_invalid_flow(tmp_path: Path, source: str, expected: str) -> None:
    path = write(tmp_path / "broken.py", source)
    with pytest.raises(InvalidFlow) as caught:
        load_catalog([str(path)])
    assert caught.value.message.startswith(f"cannot load flows from {str(path)!r}")
    assert expected in caught.value.message
    assert not [m for m in sys.modules.values() if getattr(m, "__file__", None) == str(path)]


def test_a_bad_flow_declaration_names_the_source_and_the_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad_flow.py",
        """
        from baton.flows.spec import Flow
        flow = Flow("bad")
        flow.agent("b", needs=["a"])
        """,
    )
    with pytest.raises(InvalidFlow) as caught:
        load_catalog([str(path)])
    assert caught.value.message.startswith(
        f"cannot load flows from {str(path)!r}: flow bad: step 'b' needs 'a'"
    )


def test_empty_sources_are_skipped() -> None:
    assert load_catalog(["", "  "]).names() == []


def test_default_sources_add_baton_flows_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_FLOWS", raising=False)
    assert default_sources() == ["baton.examples"]
    monkeypatch.setenv("BATON_FLOWS", " team.flows , ./local.py,,baton.examples")
    assert default_sources() == ["baton.examples", "team.flows", "./local.py"]


def test_the_default_sources_load() -> None:
    load_catalog(["baton.examples"])
