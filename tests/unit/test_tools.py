"""Agent tools: the registry, deny-by-default filtering, and the workspace tools' path refusals."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from baton.agents import tools as tools_module
from baton.agents.base import ToolSpec
from baton.agents.tools import (
    BUILTIN_TOOLS,
    ToolRefused,
    ToolRegistry,
    UnknownTool,
    allowed_tools,
    get_tools,
    register_tool,
    resolve_in_root,
    tool,
    workspace_tools,
)
from baton.domain.errors import InvalidFlow, StepFailed


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the workspace, with a secret the tools must never show."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("TOP SECRET needle\n")
    return folder


@pytest.fixture
def root(tmp_path: Path, outside: Path) -> Path:
    folder = tmp_path / "workspace"
    (folder / "src" / "pkg").mkdir(parents=True)
    (folder / "docs").mkdir()
    (folder / ".git").mkdir()
    (folder / "README.md").write_text("# Project\n\nA needle in the readme.\n")
    (folder / "src" / "pkg" / "core.py").write_text("def needle():\n    return 42\n")
    (folder / "src" / "pkg" / "util.py").write_text("VALUE = 1\n")
    (folder / "docs" / "guide.md").write_text("Guide\nno match here\n")
    (folder / "data.bin").write_bytes(b"needle\x00\x01\x02")
    (folder / ".git" / "config").write_text("needle in git\n")
    (folder / "inside_link.txt").symlink_to(folder / "docs" / "guide.md")
    (folder / "escape.txt").symlink_to(outside / "secret.txt")
    (folder / "escape_dir").symlink_to(outside, target_is_directory=True)
    return folder


def bound(root: Path) -> dict[str, Callable[..., str]]:
    return {spec.name: spec.fn for spec in workspace_tools(root)}


# --- workspace tools inside the root -------------------------------------------------------------


def test_workspace_tools_are_read_only_and_named(root: Path) -> None:
    specs = workspace_tools(root)
    assert [spec.name for spec in specs] == list(BUILTIN_TOOLS)
    assert all(spec.read_only and spec.description for spec in specs)


def test_list_files_is_recursive_sorted_and_skips_vcs_folders(root: Path) -> None:
    listing = bound(root)["list_files"]().splitlines()
    assert listing == [
        "README.md",
        "data.bin",
        "inside_link.txt",
        "docs/guide.md",
        "src/pkg/core.py",
        "src/pkg/util.py",
    ]
    assert not any(".git" in line for line in listing)


def test_list_files_filters_by_pattern_and_folder(root: Path) -> None:
    list_files = bound(root)["list_files"]
    assert list_files(pattern="*.py").splitlines() == ["src/pkg/core.py", "src/pkg/util.py"]
    assert list_files("src", "pkg/c*.py") == "src/pkg/core.py"
    assert list_files("docs") == "docs/guide.md"
    assert list_files(pattern="*.rs") == "no files match '*.rs' under '.'"
    assert list_files("nowhere").startswith("error: 'nowhere': no such folder")


def test_list_files_caps_its_count(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools_module, "MAX_LIST", 2)
    lines = bound(root)["list_files"]().splitlines()
    assert len(lines) == 3
    assert lines[-1].startswith("[4 more files not shown")


def test_read_file_returns_text(root: Path) -> None:
    read_file = bound(root)["read_file"]
    assert read_file("src/pkg/core.py") == "def needle():\n    return 42\n"
    assert read_file("./src/../README.md").startswith("# Project")
    assert read_file("inside_link.txt") == "Guide\nno match here\n"


def test_read_file_truncates_with_a_note(root: Path) -> None:
    (root / "long.txt").write_text("é" * 100)  # two bytes each: the cut falls inside a character
    text = bound(root)["read_file"]("long.txt", max_bytes=11)
    body, note = text.split("\n\n")
    assert body == "é" * 5
    assert note == "[truncated: showed the first 11 of 200 bytes of long.txt]"


def test_read_file_refuses_folders_binaries_and_missing_files(root: Path) -> None:
    read_file = bound(root)["read_file"]
    assert read_file("src").startswith("error: 'src' is a folder")
    assert read_file("data.bin").startswith("error: 'data.bin' is a binary file")
    assert read_file("nope.txt") == "error: 'nope.txt': no such file in the workspace"


def test_search_files_finds_substrings_in_text_files_only(root: Path) -> None:
    found = bound(root)["search_files"]("needle").splitlines()
    # data.bin (binary), .git (skipped) and the links out of the root are not searched.
    assert found == ["README.md:3: A needle in the readme.", "src/pkg/core.py:1: def needle():"]


def test_search_files_with_a_regex_a_path_and_a_limit(root: Path) -> None:
    search = bound(root)["search_files"]
    assert search(r"return \d+", regex=True) == "src/pkg/core.py:2: return 42"
    assert search("needle", path="src") == "src/pkg/core.py:1: def needle():"
    assert search("needle", path="README.md") == "README.md:3: A needle in the readme."
    limited = search("e", max_results=1).splitlines()
    assert len(limited) == 2
    assert limited[1] == "[stopped after 1 matches: narrow the query or the path]"
    assert search("absent") == "no matches for 'absent' under '.'"
    assert search("(", regex=True).startswith("error: '(' is not a valid regular expression")
    assert search("").startswith("error: the query is empty")


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool_name", ["list_files", "read_file", "search_files"])
@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../outside/secret.txt", "is outside the workspace"),
        ("../../../../../../etc/passwd", "is outside the workspace"),
        ("src/../../outside", "is outside the workspace"),
        ("/etc/passwd", "is an absolute path"),
        ("~/secret.txt", "is an absolute path"),
        ("escape.txt", "through a symbolic link"),
        ("escape_dir", "through a symbolic link"),
        ("escape_dir/secret.txt", "through a symbolic link"),
    ],
)
def test_paths_leaving_the_root_are_refused_as_tool_errors(
    root: Path, tool_name: str, path: str, why: str
) -> None:
    fn = bound(root)[tool_name]
    answer = fn("needle", path) if tool_name == "search_files" else fn(path)
    assert answer.startswith(f"error: refused: {path!r}")
    assert why in answer
    assert "SECRET" not in answer


def test_etc_passwd_relative_escape_is_refused(root: Path) -> None:
    assert bound(root)["read_file"]("../etc/passwd").startswith("error: refused: '../etc/passwd' is outside")


def test_symlinked_folders_are_not_followed_when_listing_or_searching(root: Path) -> None:
    tools = bound(root)
    assert "escape" not in tools["list_files"]()
    assert "secret" not in tools["list_files"](pattern="*.txt")
    assert tools["search_files"]("SECRET") == "no matches for 'SECRET' under '.'"


def test_a_root_that_is_itself_a_link_works(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "link_to_workspace"
    link.symlink_to(root, target_is_directory=True)
    assert bound(link)["read_file"]("README.md").startswith("# Project")
    assert bound(link)["read_file"]("escape.txt").startswith("error: refused")


def test_resolve_in_root_raises_a_step_failure(root: Path) -> None:
    assert resolve_in_root(root, "src/pkg") == (root / "src" / "pkg").resolve()
    with pytest.raises(ToolRefused) as caught:
        resolve_in_root(root, "../etc/passwd")
    assert isinstance(caught.value, StepFailed)
    assert caught.value.retryable is False
    assert pickle.loads(pickle.dumps(caught.value)).message == caught.value.message
    with pytest.raises(ToolRefused):
        resolve_in_root(root, "a\x00b")


def test_a_missing_workspace_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(StepFailed, match="is not an existing folder"):
        workspace_tools(tmp_path / "missing")


# --- the registry and the policy -----------------------------------------------------------------


def lookup(query: str) -> str:
    """Look something up.

    More detail that is not part of the description.
    """
    return query


def write_note(text: str) -> str:
    """Write a note."""
    return text


def test_register_and_get_tools() -> None:
    registry = ToolRegistry()
    spec = registry.register("lookup", lookup, read_only=True)
    assert spec == ToolSpec(name="lookup", description="Look something up.", fn=lookup, read_only=True)
    assert registry.register("lookup", lookup, read_only=True) is spec  # the same again: a no-op
    assert registry.get(["lookup", "lookup"]) == (spec,)
    assert "lookup" in registry and "read_file" in registry and "other" not in registry


def test_the_decorator_registers_and_returns_the_function() -> None:
    registry = ToolRegistry()

    @registry.tool(read_only=False, description="Save it.")
    def save(text: str) -> str:
        return text

    assert save("x") == "x"
    (spec,) = registry.get(["save"])
    assert (spec.name, spec.description, spec.read_only) == ("save", "Save it.", False)


def test_registration_mistakes_are_refused() -> None:
    registry = ToolRegistry()
    registry.register("lookup", lookup, read_only=True)
    with pytest.raises(InvalidFlow, match="registered twice"):
        registry.register("lookup", write_note, read_only=True)
    for reserved in ("read_file", "workspace"):
        with pytest.raises(InvalidFlow, match="taken by a built-in"):
            registry.register(reserved, lookup, read_only=True)
    with pytest.raises(InvalidFlow, match="is not valid"):
        registry.register("bad name", lookup, read_only=True)
    with pytest.raises(InvalidFlow, match="read_only must be True or False"):
        registry.register("other", lookup, read_only="yes")  # type: ignore[arg-type]


def test_an_unknown_tool_lists_the_known_ones() -> None:
    registry = ToolRegistry()
    registry.register("lookup", lookup, read_only=True)
    with pytest.raises(UnknownTool) as caught:
        registry.get(["lookup", "fetch_url"])
    assert caught.value.message.startswith(
        "unknown tool 'fetch_url': the known tools are "
        "list_files, lookup, read_file, search_files, workspace."
    )
    assert isinstance(caught.value, InvalidFlow)
    assert pickle.loads(pickle.dumps(caught.value)).known == caught.value.known


def test_builtin_tools_are_bound_to_the_workspace(root: Path) -> None:
    registry = ToolRegistry()
    registry.register("lookup", lookup, read_only=True)
    specs = registry.get(["read_file", "lookup"], workspace=root)
    assert [spec.name for spec in specs] == ["read_file", "lookup"]
    assert specs[0].fn("README.md").startswith("# Project")
    with pytest.raises(StepFailed, match="tools read_file work in a workspace folder"):
        registry.get(["read_file"])
    grouped = registry.get(["workspace", "read_file"], workspace=root)
    assert [spec.name for spec in grouped] == list(BUILTIN_TOOLS)


def test_a_read_only_policy_offers_only_read_only_tools(root: Path) -> None:
    registry = ToolRegistry()
    registry.register("lookup", lookup, read_only=True)
    registry.register("write_note", write_note, read_only=False)
    specs = registry.get(["lookup", "write_note", "list_files"], workspace=root)

    offered, denied = registry.allowed(specs, read_only_policy=True)
    assert [spec.name for spec in offered] == ["lookup", "list_files"]
    assert [(d.name, d.rule) for d in denied] == [("write_note", "read_only")]
    assert "not marked read-only" in denied[0].message

    offered, denied = registry.allowed(specs, read_only_policy=False)
    assert [spec.name for spec in offered] == ["lookup", "write_note", "list_files"]
    assert denied == ()


def test_tools_are_deny_by_default(root: Path) -> None:
    registry = ToolRegistry()
    registry.register("lookup", lookup, read_only=True)
    stranger = ToolSpec(name="stranger", description="", fn=lookup, read_only=True)
    impostor = ToolSpec(name="lookup", description="", fn=write_note, read_only=True)
    fake_builtin = ToolSpec(name="read_file", description="", fn=lambda path: "", read_only=True)
    offered, denied = registry.allowed([stranger, impostor, fake_builtin], read_only_policy=False)
    assert offered == ()
    assert [(d.name, d.rule) for d in denied] == [
        ("stranger", "unregistered"),
        ("lookup", "unregistered"),
        ("read_file", "unregistered"),
    ]


def test_an_allow_list_narrows_what_is_offered(root: Path) -> None:
    registry = ToolRegistry()
    registry.register("lookup", lookup, read_only=True)
    specs = registry.get(["lookup", "read_file"], workspace=root)
    offered, denied = registry.allowed(specs, read_only_policy=True, allowed_names={"read_file"})
    assert [spec.name for spec in offered] == ["read_file"]
    assert [(d.name, d.rule) for d in denied] == [("lookup", "allowed_tools")]


def test_the_module_functions_use_the_process_registry(root: Path) -> None:
    try:
        register_tool("test_tools_lookup", lookup, read_only=True)

        @tool(read_only=False, name="test_tools_write")
        def write(text: str) -> str:
            """Write."""
            return text

        specs = get_tools(
            ["test_tools_lookup", "test_tools_write", "search_files"], workspace=os.fspath(root)
        )
        offered, denied = allowed_tools(specs, read_only_policy=True)
        assert [spec.name for spec in offered] == ["test_tools_lookup", "search_files"]
        assert [d.name for d in denied] == ["test_tools_write"]
    finally:
        tools_module.TOOLS.unregister("test_tools_lookup")
        tools_module.TOOLS.unregister("test_tools_write")


def test_a_named_pipe_is_neither_listed_nor_read(root: Path) -> None:
    os.mkfifo(root / "pipe")  # opening it would block forever
    tools = bound(root)
    assert "pipe" not in tools["list_files"]()
    assert tools["read_file"]("pipe") == "error: 'pipe' is not a regular file"
    assert "pipe" not in tools["search_files"]("needle")
