#!/usr/bin/env bash
# Install the Debian packages Hangar and its tests need, only those missing.
set -euo pipefail
packages=(python3-venv postgresql wrk runc tini busybox-static skopeo docker-registry softhsm2 haproxy pebble caddy nftables iperf3 wireguard-tools wireguard-go tcpdump systemd prometheus rsyslog rsyslog-gnutls gocryptfs fuse3 restic fio cryptsetup-bin e2fsprogs chromium)
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
# Packages that ship a service: Hangar runs its own HAProxy (the edge), and the
# tests run their own registry and Caddy on loopback. The packaged services
# (listening on every address) must not start or stay enabled; Prometheus is
# only for the tests, which run their own on loopback; so is rsyslog (a TLS
# syslog receiver the tests start on loopback).
services=(docker-registry haproxy caddy prometheus rsyslog)
policy=/usr/sbin/policy-rc.d
guarded=
wants_guard=
for svc in "${services[@]}"; do
  [[ " ${missing[*]} " == *" $svc "* ]] && wants_guard=1
done
if [ -n "$wants_guard" ] && [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  guarded=1
fi
trap '[ -n "$guarded" ] && $sudo rm -f "$policy"' EXIT
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ -n "$wants_guard" ] && [ -d /run/systemd/system ]; then
  for svc in "${services[@]}"; do
    $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
fi
