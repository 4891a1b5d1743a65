# nexus-bridge: `make run` to serve, `make test` to check everything. Both install what they need:
# exactly the versions in uv.lock (`make lock` updates it after a change to pyproject.toml).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# uv installs the dependencies. It is bootstrapped from PyPI the first time, with pip, into .tools/:
# the release and hashes in uv-requirements.txt (`make lock` writes it for UV_VERSION). `make UV=uv …`
# uses a uv already on the machine instead.
UV_VERSION := 0.13.9
TOOLS      := .tools
UV_STAMP   := $(TOOLS)/.installed
UV         ?= $(TOOLS)/bin/uv
PIP_QUIET  := --quiet --disable-pip-version-check --root-user-action=ignore

# uv manages $(VENV) with $(PYTHON), never with a Python it would download. --locked: uv.lock is
# installed as it is, and a uv.lock that no longer matches pyproject.toml is an error, not updated.
# Bytecode is compiled at install time, as pip does (uv does not by default): without it, and with
# PYTHONDONTWRITEBYTECODE set, every start of nexus-bridge would compile its imports anew.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
export UV_COMPILE_BYTECODE := 1
SYNC := $(UV) sync --quiet --locked --python $(PYTHON)

.PHONY: uv install install-runtime lock dist node-deps run migrate lint format test docs fuzz bench soak clean

# pip --target needs no virtualenv (seconds faster); a Python whose pip refuses that, or that has
# no pip outside a virtualenv, gets one.
$(UV_STAMP): uv-requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "nexus-bridge needs Python >= 3.11; set PYTHON=python3.11")'
	rm -rf $(TOOLS)
	$(PYTHON) -m pip install $(PIP_QUIET) --require-hashes --target $(TOOLS) -r uv-requirements.txt \
	|| { rm -rf $(TOOLS) && $(PYTHON) -m venv $(TOOLS) \
	     && $(TOOLS)/bin/python -m pip install $(PIP_QUIET) --require-hashes -r uv-requirements.txt; }
	@touch $(UV_STAMP)

uv: $(if $(filter $(TOOLS)/bin/uv,$(UV)),$(UV_STAMP))

# Everything: the runtime dependencies and the `dev` extra (pytest, mypy, ruff, playwright, …),
# exactly as locked; any other package in $(VENV) is removed.
install: uv
	$(SYNC) --extra dev

# The runtime dependencies only, as locked. --inexact: what `make install` added stays, so a
# developer's `make run` keeps the test tools; a fresh clone's `make run` never installs them.
install-runtime: uv
	$(SYNC) --inexact

# Re-resolve after a change to pyproject.toml, keeping every other pin (`$(UV) lock --upgrade`
# moves everything to the newest allowed release), and pin uv itself to UV_VERSION, with hashes.
# (uv-requirements.txt is replaced only when it changes, so that uv is not bootstrapped again.)
lock: uv
	$(UV) lock --python $(PYTHON)
	@mkdir -p $(TOOLS)
	echo 'uv==$(UV_VERSION)' | $(UV) pip compile --quiet --universal --generate-hashes \
	  --python-version 3.11 --custom-compile-command 'make lock' --output-file $(TOOLS)/uv-requirements.txt -
	cmp -s $(TOOLS)/uv-requirements.txt uv-requirements.txt || cp $(TOOLS)/uv-requirements.txt uv-requirements.txt

# A wheel and an sdist in dist/ (the wheel carries the migrations), and constraints.txt: the
# locked runtime versions, for installing the wheel with exactly those (docs/operating.md: Installing
# without a clone).
dist: uv
	rm -rf dist
	$(UV) build --python $(PYTHON) --out-dir dist
	$(UV) export --quiet --locked --no-dev --no-emit-project --no-hashes --format requirements-txt \
	  --output-file dist/constraints.txt

NODE_STAMP := tests/ts/node_modules/.installed

# The official TypeScript SDK client, used by one end-to-end test, and axe-core, which checks the
# console's pages in Chromium (those tests skip where npm is absent).
$(NODE_STAMP): tests/ts/package.json tests/ts/package-lock.json
	@if command -v npm >/dev/null; then cd tests/ts && npm ci --silent --no-audit --no-fund && touch node_modules/.installed; \
	else echo "npm not found: the TypeScript client and console accessibility tests will be skipped"; fi

CARD_HOST_STAMP := tests/card-host/node_modules/.installed

# The official MCP Apps host helpers (AppBridge) and esbuild, which bundles them into the test host
# page of the task card's browser test (that variant is skipped only where npm is absent).
$(CARD_HOST_STAMP): tests/card-host/package.json tests/card-host/package-lock.json
	@if command -v npm >/dev/null; then cd tests/card-host && npm ci --silent --no-audit --no-fund && touch node_modules/.installed; \
	else echo "npm not found: the task card test in the ext-apps host will be skipped"; fi

node-deps: $(if $(wildcard tests/ts/package.json),$(NODE_STAMP)) $(if $(wildcard tests/card-host/package.json),$(CARD_HOST_STAMP))

migrate: install-runtime
	$(BIN)/nexus-bridge db upgrade

run: migrate
	$(BIN)/nexus-bridge serve

format: install
	$(BIN)/ruff format src tests migrations $(wildcard bench)
	$(BIN)/ruff check --fix src tests migrations $(wildcard bench)

# lint-imports: imports point inward (the contracts are pyproject.toml's [tool.importlinter]).
lint: install
	$(BIN)/ruff check src tests migrations $(wildcard bench)
	$(BIN)/ruff format --check src tests migrations $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

# UV: the wheel test builds and installs the package with this same uv.
test: lint node-deps
	UV='$(if $(findstring /,$(UV)),$(abspath $(UV)),$(UV))' $(BIN)/pytest -q

# The documentation site (mkdocs.yml, docs/) into site/. --strict: a link to a missing page or
# anchor fails the build.
docs: install
	$(BIN)/mkdocs build --strict

# The property-based tests (tests/fuzz) at length: random, thousands of examples per tool.
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q tests/fuzz

# BENCH: arguments for bench/run.py, e.g. BENCH="--only 2" (one benchmark) or BENCH=--quick.
bench: install
	$(BIN)/python bench/run.py $(BENCH)

# Minutes of Telegram faults against two real servers and the fake Bot API (not in `make test`);
# prints lost / duplicated / stuck and fails on any lost or stuck task. SOAK_SECONDS=180 by default.
SOAK_SECONDS ?= 180
soak: install
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) $(TOOLS) dist site .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
