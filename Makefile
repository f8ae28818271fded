# One entry per task; .ci/run calls `make test`, exactly what a developer runs.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: serve demo test lint bench bench-quick install reliability reliability-nightly

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/baton serve

demo: install
	$(VENV)/bin/baton run repo-review --input path=. --no-confirm

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The 20 slowest tests are listed at the end, to keep the suite inside CI's 15 minutes.
# Three pytest workers, one test file each at a time (`loadfile` keeps a file's shared server in
# one process): most tests wait on subprocesses, servers and leases, so 3 fit on 2 cores.
PYTEST_WORKERS ?= 3

test: lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=20 $(PYTEST_ARGS)

# The reliability suite alone (RELIABILITY.md R1-R17): PR-CI sizes (part of `make test`), or the
# nightly sizes of §4.3 (about an hour). Seeds are printed; BATON_RELIABILITY_SEED replays one.
reliability: install
	$(PY) -m pytest -q -m reliability tests/reliability $(PYTEST_ARGS)

reliability-nightly: install
	BATON_RELIABILITY_TIER=nightly $(PY) -m pytest -q -m reliability tests/reliability $(PYTEST_ARGS)

# Every bench prints each figure with its target and PASS/MISS and saves it under bench/results/;
# a MISS does not stop the others (the leading `-`). report.py writes the table (docs/performance.md).
BENCHES := throughput stream history startup memory

bench: install
	mkdir -p bench/results
	-$(PY) bench/engine.py | tee bench/results/engine.txt
	-$(foreach b,$(BENCHES),$(PY) bench/$(b).py;)
	$(PY) bench/report.py

bench-quick: install
	mkdir -p bench/results
	-$(PY) bench/engine.py --repeat 1 | tee bench/results/engine-quick.txt
	-$(foreach b,$(BENCHES),$(PY) bench/$(b).py --quick;)
	$(PY) bench/report.py --quick
