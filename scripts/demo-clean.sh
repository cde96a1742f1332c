#!/usr/bin/env bash
# `make demo-clean`: stop what `make demo` left running (the app's machine, HAProxy,
# their nftables table, interfaces, mounts and resolver address) with
# `hangar server stop`, then delete the throwaway installation under .demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

demo="${DEMO_DIR:-$PWD/.demo}"
if [ ! -d "$demo" ]; then
  echo "No demo installation in $demo: nothing to clean."
  exit 0
fi
if [ -f "$demo/data/ca.crt" ]; then
  # The demo's server listened on DEMO_PORT: `server stop` refuses while it answers there.
  HANGAR_LISTEN_PORT="${DEMO_PORT:-8443}" \
    "$PWD/.venv/bin/hangar" server stop --data-dir "$demo/data" --agent-dir "$demo/agent" --yes
fi
rm -rf "$demo"
echo "Removed $demo."
