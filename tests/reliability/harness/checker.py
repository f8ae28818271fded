"""The audit after every scenario: `baton doctor`'s queries plus the ledger rules, with a dump on failure.

Rules (each must report nothing):
  doctor.*           every check of baton.doctor (stranded runs, zombie leases, event gaps…)
  lost_run           an acknowledged run id (`runs=`) missing from the database
  not_terminal       an acknowledged run not finished (with `require_terminal`, the default)
  duplicate_effect   an `effects` row committed more than once (n > 1)
  double_claim, completed_rerun, overlapping_live   the executions-log rules (ledgers.execution_violations)

On failure the AssertionError carries the seed, every finding, the tail of the executions log
and of each process log, so the failure can be read without re-running it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from baton import doctor
from tests.reliability.harness import ledgers

TERMINAL = ("succeeded", "failed", "cancelled")
#: Events by which the database ends an attempt other than by recording its success.
RELEASING_EVENTS = ("step.lease_expired", "step.retrying", "step.failed", "step.cancelled")


@dataclass
class Verdict:
    """What the checker found (`problems`, empty when healthy) and what it measured (`figures`)."""

    problems: dict[str, list[str]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def summary(self) -> str:
        lines = [f"{rule}: {len(items)}" for rule, items in self.problems.items() if items]
        for rule, items in self.problems.items():
            lines += [f"  {rule}: {item}" for item in items[:20]]
        return "\n".join(lines) or "healthy"


def snapshot(
    url: str,
) -> tuple[dict[tuple[str, str], tuple[str, int]], set[tuple[str, str, int]], dict[str, str]]:
    """From the database: step rows (status, attempt), released attempts, run statuses."""
    with doctor.read_only_connection(url) as conn:
        final = {
            (run_id, key): (status, int(attempt))
            for run_id, key, status, attempt in conn.execute(
                text("SELECT run_id, key, status, attempt FROM steps")
            )
        }
        names = ", ".join(f"'{name}'" for name in RELEASING_EVENTS)
        released = {
            (run_id, key, int(attempt))
            for run_id, key, attempt in conn.execute(
                text(
                    f"SELECT run_id, step_key, attempt FROM events "
                    f"WHERE type IN ({names}) AND attempt IS NOT NULL"
                )
            )
        }
        statuses = dict(conn.execute(text("SELECT id, status FROM runs")).all())
    return final, released, statuses


def audit(
    url: str,
    directory: Path,
    *,
    runs: Iterable[str] = (),
    grace_s: float = 4.5,
    require_terminal: bool = True,
) -> Verdict:
    """Every rule, without raising: the verdict (used by negative controls, which expect findings)."""
    verdict = Verdict()
    findings = doctor.audit(url, grace_s=grace_s)
    for finding in findings:
        verdict.problems.setdefault(f"doctor.{finding.check}", []).append(
            f"{finding.run_id}/{finding.step_key}: {finding.detail}"
        )
    final, released, statuses = snapshot(url)
    expected = list(runs)
    verdict.problems["lost_run"] = [run for run in expected if run not in statuses]
    if require_terminal:
        verdict.problems["not_terminal"] = [
            f"{run} is {statuses[run]}"
            for run in expected
            if run in statuses and statuses[run] not in TERMINAL
        ]
    effects = ledgers.read_effects(url)
    verdict.problems["duplicate_effect"] = [
        f"{e.run_id}/{e.step_key} effect {e.kind} committed {e.n}x (attempts {e.attempts})"
        for e in effects
        if e.n > 1
    ]
    executions = ledgers.read_executions(directory)
    verdict.problems.update(ledgers.execution_violations(executions, final, released))
    starts = [e for e in executions if e.phase == "start"]
    verdict.figures.update(
        runs=len(statuses),
        steps=len(final),
        executions=len(starts),
        effects=len(effects),
        statuses={s: list(statuses.values()).count(s) for s in sorted(set(statuses.values()))},
    )
    return verdict


def check_scenario(
    url: str,
    directory: Path,
    *,
    seed: int,
    runs: Iterable[str] = (),
    grace_s: float = 4.5,
    require_terminal: bool = True,
    logs: Sequence[Path] = (),
) -> Verdict:
    """`audit`, then raise AssertionError (seed, findings, ledger and log tails) unless it is healthy."""
    verdict = audit(url, directory, runs=runs, grace_s=grace_s, require_terminal=require_terminal)
    if not verdict.ok:
        parts = [
            f"reliability checker failed (replay with BATON_RELIABILITY_SEED={seed})",
            verdict.summary(),
            f"figures: {verdict.figures}",
            "--- executions log (tail) ---",
            ledgers.dump(directory, 60),
        ]
        for log in logs:
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-30:]
                parts += [f"--- {log.name} (tail) ---", *tail]
        message = "\n".join(parts)
        print(message)
        raise AssertionError(message)
    return verdict
