#!/bin/bash
# Entrypoint of the test Redis image, with the upstream image's contract: `redis-server
# [/path/redis.conf] [options]` runs as the redis user (uid 999, as in the official images, so a
# 0600 configuration file owned by 999 is readable) with /data as its working (dump) directory;
# any other command (redis-cli of the role's one-off client) is executed as it is.
set -euo pipefail
case "${1:-}" in
  -*|*.conf) set -- redis-server "$@" ;;
esac
if [ "${1:-}" != redis-server ]; then exec "$@"; fi
shift
args=()
case "${1:-}" in *.conf) args+=("$1"); shift ;; esac  # the configuration file comes first
args+=(--dir /data --bind '* -::*' "$@")
if [ "$(id -u)" = 0 ]; then
  chown -R redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server "${args[@]}"
fi
exec redis-server "${args[@]}"
