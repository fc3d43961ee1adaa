# Set-up and the two everyday commands: `make demo` (the offline quick comparison) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install bench

$(BIN)/lossbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/lossbench

demo: $(BIN)/lossbench
	$(BIN)/lossbench compare

test: $(BIN)/lossbench
	$(BIN)/python -m pytest -q

bench: $(BIN)/lossbench
	$(BIN)/python scripts/bench_throughput.py
