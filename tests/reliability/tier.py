"""Sizes of the reliability suite: PR-CI by default, nightly with BATON_RELIABILITY_TIER=nightly."""

from __future__ import annotations

import os

TIER = os.environ.get("BATON_RELIABILITY_TIER", "pr")
if TIER not in ("pr", "nightly"):
    raise SystemExit(f"BATON_RELIABILITY_TIER must be 'pr' or 'nightly', not {TIER!r}")


def size(pr: int, nightly: int) -> int:
    """The count for this tier (RELIABILITY.md §4.3 gives both)."""
    return nightly if TIER == "nightly" else pr
