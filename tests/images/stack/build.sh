#!/usr/bin/env bash
# Build the images the dify Molecule scenario runs inside its test host, all from
# dify-test/base:debian13 with Debian packages (no registry can be pulled here):
#   dify-test/stack-postgres:17     PostgreSQL 17 + pgvector (db_postgres and pgvector)
#   dify-test/stack-redis:8         Redis
#   dify-test/stack-nginx:1         nginx
#   dify-test/stack-squid:6         squid (ssrf_proxy)
#   dify-test/dify-standin:<v>      the Dify STAND-IN (api/worker/beat), versions 1.15.0, 1.16.1, broken
#   dify-test/dify-standin-{web,plugin-daemon,sandbox}:<v>   the same stand-in in its other roles
#   dify-test/stack-host:debian13   the scenarios' systemd test host with Docker inside (not in the
#                                   archive: it is the platform image)
# and writes them into one archive (docker save) that the scenario hands to the
# role as `dify_image_archives`. Images and archive carry the hash of their recipe
# (this directory + tests/dify_standin), so a machine builds them once.
# Usage: tests/images/stack/build.sh   -> prints the archive path on the last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tests="$(cd "$here/../.." && pwd)"
out="${DIFY_STACK_IMAGE_DIR:-/var/cache/dify-test-images/stack}"
base="dify-test/base:debian13"
mkdir -p "$out"
# one build at a time per machine (the scenarios' prepare calls this too; a second caller waits,
# then finds everything current)
exec 8>"$out/.build.lock"
flock 8

if ! docker image inspect "$base" >/dev/null 2>&1; then
  echo "missing $base: run tests/images/build.sh debian13 first" >&2; exit 1
fi
base_id="$(docker image inspect -f '{{.Id}}' "$base")"
# infrastructure images: this directory's recipes; stand-in images: also the stand-in's code
infra_hash="$( (cd "$here" && cat Dockerfile.postgres Dockerfile.redis Dockerfile.nginx Dockerfile.squid postgres-entrypoint.sh redis-entrypoint.sh; \
                echo "$base_id") | sha256sum | cut -c1-16)"
standin_hash="$( (cd "$here" && cat Dockerfile.standin stack_standin.py flask_standin.py; \
                  find "$tests/dify_standin" -name '*.py' -print0 | sort -z | xargs -0 cat; \
                  echo "$base_id") | sha256sum | cut -c1-16)"
archive="$out/dify-stack-$infra_hash-$standin_hash.tar"

current() { [ "$(docker image inspect -f '{{ index .Config.Labels "dify-test.recipe" }}' "$1" 2>/dev/null || true)" = "$hash" ]; }

build() {  # tag dockerfile context [build args...]
  local tag=$1 file=$2 ctx=$3; shift 3
  if current "$tag"; then return 0; fi
  echo "== build $tag" >&2
  docker build -q --network host --build-arg "BASE=$base" "$@" --label "dify-test.recipe=$hash" \
    -t "$tag" -f "$here/$file" "$ctx" >/dev/null
}

role_tag() {  # role image version
  local role=$1 tag=$2 from=$3
  if current "$tag"; then return 0; fi
  printf 'FROM %s\nENV DIFY_STANDIN_ROLE=%s\n' "$from" "$role" |
    docker build -q --label "dify-test.recipe=$hash" -t "$tag" - >/dev/null
}

hash=$infra_hash
build dify-test/stack-postgres:17 Dockerfile.postgres "$here"
# the test host: FROM the systemd image (not the base), hashed with its own recipe
host_hash="$( (cd "$here" && cat Dockerfile.host; docker image inspect -f '{{.Id}}' dify-test/systemd:debian13) |
              sha256sum | cut -c1-16)"
if [ "$(docker image inspect -f '{{ index .Config.Labels "dify-test.recipe" }}' dify-test/stack-host:debian13 2>/dev/null || true)" \
     != "$host_hash" ]; then
  echo "== build dify-test/stack-host:debian13" >&2
  docker build -q --network host --build-arg BASE=dify-test/systemd:debian13 --label "dify-test.recipe=$host_hash" \
    -t dify-test/stack-host:debian13 -f "$here/Dockerfile.host" "$here" >/dev/null
fi
build dify-test/stack-redis:8 Dockerfile.redis "$here"
build dify-test/stack-nginx:1 Dockerfile.nginx "$here"
build dify-test/stack-squid:6 Dockerfile.squid "$here"
[ "${1:-}" = --infra-only ] && exit 0
if [ ! -f "$tests/dify_standin/__main__.py" ]; then
  echo "missing tests/dify_standin (the Dify API stand-in)" >&2; exit 1
fi
hash=$standin_hash
build dify-test/dify-standin:1.15.0 Dockerfile.standin "$tests" --build-arg VERSION=1.15.0
build dify-test/dify-standin:1.16.1 Dockerfile.standin "$tests" --build-arg VERSION=1.16.1
build dify-test/dify-standin:broken Dockerfile.standin "$tests" --build-arg VERSION=1.99.0 --build-arg BROKEN=1
images=(dify-test/stack-postgres:17 dify-test/stack-redis:8 dify-test/stack-nginx:1 dify-test/stack-squid:6
        dify-test/dify-standin:1.15.0 dify-test/dify-standin:1.16.1 dify-test/dify-standin:broken)
for v in 1.15.0 1.16.1; do
  for role in web plugin_daemon sandbox; do
    tag="dify-test/dify-standin-${role//_/-}:$v"
    role_tag "$role" "$tag" "dify-test/dify-standin:$v"
    images+=("$tag")
  done
done

if [ ! -s "$archive" ]; then
  echo "== save $archive" >&2
  rm -f "$out"/dify-stack-*.tar
  docker save -o "$archive.tmp" "${images[@]}" && mv "$archive.tmp" "$archive"
fi
# a stable name for the scenario's inventory (relative link: valid inside the test host too)
ln -sfn "$(basename "$archive")" "$out/dify-stack.tar"
echo "$archive"
