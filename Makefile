# nexus-bridge: `make run` to serve, `make test` to check everything. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install node-deps run migrate lint format test bench soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "nexus-bridge needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

NODE_STAMP := tests/ts/node_modules/.installed

install: $(STAMP)

# The official TypeScript SDK client, used by one end-to-end test (skipped only where npm is absent).
$(NODE_STAMP): tests/ts/package.json tests/ts/package-lock.json
	@if command -v npm >/dev/null; then cd tests/ts && npm ci --silent --no-audit --no-fund && touch node_modules/.installed; \
	else echo "npm not found: the TypeScript client test will be skipped"; fi

node-deps: $(if $(wildcard tests/ts/package.json),$(NODE_STAMP))

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

test: lint node-deps
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/run.py

# Minutes of Telegram faults against two real servers and the fake Bot API (not in `make test`);
# prints lost / duplicated / stuck and fails on any lost or stuck task. SOAK_SECONDS=180 by default.
SOAK_SECONDS ?= 180
soak: install
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
