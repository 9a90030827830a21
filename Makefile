# Everything runs in ./.venv, created on first use from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,lab,hub,azure]"
	touch $@

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest --ignore=tests/hub
	$(BIN)/python -m pytest tests/hub

lint: setup
	$(BIN)/pip install -q ruff mypy
	$(BIN)/ruff check jupyter_staging tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/run_all.py
