#!/usr/bin/env bash
# `make demo`: initialise a throwaway installation under .demo/, run it with this
# host's agent, log in, deploy the example app (examples/hello) and print what to
# try. Ctrl-C stops the server; the app's machine and the edge keep running, and a
# restarted server adopts them; `make demo-clean` stops and removes everything.
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

edge_http="${DEMO_EDGE_HTTP_PORT:-9080}"
edge_https="${DEMO_EDGE_HTTPS_PORT:-9443}"
mkdir -p "$demo/agent" && chmod 711 "$demo" "$demo/agent"
HANGAR_EDGE_METRICS_PORT="${DEMO_EDGE_METRICS_PORT:-0}" HANGAR_METRICS_PORT="${DEMO_METRICS_PORT:-0}" \
"$hangar" server run --data-dir "$demo/data" --listen-port "$port" --agent-dir "$demo/agent" \
  --agent-listen-port "${DEMO_AGENT_PORT:-$((port + 1))}" \
  --edge-listen-host 127.0.0.1 --edge-http-port "$edge_http" --edge-https-port "$edge_https" \
  >"$demo/server.log" 2>&1 &
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
"$PWD/.venv/bin/python" examples/hello/build.py
(cd examples/hello && "$hangar" deploy)
echo
"$hangar" status --app hello
address=$("$hangar" machines list --app hello --json | "$PWD/.venv/bin/python" -c \
  'import json, sys; print(json.load(sys.stdin)[0]["address"])')
echo
echo "The app answers on its private address:"
"$PWD/.venv/bin/python" - "$address" <<'PY'
import socket, sys
with socket.create_connection((sys.argv[1], 8080), timeout=5) as s:
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    body = b"".join(iter(lambda: s.recv(65536), b""))
print("  " + body.split(b"\r\n\r\n", 1)[1].decode().strip().splitlines()[-1])
PY
echo
echo "And through the edge (HAProxy), over HTTPS with a certificate from the installation's CA:"
"$PWD/.venv/bin/python" - "$edge_https" "$edge_http" "$demo/data/ca.crt" <<'PY'
import http.client, socket, ssl, sys, time
https_port, http_port, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
host = "hello.apps.localhost"
ctx = ssl.create_default_context(cafile=ca)
for _ in range(100):  # the edge takes the machine into rotation once its check passes
    try:
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", https_port), timeout=5),
                               server_hostname=host)
        conn = http.client.HTTPSConnection(host, https_port, context=ctx)
        conn.sock = sock
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        body = response.read().decode()
        if response.status == 200:
            break
    except OSError:
        pass
    time.sleep(0.2)
print(f"  https://{host}:{https_port}/ -> {response.status}, {sock.version()},"
      f" HSTS: {response.getheader('Strict-Transport-Security')}")
print("  " + body.strip().splitlines()[-1])
plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
plain.request("GET", "/", headers={"Host": host})
redirect = plain.getresponse()
print(f"  http://{host}:{http_port}/ -> {redirect.status} {redirect.getheader('Location')}")
PY
echo
"$hangar" audit verify --org demo

cat <<EOF

Hangar is running at $api (log: $demo/server.log); its edge answers on
https://127.0.0.1:$edge_https and http://127.0.0.1:$edge_http.
In another terminal, point the CLI at this demo and try:

  curl --cacert $demo/data/ca.crt --resolve hello.apps.localhost:$edge_https:127.0.0.1 \\
    https://hello.apps.localhost:$edge_https/
  export HANGAR_CONFIG_DIR=$demo/cli
  .venv/bin/hangar edge status
  .venv/bin/hangar certs list --app hello
  .venv/bin/hangar status --app hello
  .venv/bin/hangar releases --app hello
  .venv/bin/hangar deploy --config examples/hello/hangar.toml --strategy immediate
  .venv/bin/hangar machines list --app hello
  .venv/bin/hangar auth whoami
  .venv/bin/hangar tokens create readonly --org demo --expiry 1h
  .venv/bin/hangar tokens attenuate --app hello --actions read --expiry 10m
  .venv/bin/hangar audit list --org demo
  .venv/bin/hangar audit verify --org demo
  .venv/bin/hangar config validate examples/hangar.toml

Ctrl-C stops the server; the machine and the edge keep serving, and a restarted
server adopts them (\`make demo\` again). To stop and remove everything, after Ctrl-C:

  make demo-clean      # hangar server stop --data-dir $demo/data --agent-dir $demo/agent, then rm -rf $demo
EOF

if [ "${DEMO_ONESHOT:-}" = 1 ]; then
  exit 0
fi
wait "$server"
