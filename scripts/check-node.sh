#!/usr/bin/env bash
# Installing from a clone builds the JupyterLab panel, which needs Node.js >= 20: say so in one line when it is
# missing (pip would otherwise bury the cause in a long traceback). A panel already built is enough.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$here/jupyter_staging/labextension/static/style.js" ] && exit 0
if ! command -v node >/dev/null 2>&1; then
  echo "make setup: Node.js >= 20 is needed to build the JupyterLab panel from a clone; install it (https://nodejs.org, apt install nodejs, or conda install -c conda-forge nodejs=20) and run make again" >&2
  exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "make setup: Node.js >= 20 is needed to build the JupyterLab panel from a clone; this machine has $(node --version)" >&2
  exit 1
fi
