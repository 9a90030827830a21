#!/usr/bin/env bash
# Install what the JupyterLab panel's UI tests (tests/ui/) need, on a fresh CI machine; idempotent.
#
#   - Debian's chromium (Playwright drives /usr/bin/chromium; `playwright install` cannot download here),
#   - Python playwright in ./.venv (created with python3 -m venv if missing; `make test` reuses it),
#   - the labextension's npm packages (labextension/node_modules), for `jlpm test` and `jlpm build`.
#
# Prints what it did. Run from anywhere: bash scripts/ci-ui-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV="$PWD/.venv"

if [ -x /usr/bin/chromium ]; then
  echo "ci-ui-deps: chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
else
  echo "ci-ui-deps: installing chromium from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  echo "ci-ui-deps: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "ci-ui-deps: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if "$VENV/bin/python" -c "import playwright" 2>/dev/null; then
  echo "ci-ui-deps: python playwright already in $VENV"
else
  echo "ci-ui-deps: installing python playwright into $VENV (the driver only; the browser is Debian's)"
  "$VENV/bin/pip" install -q "playwright>=1.40"
fi

# The npm packages of the extension: `pip install -e .` installs them too (the jupyter-builder hook runs
# `jlpm install`); here they are installed up front so the unit tests run even before that.
if [ -d labextension/node_modules/jest ]; then
  echo "ci-ui-deps: labextension/node_modules already installed"
else
  if command -v jlpm >/dev/null 2>&1; then JLPM=(jlpm)
  elif [ -x "$VENV/bin/jlpm" ]; then JLPM=("$VENV/bin/jlpm")
  else
    echo "ci-ui-deps: installing jupyterlab into $VENV for jlpm"
    "$VENV/bin/pip" install -q "jupyterlab>=4.2,<5"
    JLPM=("$VENV/bin/jlpm")
  fi
  echo "ci-ui-deps: jlpm install in labextension/"
  (cd labextension && "${JLPM[@]}" install)
fi
echo "ci-ui-deps: done"
