#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine (test controller only).
# Installs Debian's docker.io when dockerd is missing and starts dockerd with the flags this
# kind of machine needs: no bridge, no iptables (test containers use host networking).
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "== installing docker.io (Debian's package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  echo "== starting dockerd (bridge none, no iptables; log /var/log/dify-test-dockerd.log)"
  nohup dockerd --bridge=none --iptables=false --ip6tables=false --ip-forward=false \
    --ip-masq=false --storage-driver=overlay2 >>/var/log/dify-test-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info >/dev/null 2>&1 || { echo "dockerd did not come up; see /var/log/dify-test-dockerd.log" >&2; exit 1; }
