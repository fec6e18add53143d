#!/usr/bin/env bash
# Build the test base images locally: no container registry can be reached.
#   base:    debootstrap (minbase) -> docker import   dify-test/base:<flavour>
#   systemd: Dockerfile.systemd on top of the base    dify-test/systemd:<flavour>
# Each image carries a label with the hash of its recipe; an image whose label
# matches is reused, so a machine builds each flavour once.
# Flavours: debian13 and debian12 are required; ubuntu2404 is built when
# Ubuntu's archive answers and skipped with a message when it does not.
# Usage: tests/images/build.sh [flavour...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${DIFY_TEST_CACHE:-/var/cache/dify-test-images}"
mkdir -p "$cache"

recipe_hash() {  # hash of everything that shapes the images of a flavour
  cat "$here/build.sh" "$here/Dockerfile.systemd" | { cat; echo "$1"; } | sha256sum | cut -c1-16
}

image_hash() { docker image inspect -f '{{ index .Config.Labels "dify-test.recipe" }}' "$1" 2>/dev/null || true; }

flavour_args() {  # suite mirror extra-debootstrap-args
  case "$1" in
    debian13) echo "trixie http://deb.debian.org/debian" ;;
    debian12) echo "bookworm http://deb.debian.org/debian" ;;
    ubuntu2404) echo "noble http://archive.ubuntu.com/ubuntu" ;;
    *) echo "unknown flavour $1" >&2; return 1 ;;
  esac
}

build_base() {
  local flavour=$1 hash=$2 suite mirror root
  read -r suite mirror < <(flavour_args "$flavour")
  root="$(mktemp -d "$cache/root-$flavour.XXXX")"
  local extra=()
  if [[ $flavour == ubuntu* ]]; then
    extra=(--no-check-gpg --components=main,universe)
  fi
  echo "== debootstrap $suite ($flavour)"
  if ! debootstrap --variant=minbase "${extra[@]}" "$suite" "$root" "$mirror" \
      ${extra:+/usr/share/debootstrap/scripts/gutsy} > "$cache/debootstrap-$flavour.log" 2>&1; then
    rm -rf "$root"; tail -5 "$cache/debootstrap-$flavour.log" >&2; return 1
  fi
  rm -rf "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | docker import -c "LABEL dify-test.recipe=$hash" - "dify-test/base:$flavour" >/dev/null
  rm -rf "$root"
}

build_flavour() {
  local flavour=$1 hash
  hash="$(recipe_hash "$flavour")"
  if [[ "$(image_hash "dify-test/systemd:$flavour")" == "$hash" ]]; then
    echo "== dify-test/systemd:$flavour is current ($hash)"; return 0
  fi
  if [[ "$(image_hash "dify-test/base:$flavour")" != "$hash" ]]; then
    build_base "$flavour" "$hash" || return 1
  fi
  echo "== systemd layer ($flavour)"
  docker build -q --network host --build-arg "BASE=dify-test/base:$flavour" \
    --label "dify-test.recipe=$hash" -t "dify-test/systemd:$flavour" \
    -f "$here/Dockerfile.systemd" "$here" >/dev/null
}

ubuntu_reachable() {
  curl -fsS -m 15 -o /dev/null http://archive.ubuntu.com/ubuntu/dists/noble/Release
}

flavours=("$@")
[[ ${#flavours[@]} -gt 0 ]] || flavours=(debian13 debian12 ubuntu2404)
for f in "${flavours[@]}"; do
  if [[ $f == ubuntu2404 ]] && ! ubuntu_reachable; then
    echo "== SKIP ubuntu2404: Ubuntu's archive does not answer from this machine;" \
         "scenarios run on Debian only." >&2
    continue
  fi
  if ! build_flavour "$f"; then
    if [[ $f == ubuntu* ]]; then
      echo "== SKIP $f: build failed (optional flavour)" >&2; continue
    fi
    echo "== FAILED to build $f" >&2; exit 1
  fi
done
docker image ls 'dify-test/*' --format '{{.Repository}}:{{.Tag}} {{.Size}}'
