# Everything runs in ./.venv, created on first use from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint lint-imports bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@bash scripts/check-node.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,lab,hub,azure,lint,docs,dask,bench]"
	touch $@

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest --ignore=tests/hub
	$(BIN)/python -m pytest tests/hub

# ruff (lint + format), the import contract (layers, a plain engine, no cycles), complexity (radon grade C at
# worst), mypy.
lint: lint-imports
	$(BIN)/ruff check jupyter_staging tests bench scripts
	$(BIN)/ruff format --check jupyter_staging tests bench scripts
	@out="$$($(BIN)/radon cc -n D jupyter_staging)"; if [ -n "$$out" ]; then echo "$$out"; echo "radon: grade D or worse"; exit 1; fi
	$(BIN)/mypy

lint-imports: setup
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/run_all.py

# The documentation site (docs/: Sphinx, MyST, pydata-sphinx-theme), warnings as errors. Installs the docs
# extra first when it is missing from .venv. -E: a fresh environment each time, since pages generated from the
# code (the configuration reference, the REST API) change without their .md file changing.
.PHONY: docs
docs: setup
	@$(BIN)/python -c "import sphinx, myst_parser, pydata_sphinx_theme, sphinxcontrib.openapi" 2>/dev/null || $(BIN)/pip install -q -e ".[docs]"
	$(BIN)/sphinx-build -E -W --keep-going -b html docs docs/_build/html
