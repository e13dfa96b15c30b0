# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# -qq: errors only. pip's plain --quiet still prints warnings about package index
# locations of the machine's own pip configuration that do not exist.
PIP_QUIET := -qq

.PHONY: demo test coverage lint typecheck check bench bench-micro bench-soak bench-offers clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "crosssell needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(PIP_QUIET) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	@$(BIN)/crosssell demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/crosssell lint
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

# Two test processes (pytest-xdist; `make test TEST_PROCESSES=0` runs in one); the 15
# slowest tests are listed (the suite is kept under 10 minutes: docs/testing.md, "Time").
# The project is byte-compiled first: where PYTHONDONTWRITEBYTECODE is set (CI's machine),
# each of the hundreds of processes the tests start compiled the modules it imports again.
TEST_PROCESSES ?= 2
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m compileall -q worker triggers tests bench migrations
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadgroup --durations=15

# The same suite under coverage.py: branch coverage of worker/ and triggers/, subprocesses
# included; pytest fails below [tool.coverage.report] fail_under. Then the total and the
# 15 least-covered modules. Tracing costs a quarter of the suite's CPU, which is why
# `make test` (CI) leaves it out (docs/testing.md, "Coverage").
coverage: $(STAMP)
	$(BIN)/python -m compileall -q worker triggers tests bench migrations
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadgroup --durations=15 --cov --cov-report=
	@$(BIN)/coverage report --sort=cover | awk 'NR <= 17 || /^TOTAL/'

# Benchmarks print figures next to their targets (docs/benchmarks.md,
# docs/performance.md); none asserts anything about time.
# The production stack end to end on this machine's PostgreSQL and RabbitMQ (2-10 min).
bench: $(STAMP)
	$(BIN)/python -m bench.stack $(BENCH_ARGS)

# 300,000 events through the stack: RSS growth per process, lost and duplicated emails.
bench-soak: $(STAMP)
	$(BIN)/python -m bench.stack --soak $(BENCH_ARGS)

# The in-process micro-benchmarks: decide() and lint.
bench-micro: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

bench-offers: $(STAMP)
	$(BIN)/python -m bench.offers
