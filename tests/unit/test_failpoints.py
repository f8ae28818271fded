"""Failpoints: a no-op unless armed; `once` fires once per marker directory, across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from baton import failpoints
from baton.failpoints import Action, make_failpoint, parse


class Exited(Exception):
    pass


def _exit(code: int) -> None:
    raise Exited(code)


def test_unset_is_the_noop_bound_at_import() -> None:
    assert make_failpoint(None) is failpoints._noop
    assert make_failpoint("") is failpoints._noop
    if not os.environ.get(failpoints.ENV):
        assert failpoints.failpoint is failpoints._noop


def test_parse_modes_and_lists() -> None:
    assert parse("after_claim_commit") == {"after_claim_commit": Action("once")}
    assert parse("in_heartbeat:always, before_claim_update:sleep=0.01") == {
        "in_heartbeat": Action("always"),
        "before_claim_update": Action("sleep", 0.01),
    }


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("after_clam_commit:once", "unknown failpoint 'after_clam_commit'"),
        ("in_heartbeat:twice", "not one of once, always, sleep=SECONDS"),
        ("in_heartbeat:sleep=soon", "needs a number of seconds"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse(spec)


def test_once_fires_once_per_marker_directory_even_in_a_new_process(tmp_path: Path) -> None:
    first = make_failpoint("after_step_commit:once", tmp_path, exit=_exit)
    first("in_heartbeat")  # not armed: nothing happens
    with pytest.raises(Exited) as fired:
        first("after_step_commit")
    assert fired.value.args == (failpoints.EXIT_CODE,)
    first("after_step_commit")
    # A restarted process (a new function over the same directory) goes on past the point.
    make_failpoint("after_step_commit:once", tmp_path, exit=_exit)("after_step_commit")
    assert failpoints.fired(tmp_path) == ["after_step_commit"]


def test_once_without_a_directory_is_once_per_process() -> None:
    point = make_failpoint("in_cancel", exit=_exit)
    with pytest.raises(Exited):
        point("in_cancel")
    point("in_cancel")


def test_always_fires_every_time(tmp_path: Path) -> None:
    point = make_failpoint("in_resume:always", tmp_path, exit=_exit)
    for _ in range(2):
        with pytest.raises(Exited):
            point("in_resume")


def test_the_environment_arms_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, failpoints.ENV: "after_claim_commit:once", failpoints.DIR_ENV: str(tmp_path)}
    script = "from baton.failpoints import failpoint; failpoint('after_claim_commit'); print('passed')"
    first = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert first.returncode == failpoints.EXIT_CODE
    assert "failpoint after_claim_commit fired" in first.stderr
    second = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert (second.returncode, second.stdout.strip()) == (0, "passed")


def test_two_threads_reaching_points_at_once_claim_one_marker(tmp_path: Path) -> None:
    """A process dies once: while one thread is exiting, another thread's point does not fire too."""
    dying = threading.Event()
    release = threading.Event()

    def exit_slowly(code: int) -> None:  # os._exit would end the process here; hold the "teardown"
        dying.set()
        release.wait(5)

    fp = make_failpoint("in_heartbeat:once,in_reaper_reclaim:once", tmp_path, exit=exit_slowly)
    first = threading.Thread(target=fp, args=("in_heartbeat",))
    first.start()
    assert dying.wait(5)
    second = threading.Thread(target=fp, args=("in_reaper_reclaim",))
    second.start()
    second.join(0.2)
    assert failpoints.fired(tmp_path) == ["in_heartbeat"]
    release.set()
    first.join(5)
    second.join(5)
