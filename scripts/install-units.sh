#!/usr/bin/env bash
# `make install-units`: install Hangar's systemd units (deploy/systemd/) with this
# checkout's `hangar` and the given directories, then reload systemd.
#
#   scripts/install-units.sh                    # both units into /etc/systemd/system
#   DATA_DIR=/srv/hangar scripts/install-units.sh
#   UNIT_DIR=/tmp/units scripts/install-units.sh   # write only (no reload): to inspect
#
# Then: systemctl enable --now hangar-server   (or hangar-agent, once the host joined)
set -euo pipefail
cd "$(dirname "$0")/.."

hangar="${HANGAR:-$PWD/.venv/bin/hangar}"
data_dir="${DATA_DIR:-/var/lib/hangar}"
agent_dir="${AGENT_DIR:-${data_dir}-agent}"
agent_only_dir="${AGENT_ONLY_DIR:-/var/lib/hangar-agent}"
unit_dir="${UNIT_DIR:-/etc/systemd/system}"
docs="$PWD/docs"

for path in "$hangar" "$data_dir" "$agent_dir" "$agent_only_dir" "$docs"; do
  case "$path" in
    /*) ;;
    *) echo "error: $path is not an absolute path (systemd needs one)" >&2; exit 2 ;;
  esac
  case "$path" in
    *[[:space:]@%\$\\]*) echo "error: $path holds a character systemd would expand" >&2; exit 2 ;;
  esac
done
[ -x "$hangar" ] || { echo "error: $hangar is not executable; run \`make venv\`" >&2; exit 2; }

mkdir -p "$unit_dir"
render() {  # render TEMPLATE AGENT_DIR > UNIT
  sed -e "s|@HANGAR@|$hangar|g" -e "s|@DATA_DIR@|$data_dir|g" \
      -e "s|@AGENT_DIR@|$2|g" -e "s|@DOCS@|$docs|g" "$1"
}
render deploy/systemd/hangar-server.service "$agent_dir" >"$unit_dir/hangar-server.service"
render deploy/systemd/hangar-agent.service "$agent_only_dir" >"$unit_dir/hangar-agent.service"
chmod 644 "$unit_dir/hangar-server.service" "$unit_dir/hangar-agent.service"
echo "Installed hangar-server.service and hangar-agent.service in $unit_dir."

if [ -z "${UNIT_DIR:-}" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "Next: systemctl enable --now hangar-server   (or hangar-agent on a joined host)"
fi
