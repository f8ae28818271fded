"""bench/engine.py --compare: how two checkouts' figures are summed up."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "engine.py"


def _engine_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_case_shows_both_sides_and_the_change_of_the_medians() -> None:
    lines = _engine_bench().comparison_lines(
        {"sqlite chain": [1.2, 1.0, 1.1], "postgresql fanout": [3.0, 2.0, 2.5]},
        {"sqlite chain": [1.1, 1.0, 1.2], "postgresql fanout": [5.0, 4.0, 6.0]},
    )
    assert lines == [
        "sqlite chain: this 1.20/1.00/1.10 (median 1.10) against 1.10/1.00/1.20 (median 1.10) ms/step: +0%",
        "postgresql fanout: this 3.00/2.00/2.50 (median 2.50) against 5.00/4.00/6.00 (median 5.00)"
        " ms/step: -50%",
    ]


def test_a_case_the_other_checkout_lacks_is_said_so() -> None:
    [line] = _engine_bench().comparison_lines({"postgresql chain": [4.0]}, {})
    assert line == "postgresql chain: this 4.00 (median 4.00); the other checkout has no figure"
