#!/usr/bin/env bash
# Install the Debian packages Hangar and its tests need, only those missing.
set -euo pipefail
packages=(python3-venv postgresql wrk runc busybox-static skopeo docker-registry softhsm2)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  sudo=sudo
else
  sudo=
fi
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
# docker-registry is only for tests, which run their own on loopback: its
# packaged service (listening on every address) must not start or stay enabled.
policy=/usr/sbin/policy-rc.d
guarded=
if [[ " ${missing[*]} " == *" docker-registry "* ]] && [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  guarded=1
fi
trap '[ -n "$guarded" ] && $sudo rm -f "$policy"' EXIT
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ -n "$guarded" ] && [ -d /run/systemd/system ]; then
  $sudo systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
