"""Property: walking the run list page by page gives exactly the visible runs, newest first, once each.

`store.runs.list_visible_runs` merges per-project pages (bench/history.py, issue 7); this checks it
against a plain filter and sort on the real SQLite and PostgreSQL, with ties in `created_at`.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, delete, insert

from baton.store import runs as run_store
from baton.store.database import sync_url
from baton.store.schema import runs

PROJECTS = ["p0", "p1", "p2", "p3"]

run_rows = st.lists(
    st.fixed_dictionaries(
        {
            "project_id": st.sampled_from([*PROJECTS, None]),
            "created_by": st.sampled_from(["me", "other"]),
            "status": st.sampled_from(["succeeded", "failed", "running"]),
            "flow": st.sampled_from(["a", "b"]),
            "created_at": st.integers(0, 6).map(float),  # few values: many ties, broken by id
        }
    ),
    max_size=40,
)


def _expected(rows: list[dict[str, Any]], projects: list[str], status: str | None) -> list[str]:
    visible = [
        r
        for r in rows
        if (r["project_id"] in projects or (r["project_id"] is None and r["created_by"] == "me"))
        and (status is None or r["status"] == status)
    ]
    return [r["id"] for r in sorted(visible, key=lambda r: (r["created_at"], r["id"]), reverse=True)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=run_rows,
    projects=st.lists(st.sampled_from(PROJECTS), unique=True),
    status=st.sampled_from([None, "failed"]),
    limit=st.integers(1, 7),
)
def test_pages_walk_the_visible_runs_in_order(
    database_url: str, rows: list[dict[str, Any]], projects: list[str], status: str | None, limit: int
) -> None:
    rows = [{**r, "id": f"run_{i:03d}"} for i, r in enumerate(rows)]
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as conn:
            conn.execute(delete(runs))
            for r in rows:
                conn.execute(
                    insert(runs).values(
                        **r, inputs={}, policy={}, concurrency_key="k", updated_at=r["created_at"]
                    )
                )
        seen: list[str] = []
        before = None
        with engine.connect() as conn:
            for _ in range(len(rows) + 2):
                page = run_store.list_visible_runs(
                    conn, project_ids=projects, owner="me", status=status, before=before, limit=limit
                )
                seen += [r.id for r in page]
                if len(page) < limit:
                    break
                before = (page[-1].created_at, page[-1].id)
        assert seen == _expected(rows, projects, status)
    finally:
        engine.dispose()
