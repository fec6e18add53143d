#!/usr/bin/env bash
# Save local images as tar archives for test hosts to `docker load` (no registry here).
# Archives are named by image and cached by image ID in $DIFY_TEST_CACHE/archives.
# Usage: tests/images/archive.sh IMAGE...   (prints the archive paths)
set -euo pipefail
dir="${DIFY_TEST_CACHE:-/var/cache/dify-test-images}/archives"
mkdir -p "$dir"
for image in "$@"; do
  id="$(docker image inspect -f '{{.Id}}' "$image" | cut -d: -f2 | cut -c1-12)"
  name="$(echo "$image" | tr '/:' '__')"
  out="$dir/$name.tar"
  if [[ ! -f "$out" || "$(cat "$out.id" 2>/dev/null)" != "$id" ]]; then
    docker save -o "$out.tmp" "$image" && mv "$out.tmp" "$out" && echo "$id" > "$out.id"
  fi
  echo "$out"
done
