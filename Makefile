# The two commands (see README): `make demo` runs the gateway, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench setup system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

demo: setup
	$(BIN)/ipgate demo

test: setup system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python bench/run_gateway_bench.py --out bench/results-gateway.json

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
