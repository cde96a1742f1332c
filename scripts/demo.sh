#!/usr/bin/env bash
# `make demo`: initialise a throwaway installation under .demo/, run it, log in,
# create an example app and print what to try. Ctrl-C stops the server.
# DEMO_ONESHOT=1 stops after the tour (for scripted checks).
set -euo pipefail
cd "$(dirname "$0")/.."

demo="${DEMO_DIR:-$PWD/.demo}"
port="${DEMO_PORT:-8443}"
api="https://127.0.0.1:${port}"
hangar="$PWD/.venv/bin/hangar"
export HANGAR_CONFIG_DIR="$demo/cli"

if [ ! -f "$demo/data/ca.crt" ]; then
  mkdir -p "$demo"
  "$hangar" server init --data-dir "$demo/data" --org demo --admin-email admin@demo.example \
    --token-expiry 365d --token-file "$demo/admin.token" >/dev/null
  echo "Initialised a demo installation in $demo/data"
fi

"$hangar" server run --data-dir "$demo/data" --listen-port "$port" >"$demo/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  if "$PWD/.venv/bin/python" - "$api" "$demo/data/ca.crt" <<'PY' 2>/dev/null; then break; fi
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
urllib.request.urlopen(sys.argv[1] + "/v1/healthz", context=ctx, timeout=1)
PY
  kill -0 "$server" 2>/dev/null || { cat "$demo/server.log"; exit 1; }
  sleep 0.2
done

"$hangar" --api "$api" auth login --ca-cert "$demo/data/ca.crt" --token - <"$demo/admin.token"
"$hangar" apps show hello >/dev/null 2>&1 || "$hangar" apps create hello --org demo
echo
"$hangar" apps list
echo
"$hangar" audit verify --org demo

cat <<EOF

Hangar is running at $api (log: $demo/server.log).
In another terminal, point the CLI at this demo and try:

  export HANGAR_CONFIG_DIR=$demo/cli
  .venv/bin/hangar auth whoami
  .venv/bin/hangar apps create clinic-api
  .venv/bin/hangar tokens create readonly --org demo --expiry 1h
  .venv/bin/hangar tokens attenuate --app hello --actions read --expiry 10m
  .venv/bin/hangar audit list --org demo
  .venv/bin/hangar audit verify --org demo
  .venv/bin/hangar config validate examples/hangar.toml

Ctrl-C stops the server; \`rm -rf .demo\` forgets the installation.
EOF

if [ "${DEMO_ONESHOT:-}" = 1 ]; then
  exit 0
fi
wait "$server"
