"""`repo-review`: facts about a folder, three reviewers in parallel, a synthesis, a report."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from baton.agents.base import StepContext
from baton.flows.spec import Flow

repo_review = Flow(
    name="repo-review",
    title="Review a repository",
    description="Collects facts about a local folder, asks three reviewers in parallel, then synthesizes.",
    category="Review",
    input_schema={
        "type": "object",
        "properties": {
            "path": {"type": "string", "default": ".", "description": "the folder to review"},
            "focus": {"type": "string", "default": "overall health", "description": "what to look at"},
        },
        "additionalProperties": False,
    },
    report_template="""# Review of {{ run.inputs.path }}

Focus: {{ run.inputs.focus }} · status: {{ run.status }}

{% for step in steps %}## {{ step.key }}

{{ step.output_text or step.error or "" }}

{% endfor %}""",
)

_SKIP = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}


@repo_review.step(timeout_s=60)
def collect(ctx: StepContext) -> dict[str, Any]:
    """Files, sizes, TODO markers and recent history of the folder."""
    root = Path(str(ctx.inputs.get("path") or ".")).expanduser()
    if not root.is_dir():
        from baton.domain.errors import StepFailed

        raise StepFailed(f"path {str(root)!r} is not a folder", retryable=False)
    files, total, todos = 0, 0, 0
    by_suffix: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP]
        for name in filenames:
            path = Path(dirpath) / name
            try:
                size = path.stat().st_size
            except OSError:
                continue
            files += 1
            total += size
            by_suffix[path.suffix or "(none)"] = by_suffix.get(path.suffix or "(none)", 0) + 1
            if size < 1_000_000 and path.suffix in {".py", ".md", ".ts", ".js", ".go", ".rs", ".txt"}:
                try:
                    todos += path.read_text(errors="ignore").count("TODO")
                except OSError:
                    pass
        if files > 20000:
            break
    ctx.emit(f"{files} files, {total} bytes, {todos} TODO markers\n")
    history = _git_log(root)
    return {
        "path": str(root),
        "files": files,
        "bytes": total,
        "todo_markers": todos,
        "top_suffixes": dict(sorted(by_suffix.items(), key=lambda kv: -kv[1])[:8]),
        "recent_commits": history,
    }


def _git_log(root: Path) -> list[str]:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "log", "--oneline", "-n", "5"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.splitlines() if out.returncode == 0 else []


for _reviewer, _prompt in (
    ("architecture", "Review the architecture: module boundaries and coupling."),
    ("risks", "List the riskiest parts and what could break."),
    ("tests", "Judge the tests: what is covered and what is missing."),
):
    repo_review.agent(_reviewer, engine="default", prompt=_prompt, needs=["collect"], timeout_s=300)

repo_review.agent(
    "synthesis",
    engine="default",
    prompt="Combine the three reviews into one list of recommendations.",
    needs=["architecture", "risks", "tests"],
    timeout_s=300,
)
