"""Start-up benchmark: `baton run` of a 10-step offline flow as a whole process, and `baton serve` to healthy.

    python bench/startup.py [--quick] [--repeat N]

* `baton run bench_chain10 --no-confirm` (ten `offline` agent steps in a chain, followed to the
  end, in-process worker) on a SQLite file that already holds Baton's schema: wall time of the
  whole process, from exec to exit (median of --repeat; default 7, 3 with --quick). The same on a
  new file (first use: the schema is created) is printed too, with no target.
* `baton serve` on a migrated SQLite file: wall time from exec until `GET /healthz` answers 200
  (median), polled every 10 ms.
* `python -c "import baton.cli"`: the import cost every command pays.

Targets (issue 7, item 5): `baton run` at most 1.0 s; `baton serve` healthy at most 1.5 s.
To find what a command imports, and what that costs: `python -X importtime -m baton run …`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import Results, bench_env, free_port, print_load, stop_process

TARGET_RUN_S = 1.0
TARGET_SERVE_S = 1.5

FLOW = "name: bench_chain10\ntitle: Ten offline steps in a chain\nsteps:\n" + "".join(
    f"  s{i:02d}: {{agent: {{persona: You write., engine: offline}}, prompt: Write."
    + (f", needs: [s{i - 1:02d}]" if i > 1 else "")
    + "}\n"
    for i in range(1, 11)
)


def time_run(home: Path, flows: Path, db: Path) -> float:
    args = [sys.executable, "-m", "baton", "run", "bench_chain10", "--no-confirm"]
    args += ["--flows", str(flows), "--database", f"sqlite:///{db}"]
    started = time.perf_counter()
    done = subprocess.run(args, env=bench_env(home), capture_output=True, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode()[-3000:]
        raise SystemExit(f"baton run failed (exit code {done.returncode}):\n{output}")
    return took


def time_serve(home: Path, db: Path) -> float:
    port = free_port()
    args = [sys.executable, "-m", "baton", "serve", "--database", f"sqlite:///{db}", "--port", str(port)]
    started = time.perf_counter()
    with open(home / "server.log", "ab") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=bench_env(home), start_new_session=True
        )
    try:
        with httpx.Client(timeout=1.0) as client:
            while time.perf_counter() - started < 30:
                if process.poll() is not None:
                    raise SystemExit(f"baton serve exited:\n{(home / 'server.log').read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        return time.perf_counter() - started
                time.sleep(0.01)
        raise SystemExit("baton serve did not become healthy in 30 s")
    finally:
        stop_process(process)


def time_import() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import baton.cli"], check=True)
    return time.perf_counter() - started


def main(args: argparse.Namespace) -> int:
    repeat = args.repeat or (3 if args.quick else 7)
    results = Results("startup", args.quick)
    with tempfile.TemporaryDirectory(prefix="baton-bench-startup-") as tmp:
        home = Path(tmp)
        flows = home / "chain10.yaml"
        flows.write_text(FLOW)
        db = home / "bench.db"
        first = time_run(home, flows, db)  # creates and migrates the file: the first use
        runs = [time_run(home, flows, db) for _ in range(repeat)]
        serves = [time_serve(home, db) for _ in range(repeat)]
        imports = [time_import() for _ in range(repeat)]
    results.add(
        "baton run, 10-step offline flow, whole process (SQLite)",
        statistics.median(runs),
        "s",
        TARGET_RUN_S,
        note=f"median of {repeat}, min {min(runs):.2f}",
    )
    results.add("baton run, first use (new SQLite file, schema created)", first, "s")
    results.add(
        "baton serve healthy (SQLite)",
        statistics.median(serves),
        "s",
        TARGET_SERVE_S,
        note=f"median of {repeat}, min {min(serves):.2f}",
    )
    results.add("import baton.cli", statistics.median(imports), "s")
    print_load(results)
    results.save()
    return 0 if results.all_pass else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (seconds)")
    parser.add_argument("--repeat", type=int, default=0, help="processes timed per figure")
    sys.exit(main(parser.parse_args()))
