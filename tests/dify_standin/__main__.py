"""CLI of the Dify API stand-in (a test double, not Dify).

PYTHONPATH=tests python3 -m dify_standin --listen 0.0.0.0:5001 [--dsn postgresql://...] [--version 1.15.0]
"""

import argparse
import os
import signal
import sys

from .server import make_server


def _bool_env(name):
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def main(argv=None):
    p = argparse.ArgumentParser(prog="dify_standin",
                                description="Dify API stand-in (test double of Dify's console and service API)")
    p.add_argument("--listen", default=os.environ.get("DIFY_STANDIN_LISTEN", "127.0.0.1:5001"),
                   help="host:port to listen on (default 127.0.0.1:5001)")
    p.add_argument("--dsn", default=os.environ.get("DIFY_STANDIN_DSN"),
                   help="PostgreSQL DSN; state in memory when omitted (needs python3-psycopg2)")
    p.add_argument("--version", default=os.environ.get("DIFY_STANDIN_VERSION", "1.15.0"),
                   help="Dify version to play and report on /health (default 1.15.0)")
    p.add_argument("--mode", choices=("api", "web"), default=os.environ.get("DIFY_STANDIN_MODE", "api"),
                   help="api: console + service API; web: a small HTML page (plays dify-web)")
    p.add_argument("--secure-cookies", action="store_true", default=_bool_env("DIFY_STANDIN_SECURE_COOKIES"),
                   help="name cookies __Host-* with Secure (Dify with https console/api URLs)")
    p.add_argument("--init-password", default=os.environ.get("INIT_PASSWORD") or None,
                   help="require POST /console/api/init with this password before setup (Dify's INIT_PASSWORD)")
    p.add_argument("--admin-api-key", default=os.environ.get("ADMIN_API_KEY") or None,
                   help="enable admin API key auth (ADMIN_API_KEY_ENABLE + ADMIN_API_KEY)")
    p.add_argument("--fail-health", action="store_true", default=_bool_env("DIFY_STANDIN_FAIL_HEALTH"),
                   help="deliberately broken: /health answers 503 and every API call 502")
    p.add_argument("--task-seconds", type=float, default=float(os.environ.get("DIFY_STANDIN_TASK_SECONDS", "0.6")),
                   help="seconds a plugin install task takes (pending -> running -> success)")
    p.add_argument("--index-seconds", type=float,
                   default=float(os.environ.get("DIFY_STANDIN_INDEX_SECONDS", "1.0")),
                   help="seconds a document takes from waiting to completed")
    p.add_argument("--access-token-ttl", type=int, default=3600, help="access token lifetime in seconds")
    p.add_argument("--no-marketplace", action="store_true", help="behave like MARKETPLACE_ENABLED=false")
    p.add_argument("--check-model-endpoints", action="store_true",
                   default=_bool_env("DIFY_STANDIN_CHECK_MODEL_ENDPOINTS"),
                   help="validate model credentials by calling the model server, as Dify does")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = p.parse_args(argv)

    host, _, port = args.listen.rpartition(":")
    srv = make_server((host or "0.0.0.0", int(port)), verbose=args.verbose, version=args.version, dsn=args.dsn,
                      mode=args.mode, secure_cookies=args.secure_cookies, init_password=args.init_password,
                      admin_api_key=args.admin_api_key, fail_health=args.fail_health,
                      task_seconds=args.task_seconds, index_seconds=args.index_seconds,
                      access_token_ttl=args.access_token_ttl, marketplace=not args.no_marketplace,
                      check_model_endpoints=args.check_model_endpoints)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stderr.write("Dify API stand-in (test double, not Dify) %s mode=%s version=%s store=%s\n" % (
        args.listen, args.mode, args.version, "postgresql" if args.dsn else "memory"))
    sys.stderr.flush()
    try:
        srv.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
