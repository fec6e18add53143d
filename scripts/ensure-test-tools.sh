#!/usr/bin/env bash
# Host packages the test run needs beside the venv: debootstrap (test images), rsync (Molecule).
set -euo pipefail
missing=()
for cmd in debootstrap rsync curl; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
