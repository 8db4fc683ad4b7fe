# The two commands of the README: `make run` and `make test`. Both set up what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Serve the agent on the embedded defaults: SQLite, and the offline model unless configured.
run: $(STAMP)
	THREADLINE_MODEL=$${THREADLINE_MODEL:-fake} $(BIN)/threadline serve --host $(HOST) --port $(PORT)

## Run every test; throwaway Redis and Postgres are started and removed by the test run.
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python -m bench.checkpointers --quick
	$(BIN)/python -m bench.long_threads --quick

clean:
	rm -rf $(VENV) .threadline .pytest_cache .mypy_cache .ruff_cache
