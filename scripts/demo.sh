#!/usr/bin/env bash
# Start JupyterLab with jupyter_staging on a demo folder; ../shared/data is the (read-only) source root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=${STAGING_DEMO_DATA:-$(cd "$here/../shared/data" 2>/dev/null && pwd || true)}
root="$here/demo"
mkdir -p "$root"
python "$here/scripts/make_demo_notebook.py" "$root" "${data:-}"
extra=()
[ "$(id -u)" = 0 ] && extra+=(--allow-root)
# One item per flag: jupyter_server defers extension traits, so "['/x']" would be taken as one odd path.
[ -n "$data" ] && extra+=("--StagingApp.source_roots=$data")
echo "jupyter_staging demo: root $root, sources ${data:-<none>}"
jupyter server extension list 2>&1 | grep -i staging || true
exec jupyter lab --no-browser --ip=127.0.0.1 --port="${PORT:-8888}" \
  --ServerApp.root_dir="$root" --LabApp.default_url=/lab/tree/staging-demo.ipynb "${extra[@]}" "$@"
