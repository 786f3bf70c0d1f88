# The README's two commands: `make demo` and `make test`. Each creates .venv when needed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/pip install -q -c constraints.txt

.PHONY: demo test env env-dev browser-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)

env: $(BIN)/python
	$(PIP) -e .

env-dev: $(BIN)/python
	$(PIP) -e ".[dev]"

demo: env
	$(BIN)/python -m nbopt demo

# The real-browser test (tests/browser/) needs Debian's chromium and npm playwright-core (no browser
# download). Idempotent: does nothing when both are present. Installing chromium needs root (CI is root).
browser-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "browser-deps: chromium missing and not root; run: sudo apt-get install -y chromium (browser test will skip)"; \
	  fi; \
	fi
	@test -d tests/browser/node_modules/playwright-core || (cd tests/browser && npm ci --no-audit --no-fund)

test: env-dev browser-deps
	$(BIN)/python -m pytest -q
