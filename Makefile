# The README's two quick-start commands live here so they stay true on a fresh machine.
# Both are quiet on success: pip's output goes to a log in the venv and is shown only on failure.
# Installs happen once per change of pyproject.toml (stamp files), not on every run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
QUIET_PIP = $(BIN)/pip install -q --disable-pip-version-check

.PHONY: test test-browser bench demo install lint

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV)
	@$(QUIET_PIP) --upgrade pip > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	@echo "installing the project and its test dependencies into $(VENV) (log: $(VENV)/install.log)"
	@$(QUIET_PIP) -e '.[dev]' > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@touch $@ $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing the sidecar into $(VENV) (log: $(VENV)/install.log)"
	@$(QUIET_PIP) -e . > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@touch $@

$(VENV)/.installed-browser: pyproject.toml | $(VENV)/.installed-dev
	@echo "installing Playwright for the browser test into $(VENV) (log: $(VENV)/install.log)"
	@$(QUIET_PIP) -e '.[dev,browser]' > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@touch $@

$(VENV)/.installed-bench: pyproject.toml | $(VENV)/.installed-dev
	@echo "installing the benchmarks' extras (matplotlib, py-spy) into $(VENV) (log: $(VENV)/install.log)"
	@$(QUIET_PIP) -e '.[dev,bench]' > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@touch $@

install: $(VENV)/.installed-dev

# Installs everything the tests need, then runs the whole suite.
test: install
	@$(BIN)/ruff check --quiet .
	@$(BIN)/lint-imports --no-cache > $(VENV)/lint-imports.log || { cat $(VENV)/lint-imports.log; exit 1; }
	@$(BIN)/mypy
	$(BIN)/pytest -q

# The web dashboard in a real headless Chromium: needs Debian's chromium package (apt-get install
# chromium); Playwright drives it by its path and never downloads a browser.
test-browser: install $(VENV)/.installed-browser
	$(BIN)/pytest -q -m browser tests/browser

# Every benchmark in bench/ (about 25 minutes), then the README's performance section and the
# charts in bench/results/ from their results. Not part of `make test`: timings on a shared
# machine are measurements, not assertions.
bench: $(VENV)/.installed-bench
	$(BIN)/python bench/run_all.py

# Installs the sidecar and starts it in demo mode, backed by the built-in Ollama emulator.
demo: $(VENV)/.installed
	@$(BIN)/smart-proxy demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
