#!/bin/sh
# Run redis-server as the redis user with /data as its working (dump) directory.
set -e
chown -R redis:redis /data
if [ "$1" = redis-server ]; then
  shift
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server --dir /data --bind '* -::*' "$@"
fi
exec "$@"
