#!/usr/bin/env bash
# Start JupyterLab with jupyter_staging on a demo folder, opened on demo/staging-demo.ipynb; ../shared/data
# (read-only) is the source root. `scripts/demo.sh --print-options` writes the demo notebook and prints
# the server options this script starts JupyterLab with, one per line, then exits: tests start a server
# with exactly these (tests/test_demo_notebook.py), so `make demo` cannot break silently.
# Environment: STAGING_DEMO_DATA (sample data folder), STAGING_DEMO_ROOT (default demo/), PORT (8888).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=${STAGING_DEMO_DATA:-$(cd "$here/../shared/data" 2>/dev/null && pwd || true)}
root=${STAGING_DEMO_ROOT:-$here/demo}

demo_options() {
  echo "--no-browser"
  echo "--ip=127.0.0.1"
  echo "--port=${PORT:-8888}"
  echo "--ServerApp.root_dir=$root"
  echo "--LabApp.default_url=/lab/tree/staging-demo.ipynb"
  if [ "$(id -u)" = 0 ]; then echo "--allow-root"; fi
  # One folder per flag (StagingApp.source_roots also reads a list or a:b, see parse_source_roots).
  if [ -n "$data" ]; then echo "--StagingApp.source_roots=$data"; fi
}

mkdir -p "$root"
python "$here/scripts/make_demo_notebook.py" "$root" "${data:-}"
if [ "${1:-}" = "--print-options" ]; then
  demo_options
  exit 0
fi
mapfile -t options < <(demo_options)
echo "jupyter_staging demo: root $root, sources ${data:-<none>}"
jupyter server extension list 2>&1 | grep -i staging || true
exec jupyter lab "${options[@]}" "$@"
