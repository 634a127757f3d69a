# The README's two quick-start commands live here so they stay true on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo install lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

# Installs everything the tests need, then runs the whole suite.
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# Installs the sidecar and starts it in demo mode, backed by the built-in Ollama emulator.
demo: $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/smart-proxy demo

lint: install
	$(BIN)/ruff check .
