#!/usr/bin/env bash
# Host packages the test run needs beside the venv (Debian's packages):
#   debootstrap (test images), rsync (Molecule), curl,
#   postgresql-15 + redis-server (the real-Dify harness, tests/real_dify: Dify's database and Redis;
#   the harness starts its own loopback instances, never the system services).
set -euo pipefail
missing=()
for cmd in debootstrap rsync curl redis-server; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
[[ -x /usr/lib/postgresql/15/bin/postgres ]] || missing+=(postgresql-15)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts the packaged services where systemd runs; the harness wants their ports free
# and runs its own instances, so keep the packaged ones stopped.
if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
  systemctl disable --now redis-server postgresql >/dev/null 2>&1 || true
fi
