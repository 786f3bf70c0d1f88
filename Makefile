# The README's two commands: `make demo` and `make test`. Each creates .venv when needed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/pip install -q -c constraints.txt

.PHONY: demo test env env-dev

$(BIN)/python:
	$(PY) -m venv $(VENV)

env: $(BIN)/python
	$(PIP) -e .

env-dev: $(BIN)/python
	$(PIP) -e ".[dev]"

demo: env
	$(BIN)/python -m nbopt demo

test: env-dev
	$(BIN)/python -m pytest -q
