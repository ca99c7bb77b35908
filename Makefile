# Two commands on a fresh machine: `make up` (the embedded service) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install up test test-fast bench migrate clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull a several-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: install
	$(VENV)/bin/groklab up

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the tests that need PostgreSQL, Redis and worker processes, and the slow ones
# that train the ci-small preset to grokking.
test-fast: install
	$(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

bench: install
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_metrics.py

migrate: install
	$(VENV)/bin/groklab migrate

clean:
	rm -rf $(VENV) .groklab groklab.db* .pytest_cache
