#!/bin/sh
# Build the stand-in nvidia-container-toolkit package (tests only; see README.md).
# Usage: build.sh OUTDIR [VERSION]
set -eu
out="$1"
version="${2:-1.17.8-1}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/DEBIAN" "$root/usr/bin"
sed "s/@VERSION@/$version/g" "$here/control.in" > "$root/DEBIAN/control"
install -m 0755 "$here/nvidia-container-runtime" "$root/usr/bin/nvidia-container-runtime"
mkdir -p "$out"
dpkg-deb --root-owner-group --build "$root" "$out/nvidia-container-toolkit-standin_${version}_all.deb" >/dev/null
echo "$out/nvidia-container-toolkit-standin_${version}_all.deb"
