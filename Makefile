# TradeGraph: `make run` serves the demo, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SRC := $(wildcard src tests bench migrations)

.PHONY: install native clean-native run test test-native test-fast lint format schema bench clean

$(BIN)/python:
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## Optional: compile the exchange core (book + engine) with mypyc next to its sources
## (~20 s, needs a C compiler).  Python then imports the .so files instead of the .py;
## edit those sources and you must run this again (or make clean-native).
native: install
	$(BIN)/python -m pip install --quiet "setuptools>=77" wheel
	TRADEGRAPH_NATIVE=require $(BIN)/python setup.py --quiet build_ext --inplace
	@$(BIN)/python -c 'from tradegraph.exchange import native_core as n; print("exchange core:", "mypyc" if n() else "python")'

## Back to the pure-Python exchange core.
clean-native:
	rm -rf build src/*__mypyc*.so src/tradegraph/exchange/*.so

## Serve the demo on the embedded default (SQLite file + in-process pub/sub).
run: install
	$(BIN)/tradegraph migrate
	$(BIN)/tradegraph seed-demo
	TRADEGRAPH_DEMO_FAUCET=true TRADEGRAPH_BROKER_SANDBOX=true TRADEGRAPH_MARKET_MAKER=true \
		$(BIN)/tradegraph serve

## The whole suite: lint, type check, then every test (PostgreSQL/Redis legs when reachable),
## then the exchange-core tests again against the mypyc build (test-native).
test: install lint
	TRADEGRAPH_EXPECT_NATIVE=0 $(BIN)/pytest -q -p no:cacheprovider
	$(MAKE) --no-print-directory test-native

## The unit tests and the exchange integration tests against the mypyc-compiled core, built
## in a scratch copy of src/ so the working tree stays pure Python. Needs a C compiler:
## mandatory under CI=true, skipped with a warning elsewhere when the compile fails.
NATIVE_TEST := build/native-test
NATIVE_TESTS := tests/unit tests/integration/test_exchange_api.py \
	tests/integration/test_exchange_recovery.py tests/integration/test_exchange_dataloaders.py \
	tests/integration/test_compiled_operations.py
test-native: install
	@rm -rf $(NATIVE_TEST) && mkdir -p $(NATIVE_TEST)/src
	@cp -r src/tradegraph $(NATIVE_TEST)/src/ && find $(NATIVE_TEST) -name '*.so' -delete
	@ln -s $(CURDIR)/migrations $(CURDIR)/alembic.ini $(NATIVE_TEST)/
	@if (cd $(NATIVE_TEST)/src && $(CURDIR)/$(BIN)/mypyc tradegraph/exchange/book.py \
		tradegraph/exchange/engine.py) > $(NATIVE_TEST)/mypyc.log 2>&1; then \
		PYTHONPATH=$(NATIVE_TEST)/src TRADEGRAPH_EXPECT_NATIVE=1 \
			$(BIN)/pytest -q -p no:cacheprovider $(NATIVE_TESTS); \
	elif [ "$$CI" = "true" ]; then \
		tail -n 20 $(NATIVE_TEST)/mypyc.log; echo "mypyc build failed (mandatory in CI)"; exit 1; \
	else \
		tail -n 5 $(NATIVE_TEST)/mypyc.log; echo "WARNING: mypyc build failed; native leg skipped"; \
	fi

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

clean: clean-native
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
