# TradeGraph: `make run` serves the demo, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SRC := $(wildcard src tests bench migrations)

.PHONY: install run test test-fast lint format schema bench clean

$(BIN)/python:
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## Serve the demo on the embedded default (SQLite file + in-process pub/sub).
run: install
	$(BIN)/tradegraph migrate
	$(BIN)/tradegraph seed-demo
	TRADEGRAPH_DEMO_FAUCET=true TRADEGRAPH_BROKER_SANDBOX=true TRADEGRAPH_MARKET_MAKER=true \
		$(BIN)/tradegraph serve

## The whole suite: lint, type check, then every test (PostgreSQL/Redis legs when reachable).
test: install lint
	$(BIN)/pytest -q -p no:cacheprovider

## Tests without the slow fault and load tests.
test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix $(SRC)
	$(BIN)/ruff format $(SRC)

## Rewrite schema.graphql from the code (a test fails when it is stale).
schema: install
	$(BIN)/tradegraph export-schema > schema.graphql

## Run every benchmark; each prints one JSON line.
bench: install
	@for f in bench/bench_*.py; do $(BIN)/python $$f; done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
