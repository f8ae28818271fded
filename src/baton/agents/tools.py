"""Tools for model agents: a registry of Python tools with a `read_only` flag, deny-by-default
filtering under a policy, and the built-in read-only workspace tools (list, read, search files).

Every path a workspace tool is given is resolved against the workspace root and refused when it
leaves it: `..`, absolute paths, symbolic links pointing out. A refusal is returned to the model as
the tool's answer (`error: …`), so it can correct itself; it never crashes the step.
"""

from __future__ import annotations

import codecs
import fnmatch
import inspect
import os
import re
import stat
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from baton.agents.base import ToolSpec
from baton.domain.errors import InvalidFlow, StepFailed

F = TypeVar("F", bound=Callable[..., Any])

#: Names of the built-in workspace tools; `get_tools` binds them to the step's workspace.
BUILTIN_TOOLS = ("list_files", "read_file", "search_files")
#: A tool name that stands for all the built-in workspace tools.
WORKSPACE_GROUP = "workspace"
#: Folders that listing and searching do not descend into (they may still be named as `path`).
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".venv",
        "node_modules",
    }
)
MAX_LIST = 1000
MAX_READ_BYTES = 1_000_000
MAX_SEARCH_RESULTS = 1000
#: Files larger than this are skipped by search_files.
MAX_SEARCH_FILE_BYTES = 2_000_000
MAX_SEARCH_FILES = 20_000
#: Bytes looked at to tell a binary file (one with a NUL byte) from text.
_SNIFF = 8192
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
#: Set on the functions `workspace_tools` makes, so that filtering knows them as built-in.
_BUILTIN_MARK = "__baton_builtin_tool__"


class ToolRefused(StepFailed):
    """A tool call was refused, for example a path outside the workspace."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,))


class UnknownTool(InvalidFlow):
    """An agent names a tool that is not registered."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"unknown tool {name!r}: the known tools are {', '.join(self.known) or 'none'}. "
            "Register Python tools with baton.agents.tools.register_tool or @tool(read_only=...)."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.known))


@dataclass(frozen=True, slots=True)
class ToolDenial:
    """A tool the policy does not let a step offer; `rule` is for the `policy.denied` event."""

    name: str
    #: `unregistered` (deny by default), `allowed_tools` (not in the allow-list) or `read_only`
    rule: str
    message: str


class ToolRegistry:
    """Python tools by name. The built-in workspace tools are known here but bound per step."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolSpec] = {}

    def register(
        self, name: str, fn: Callable[..., Any], *, read_only: bool, description: str | None = None
    ) -> ToolSpec:
        """Register `fn` as tool `name`; re-registering the same function the same way is a no-op.

        `read_only` must be said: a tool is offered under a read-only policy only when it is True.
        The description defaults to the first paragraph of the function's docstring.
        """
        if not _NAME_RE.match(name):
            raise InvalidFlow(
                f"tool name {name!r} is not valid: use letters, digits, '_' or '-' (64 at most)"
            )
        if name in BUILTIN_TOOLS or name == WORKSPACE_GROUP:
            raise InvalidFlow(f"tool name {name!r} is taken by a built-in workspace tool: choose another")
        if not callable(fn):
            raise InvalidFlow(f"tool {name!r}: {fn!r} is not callable")
        if not isinstance(read_only, bool):
            raise InvalidFlow(f"tool {name!r}: read_only must be True or False, got {read_only!r}")
        doc = (inspect.getdoc(fn) or "").split("\n\n", 1)[0].strip()
        spec = ToolSpec(name=name, description=description or doc, fn=fn, read_only=read_only)
        existing = self._tools.get(name)
        if existing is not None and existing != spec:
            raise InvalidFlow(f"tool {name!r} is registered twice, with different functions or flags")
        self._tools[name] = existing or spec
        return self._tools[name]

    def tool(
        self, *, read_only: bool, name: str | None = None, description: str | None = None
    ) -> Callable[[F], F]:
        """Decorator form of `register`: `@registry.tool(read_only=True)`; the function is unchanged."""

        def decorate(fn: F) -> F:
            self.register(name or fn.__name__, fn, read_only=read_only, description=description)
            return fn

        return decorate

    def unregister(self, name: str) -> None:
        self._tools.pop(name, None)

    def names(self) -> list[str]:
        """Every tool an agent may name: the built-in ones and the registered ones."""
        return sorted([*BUILTIN_TOOLS, WORKSPACE_GROUP, *self._tools])

    def get(
        self, names: Iterable[str], *, workspace: str | os.PathLike[str] | None = None
    ) -> tuple[ToolSpec, ...]:
        """The tools named, in order, each once; built-in ones bound to `workspace`.

        The name `workspace` stands for all of list_files, read_file and search_files.

        Raises:
            UnknownTool: a name is neither built in nor registered.
            StepFailed: a built-in tool is named but there is no workspace to bind it to.
        """
        expanded = (BUILTIN_TOOLS if name == WORKSPACE_GROUP else (name,) for name in names)
        wanted = list(dict.fromkeys(name for group in expanded for name in group))
        for name in wanted:
            if name not in BUILTIN_TOOLS and name not in self._tools:
                raise UnknownTool(name, self.names())
        builtin: dict[str, ToolSpec] = {}
        if any(name in BUILTIN_TOOLS for name in wanted):
            if workspace is None:
                needing = ", ".join(name for name in wanted if name in BUILTIN_TOOLS)
                raise StepFailed(
                    f"tools {needing} work in a workspace folder, and this step has none: "
                    "give the run a workspace or drop these tools from the agent",
                    retryable=False,
                )
            builtin = {spec.name: spec for spec in workspace_tools(workspace)}
        return tuple(builtin.get(name) or self._tools[name] for name in wanted)

    def is_known(self, spec: ToolSpec) -> bool:
        """True for a registered tool (the very spec) or a built-in one made by `workspace_tools`."""
        if spec.name in BUILTIN_TOOLS:
            return spec.read_only and getattr(spec.fn, _BUILTIN_MARK, False) is True
        return self._tools.get(spec.name) is spec

    def allowed(
        self,
        specs: Iterable[ToolSpec],
        *,
        read_only_policy: bool,
        allowed_names: Collection[str] | None = None,
    ) -> tuple[tuple[ToolSpec, ...], tuple[ToolDenial, ...]]:
        """(offered, denied): deny by default; under a read-only policy only read-only tools.

        A tool is offered only when it is known to this registry, listed in `allowed_names` (when
        given), and, if the policy is read-only, marked `read_only`.
        """
        offered: dict[str, ToolSpec] = {}
        denied: list[ToolDenial] = []
        for spec in specs:
            if spec.name in offered:
                continue
            if not self.is_known(spec):
                denied.append(
                    ToolDenial(
                        spec.name,
                        "unregistered",
                        f"tool {spec.name!r} is not registered, and tools are deny-by-default: "
                        "register it with register_tool(name, fn, read_only=...)",
                    )
                )
            elif allowed_names is not None and spec.name not in allowed_names:
                denied.append(
                    ToolDenial(spec.name, "allowed_tools", f"tool {spec.name!r} is not in the allowed tools")
                )
            elif read_only_policy and not spec.read_only:
                denied.append(
                    ToolDenial(
                        spec.name,
                        "read_only",
                        f"tool {spec.name!r} is not marked read-only and the run's policy is read-only",
                    )
                )
            else:
                offered[spec.name] = spec
        return tuple(offered.values()), tuple(denied)

    def __contains__(self, name: object) -> bool:
        return name in BUILTIN_TOOLS or name == WORKSPACE_GROUP or name in self._tools


#: The process-wide registry the module-level functions use.
TOOLS = ToolRegistry()


def register_tool(
    name: str, fn: Callable[..., Any], *, read_only: bool, description: str | None = None
) -> ToolSpec:
    """Register a Python tool in the process-wide registry (see `ToolRegistry.register`)."""
    return TOOLS.register(name, fn, read_only=read_only, description=description)


def tool(*, read_only: bool, name: str | None = None, description: str | None = None) -> Callable[[F], F]:
    """Register the decorated function as a tool: `@tool(read_only=True)`."""
    return TOOLS.tool(read_only=read_only, name=name, description=description)


def get_tools(
    names: Iterable[str], *, workspace: str | os.PathLike[str] | None = None
) -> tuple[ToolSpec, ...]:
    """The named tools from the process-wide registry (see `ToolRegistry.get`)."""
    return TOOLS.get(names, workspace=workspace)


def allowed_tools(
    specs: Iterable[ToolSpec], *, read_only_policy: bool, allowed_names: Collection[str] | None = None
) -> tuple[tuple[ToolSpec, ...], tuple[ToolDenial, ...]]:
    """(offered, denied) under the policy, against the process-wide registry (see `ToolRegistry.allowed`)."""
    return TOOLS.allowed(specs, read_only_policy=read_only_policy, allowed_names=allowed_names)


# --- the built-in workspace tools ----------------------------------------------------------------


def resolve_in_root(root: str | os.PathLike[str], path: str) -> Path:
    """`path` resolved inside `root` (symbolic links followed), or ToolRefused when it leaves it."""
    base = Path(os.path.realpath(root))
    if not isinstance(path, str) or "\x00" in path:
        raise ToolRefused(f"refused: {path!r} is not a valid path")
    if Path(path).is_absolute() or path.startswith("~"):
        raise ToolRefused(
            f"refused: {path!r} is an absolute path; give a path relative to the workspace root"
        )
    candidate = base / path
    if not Path(os.path.normpath(candidate)).is_relative_to(base):
        raise ToolRefused(f"refused: {path!r} is outside the workspace ('..' climbs above its root)")
    real = Path(os.path.realpath(candidate))
    if not real.is_relative_to(base):
        raise ToolRefused(f"refused: {path!r} leads outside the workspace through a symbolic link")
    return real


def workspace_tools(root: str | os.PathLike[str]) -> tuple[ToolSpec, ...]:
    """The read-only tools list_files, read_file and search_files, bound to the folder `root`.

    Raises:
        StepFailed: `root` is not an existing folder.
    """
    base = Path(os.path.realpath(root))
    if not base.is_dir():
        raise StepFailed(f"the workspace {str(root)!r} is not an existing folder", retryable=False)

    def list_files(path: str = ".", pattern: str = "*") -> str:
        """List the files under a folder of the workspace, recursively, one relative path a line.

        Args:
            path: the folder to list, relative to the workspace root.
            pattern: a glob matched against file names (`*.py`), or against paths below `path`
                when it contains `/` (`docs/*.md`).
        """
        return _answer(lambda: _list(base, path, pattern))

    def read_file(path: str, max_bytes: int = 200_000) -> str:
        """Read a text file of the workspace; a long file is cut at max_bytes, with a note.

        Args:
            path: the file to read, relative to the workspace root.
            max_bytes: how many bytes to show at most (up to 1000000).
        """
        return _answer(lambda: _read(base, path, max_bytes))

    def search_files(query: str, path: str = ".", max_results: int = 100, regex: bool = False) -> str:
        """Search the text files under a folder of the workspace; one `path:line: text` per match.

        Args:
            query: the text to find (case-sensitive), or a Python regular expression when regex is true.
            path: the folder (or file) to search, relative to the workspace root.
            max_results: how many matching lines to return at most (up to 1000).
            regex: treat query as a regular expression.
        """
        return _answer(lambda: _search(base, query, path, max_results, regex))

    functions = (list_files, read_file, search_files)
    for fn in functions:
        setattr(fn, _BUILTIN_MARK, True)
    return tuple(
        ToolSpec(name=fn.__name__, description=(fn.__doc__ or "").split("\n")[0], fn=fn, read_only=True)
        for fn in functions
    )


def _answer(call: Callable[[], str]) -> str:
    """The tool's text, or `error: …` for the model to read: a refused or failed call is not a crash."""
    try:
        return call()
    except ToolRefused as error:
        return f"error: {error.message}"
    except OSError as error:
        return f"error: {error.strerror or error}"
    except ValueError as error:  # such as a max_bytes that is not a number, from a lax engine
        return f"error: {error}"


def _display(base: Path, path: Path) -> str:
    relative = path.relative_to(base).as_posix()
    return relative or "."


def _files(base: Path, start: Path) -> Iterator[Path]:
    """Regular files under `start`, sorted, never following a symbolic link out of `base`.

    Symbolically linked folders are not descended into at all (no loops, no escapes); a linked file
    is listed only when its target is a regular file inside the workspace.
    """
    for folder, dirs, names in os.walk(start, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not (here / d).is_symlink())
        for name in sorted(names):
            path = here / name
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                if not target.is_relative_to(base) or not target.is_file():
                    continue
            elif not stat.S_ISREG(path.lstat().st_mode):
                continue
            yield path


def _list(base: Path, path: str, pattern: str) -> str:
    start = resolve_in_root(base, path)
    if start.is_file():
        return _display(base, start)
    if not start.is_dir():
        raise ToolRefused(f"{path!r}: no such folder in the workspace")
    pattern = pattern.removeprefix("**/") or "*"
    shown: list[str] = []
    total = 0
    for file in _files(base, start):
        subject = file.relative_to(start).as_posix() if "/" in pattern else file.name
        if fnmatch.fnmatchcase(subject, pattern):
            total += 1
            if len(shown) < MAX_LIST:
                shown.append(_display(base, file))
    if not shown:
        return f"no files match {pattern!r} under {path!r}"
    if total > len(shown):
        shown.append(f"[{total - len(shown)} more files not shown: narrow the path or the pattern]")
    return "\n".join(shown)


def _read(base: Path, path: str, max_bytes: int) -> str:
    target = resolve_in_root(base, path)
    if target.is_dir():
        raise ToolRefused(f"{path!r} is a folder: use list_files to see what is in it")
    if not target.exists():
        raise ToolRefused(f"{path!r}: no such file in the workspace")
    info = target.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ToolRefused(f"{path!r} is not a regular file")
    limit = max(1, min(int(max_bytes), MAX_READ_BYTES))
    with target.open("rb") as handle:
        data = handle.read(limit)
    if b"\x00" in data[:_SNIFF]:
        raise ToolRefused(f"{path!r} is a binary file ({info.st_size} bytes): read_file shows text only")
    truncated = info.st_size > len(data)
    # An incremental decoder drops a character cut in half at the limit instead of garbling it.
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=not truncated)
    if truncated:
        text += f"\n\n[truncated: showed the first {len(data)} of {info.st_size} bytes of {path}]"
    return text


def _search(base: Path, query: str, path: str, max_results: int, regex: bool) -> str:
    if not query:
        raise ToolRefused("the query is empty: give the text to find")
    matches: Callable[[str], Any]
    if regex:
        try:
            matches = re.compile(query).search
        except re.error as error:
            raise ToolRefused(f"{query!r} is not a valid regular expression: {error}") from None
    else:
        matches = lambda line: query in line  # noqa: E731
    start = resolve_in_root(base, path)
    if start.is_file():
        files: Iterable[Path] = [start]
    elif start.is_dir():
        files = _files(base, start)
    else:
        raise ToolRefused(f"{path!r}: no such file or folder in the workspace")
    limit = max(1, min(int(max_results), MAX_SEARCH_RESULTS))
    found: list[str] = []
    for count, file in enumerate(files):
        if count >= MAX_SEARCH_FILES:
            found.append(f"[stopped after {MAX_SEARCH_FILES} files: narrow the path]")
            break
        text = _text_of(file)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if matches(line):
                found.append(f"{_display(base, file)}:{number}: {line.strip()[:300]}")
                if len(found) >= limit:
                    found.append(f"[stopped after {limit} matches: narrow the query or the path]")
                    return "\n".join(found)
    return "\n".join(found) if found else f"no matches for {query!r} under {path!r}"


def _text_of(file: Path) -> str | None:
    """The file's text, or None for a binary, oversized or unreadable file (search skips those)."""
    try:
        if file.stat().st_size > MAX_SEARCH_FILE_BYTES:
            return None
        data = file.read_bytes()
    except OSError:
        return None
    if b"\x00" in data[:_SNIFF]:
        return None
    return data.decode("utf-8", errors="replace")
