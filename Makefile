# Set-up and the two everyday commands: `make demo` (the offline quick comparison) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install bench

$(BIN)/lossbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/lossbench

demo: $(BIN)/lossbench
	$(BIN)/lossbench compare

# Two worker processes: 1.5x faster on the 2-core CPU that CI and a first try have (494 s against 320 s, measured),
# since many tests wait on subprocesses and files; each worker's torch already uses every core.
test: $(BIN)/lossbench
	@$(BIN)/python -m lossbench.cpus  # the machine, so that a failure can be tied to its CPU's features
	$(BIN)/python -m pytest -q -n 2

# The formatter and the linter (ruff, configured in pyproject.toml); CI runs this before the tests.
lint: $(BIN)/lossbench
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

bench: $(BIN)/lossbench
	$(BIN)/python scripts/bench_throughput.py
