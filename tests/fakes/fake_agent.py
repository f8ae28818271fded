"""A scripted command-line agent for the `cli:NAME` engine tests. Runs with any Python 3.11, stdlib only.

Flags (all optional; unknown arguments are kept and can be echoed back with --echo-args):

  --lines N           print N progress lines "PREFIX i" (1..N), flushed one by one   (default 0)
  --delay S           sleep S seconds before each progress line                       (default 0)
  --prefix TEXT       the progress lines' prefix                                      (default "line")
  --trap-term         catch SIGTERM and keep going (says so on stderr); only SIGKILL stops it
  --grandchild        start `sleep 60` that inherits stdout, stderr and the environment
  --escapee           start `sleep 60` in a new session (setsid) with stdio on /dev/null:
                      it leaves the process group, only the environment marker finds it
  --pidfile PATH      write {"pid", "grandchild", "escapee"} as JSON once children are started
  --touch PATH        create PATH first thing (proves the agent was spawned)
  --stderr TEXT       write TEXT to stderr
  --stderr-bytes N    write N bytes to stderr: "x" * (N - 4) + "TAIL"
  --json TEXT         print TEXT (meant to be JSON) on a line of its own after the progress lines
  --echo-args         print a JSON line {"args": [...], "cwd": ..., "env": {...BATON_* and FAKE_*}}
  --echo-stdin        print what was read from stdin (until EOF) after the progress lines
  --no-newline TEXT   print TEXT without a newline at the end (a partial last line)
  --hold S            after everything else, sleep S seconds before exiting
  --exit CODE         exit with CODE                                                  (default 0)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

FLAGS_WITH_VALUE = {
    "--lines",
    "--delay",
    "--prefix",
    "--pidfile",
    "--touch",
    "--stderr",
    "--stderr-bytes",
    "--json",
    "--no-newline",
    "--hold",
    "--exit",
}
SWITCHES = {"--trap-term", "--grandchild", "--escapee", "--echo-args", "--echo-stdin"}


def parse(argv: list[str]) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in FLAGS_WITH_VALUE and index + 1 < len(argv):
            options[arg] = argv[index + 1]
            index += 2
            continue
        if arg in SWITCHES:
            options[arg] = True
        index += 1
    return options


def say(text: str, *, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def main() -> int:
    options = parse(sys.argv[1:])
    if "--touch" in options:
        with open(str(options["--touch"]), "w") as handle:
            handle.write(str(os.getpid()))
    if options.get("--trap-term"):

        def ignore(signum: int, frame: object) -> None:
            sys.stderr.write("fake agent: ignoring SIGTERM\n")
            sys.stderr.flush()

        signal.signal(signal.SIGTERM, ignore)  # a handler, not SIG_IGN: children do not inherit it

    pids: dict[str, int | None] = {"pid": os.getpid(), "grandchild": None, "escapee": None}
    children: list[subprocess.Popen[bytes]] = []
    if options.get("--grandchild"):
        children.append(subprocess.Popen(["sleep", "60"]))
        pids["grandchild"] = children[-1].pid
    if options.get("--escapee"):
        children.append(
            subprocess.Popen(
                ["sleep", "60"],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        pids["escapee"] = children[-1].pid
    if "--pidfile" in options:
        path = str(options["--pidfile"])
        with open(path + ".tmp", "w") as handle:
            json.dump(pids, handle)
        os.replace(path + ".tmp", path)  # readers never see a half-written file

    if options.get("--echo-args"):
        env = {k: v for k, v in os.environ.items() if k.startswith(("BATON_", "FAKE_"))}
        say(json.dumps({"args": sys.argv[1:], "cwd": os.getcwd(), "env": env}))
    if "--stderr" in options:
        sys.stderr.write(str(options["--stderr"]) + "\n")
        sys.stderr.flush()
    if "--stderr-bytes" in options:
        size = int(str(options["--stderr-bytes"]))
        sys.stderr.write("x" * max(0, size - 4) + "TAIL")
        sys.stderr.flush()

    delay = float(str(options.get("--delay", "0")))
    prefix = str(options.get("--prefix", "line"))
    for number in range(1, int(str(options.get("--lines", "0"))) + 1):
        if delay:
            time.sleep(delay)
        say(f"{prefix} {number}")
    if options.get("--echo-stdin"):
        say(sys.stdin.read(), end="")
    if "--json" in options:
        say(str(options["--json"]))
    if "--no-newline" in options:
        say(str(options["--no-newline"]), end="")
    if "--hold" in options:
        time.sleep(float(str(options["--hold"])))
    return int(str(options.get("--exit", "0")))


if __name__ == "__main__":
    sys.exit(main())
