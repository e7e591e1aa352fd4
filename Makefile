# The two commands (see README): `make demo` runs the gateway, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
FULL := $(VENV)/.installed-test
DEMO := $(VENV)/.installed-demo

.PHONY: demo test lint bench setup system-deps

# The gateway itself: no torch, no test tools.
$(CORE): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# The demo: the core plus the official openai client its printed example uses.
$(DEMO): $(CORE)
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

# Tests, lint and benchmarks: the dev tools plus the [torch] extra (torch==2.13.0, CPU), so the KGW
# sampler tests run too.
$(FULL): $(CORE)
	$(BIN)/pip install -q -e '.[dev,torch,bench]'
	touch $@

setup: $(FULL)

system-deps:
	bash scripts/install-system-deps.sh

demo: $(DEMO)
	$(BIN)/ipgate demo

test: $(FULL) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(FULL) system-deps
	$(BIN)/python bench/run_gateway_bench.py --out bench/results-gateway.json

lint: $(FULL)
	$(BIN)/ruff check .
	$(BIN)/mypy
