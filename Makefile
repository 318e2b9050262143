# `make demo` and `make test` work on a fresh machine with only Python 3.11+: the first run
# creates .venv and installs the project; later runs reinstall only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv demo test lint typecheck dev worker clean

help:
	@echo "make demo       run the self-healing demo (ARGS='...' passes options)"
	@echo "make test       lint, type-check and run every test tier"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make typecheck  mypy"
	@echo "make dev        Temporal dev server with Web UI on :8233, state in .healing/"
	@echo "make worker     the production worker (python worker.py)"
	@echo "make venv       create .venv and install the project with its dev extras"
	@echo "make clean      delete .healing/ state (keeps .venv)"

venv: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python 3.11+ is required; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

demo: venv
	$(BIN)/healing demo $(ARGS)

test: lint typecheck
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy healing activities workflows worker.py

dev: venv
	$(BIN)/healing dev

worker: venv
	$(BIN)/python worker.py

clean:
	rm -rf .healing
