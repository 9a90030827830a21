#!/usr/bin/env bash
# What the Azure Blob tests (tests/test_azure.py) need, on a fresh CI machine; idempotent.
#
#   - Azurite, Microsoft's Azure Storage emulator (npm package `azurite`), installed into a local prefix
#     (.venv/azurite, ignored by git, so nothing global changes); tests/test_azure.py runs its
#     `azurite-blob` from there (or from PATH, or from $AZURITE_BLOB),
#   - the Python client azure-storage-blob in ./.venv (the project's `azure` extra).
#
# Prints what it did. Run from anywhere: bash scripts/ci-azure-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
PREFIX="$VENV/azurite"
AZURITE_BLOB="$PREFIX/node_modules/.bin/azurite-blob"

if [ ! -x "$VENV/bin/python" ]; then
  echo "ci-azure-deps: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

if [ -x "$AZURITE_BLOB" ]; then
  echo "ci-azure-deps: azurite already installed: $AZURITE_BLOB"
else
  if ! command -v npm >/dev/null 2>&1; then
    echo "ci-azure-deps: npm is missing; installing Debian's nodejs and npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  fi
  echo "ci-azure-deps: installing azurite with npm into $PREFIX"
  mkdir -p "$PREFIX"
  npm install --prefix "$PREFIX" --no-fund --no-audit --no-save azurite
  echo "ci-azure-deps: azurite-blob is $AZURITE_BLOB"
fi

if "$VENV/bin/python" -c "import azure.storage.blob" 2>/dev/null; then
  echo "ci-azure-deps: azure-storage-blob already in $VENV"
else
  echo "ci-azure-deps: installing azure-storage-blob into $VENV (the project's azure extra)"
  "$VENV/bin/pip" install -q "azure-storage-blob>=12.19"
fi
echo "ci-azure-deps: done"
