# nexus-bridge: `make run` to serve, `make test` to check everything. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run migrate lint format typecheck test test-fast bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "nexus-bridge needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/nexus-bridge db upgrade

run: migrate
	$(BIN)/nexus-bridge serve

format: install
	$(BIN)/ruff format src tests migrations $(wildcard bench)
	$(BIN)/ruff check --fix src tests migrations $(wildcard bench)

lint: install
	$(BIN)/ruff check src tests migrations $(wildcard bench)
	$(BIN)/ruff format --check src tests migrations $(wildcard bench)
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
