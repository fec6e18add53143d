#!/bin/sh
# Build the cloudflared STAND-IN package (a test double, see cloudflared-standin.py):
#   tests/standins/cloudflared/build.sh OUTPUT.deb
# Writes OUTPUT.deb: package "cloudflared" (version <x>~standin1),
# described as "cloudflared-standin", with /usr/bin/cloudflared. Needs dpkg-deb.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build.sh OUTPUT.deb}"
version="2025.11.1~standin1"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/doc/cloudflared" "$(dirname "$out")"
install -m 0755 "$here/cloudflared-standin.py" "$root/usr/bin/cloudflared"
cat > "$root/usr/share/doc/cloudflared/README.standin" <<DOC
This is cloudflared-standin, a test double built by tests/standins/cloudflared/build.sh.
It is not Cloudflare's cloudflared and never connects to Cloudflare.
DOC
cat > "$root/DEBIAN/control" <<CONTROL
Package: cloudflared
Version: $version
Architecture: all
Maintainer: dify-ansible tests <tests@localhost>
Depends: python3
Section: net
Priority: optional
Description: cloudflared-standin (test double of Cloudflare's cloudflared)
 Stand-in used by the edge Molecule scenario; accepts the command lines the
 cloudflared role runs and serves /ready on the metrics address.
CONTROL
dpkg-deb --root-owner-group --build "$root" "$out" >/dev/null
echo "$out"
