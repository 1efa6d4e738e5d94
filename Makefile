# The two commands: `make run` starts the stack, `make test` passes the tests. Both set
# up what they need first (Debian packages, the virtual environment).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NODE_DIR := tests/node
WEB_DIR := web
SWAGGER_UI := agent/docs/vendor/swagger-ui
PLAYWRIGHT_DIR := agent/playwright/runtime

.PHONY: all setup system venv node-deps docs-assets playwright-deps run test lint unit integration \
	security image-test fuzz soak rates bench image clean

all: test

setup: system venv docs-assets playwright-deps

system:
	bash scripts/setup-system.sh

$(BIN)/browser-agent: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/browser-agent

# puppeteer-core for the DevTools endpoint test (no browser download)
node-deps: $(NODE_DIR)/node_modules/.package-lock.json

$(NODE_DIR)/node_modules/.package-lock.json: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund
	touch $@

# Swagger UI for /docs, from the npm lockfile in web/, copied into the Python package
# (package data: `pip install .` and the image take it from there). --ignore-scripts: no
# install scripts run (swagger-ui-dist depends on a telemetry package's postinstall).
docs-assets: $(SWAGGER_UI)/.installed

$(SWAGGER_UI)/.installed: $(WEB_DIR)/package.json $(WEB_DIR)/package-lock.json
	npm ci --prefix $(WEB_DIR) --ignore-scripts --no-audit --no-fund
	rm -rf $(SWAGGER_UI) && mkdir -p $(SWAGGER_UI)
	cp $(addprefix $(WEB_DIR)/node_modules/swagger-ui-dist/,swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE) $(SWAGGER_UI)/
	node -p 'require("./$(WEB_DIR)/node_modules/swagger-ui-dist/package.json").version' > $(SWAGGER_UI)/VERSION
	touch $@

# playwright-core (no browser download) and esbuild for POST /playwright/execute
playwright-deps: $(PLAYWRIGHT_DIR)/node_modules/.package-lock.json

$(PLAYWRIGHT_DIR)/node_modules/.package-lock.json: $(PLAYWRIGHT_DIR)/package.json $(PLAYWRIGHT_DIR)/package-lock.json
	npm ci --prefix $(PLAYWRIGHT_DIR) --no-audit --no-fund
	touch $@

run: setup
	bash supervisor/run-local.sh

lint: venv
	$(BIN)/ruff check agent tests bench
	$(BIN)/mypy agent
	shellcheck -x scripts/*.sh supervisor/run-local.sh images/*.sh

unit: venv
	$(BIN)/pytest tests/unit

integration: setup node-deps
	$(BIN)/pytest -m 'not rates' tests/integration

# The attacks of the threat model (SECURITY.md) against a real daemon, Xvfb and Chromium.
security: setup
	$(BIN)/pytest tests/security

image-test: setup
	$(BIN)/pytest -m image -s tests/image

test: setup node-deps lint
	$(BIN)/pytest -m 'not rates' tests/unit tests/integration tests/security
	$(BIN)/pytest -s tests/soak
	$(BIN)/pytest -m image -s tests/image

# A deeper, randomized spec fuzz for hunting (not part of `make test`, whose fuzz run is
# derandomized): FUZZ_EXAMPLES examples per operation, a fresh draw each run.
FUZZ_EXAMPLES ?= 500
fuzz: setup
	AGENT_FUZZ_RANDOM=1 AGENT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
		$(BIN)/pytest -o timeout=7200 tests/integration/test_fuzz.py

# Success rates of racy flows (e.g. new tab + omnibox with waits), printed; not in CI.
rates: setup node-deps
	$(BIN)/pytest -s -m rates tests/integration

# The soak test under faults for 10 minutes (`make test` runs it for 75 s).
SOAK_SECONDS ?= 600
soak: setup
	AGENT_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest -s tests/soak

# Every bench/*.py in turn, then one summary table; figures also in bench/results.json.
bench: setup node-deps
	$(BIN)/python bench/run_all.py

image: setup
	bash images/build.sh

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules $(WEB_DIR)/node_modules $(SWAGGER_UI) $(PLAYWRIGHT_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache
