"""CLI of the plugin daemon stand-in (a test double of Dify's plugin daemon, not the daemon).

PYTHONPATH=tests python -m plugin_daemon_standin --listen 127.0.0.1:17650 --api-key KEY --state-dir DIR \
    [--python PY312] [--uv UV] [--cache DIR] [--force-verifying-signature true|false]

SIGTERM (or SIGINT) stops it and every plugin process it started.
"""

import argparse
import os
import signal
import sys
import threading

from . import default_cache_dir
from .server import NAME, make_server, stderr_logger


def _bool(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError("expected true or false, got %r" % text)


def main(argv=None):
    p = argparse.ArgumentParser(prog="plugin_daemon_standin",
                                description="Plugin daemon stand-in: serves the plugin daemon API dify-api calls and "
                                            "runs the real provider plugins through the dify-plugin SDK")
    p.add_argument("--listen", default=os.environ.get("PLUGIN_DAEMON_STANDIN_LISTEN", "127.0.0.1:5002"),
                   help="host:port (default 127.0.0.1:5002, the daemon's port)")
    p.add_argument("--api-key", default=os.environ.get("SERVER_KEY"),
                   help="the X-Api-Key dify-api must send (Dify's PLUGIN_DAEMON_KEY; env SERVER_KEY)")
    p.add_argument("--state-dir", required=True, help="packages, installations, tasks and unpacked plugins")
    p.add_argument("--python", help="interpreter for every plugin (default: found for the plugin's runner "
                                    "version: pyenv, then `uv python find`, then pythonX.Y on PATH)")
    p.add_argument("--uv", help="uv binary (default: UV_PATH, uv on PATH, uv beside this python)")
    p.add_argument("--cache", default=None, help="where plugin venvs are cached by lock hash (default: "
                                                 "$PLUGIN_DAEMON_STANDIN_CACHE or %s)" % default_cache_dir())
    p.add_argument("--force-verifying-signature", type=_bool,
                   default=_bool(os.environ.get("FORCE_VERIFYING_SIGNATURE", "true")),
                   help="the daemon's FORCE_VERIFYING_SIGNATURE (default true, as the daemon); the stand-in "
                        "verifies no signature, so packages install only when this is false")
    p.add_argument("--env-init-timeout", type=float, default=600.0,
                   help="seconds an install may take to build the environment and start the plugin (default 600; "
                        "the daemon's PYTHON_ENV_INIT_TIMEOUT is 120)")
    p.add_argument("--max-execution-timeout", type=float, default=600.0,
                   help="seconds a dispatch may stream before it is killed (PLUGIN_MAX_EXECUTION_TIMEOUT, 600)")
    p.add_argument("--no-tiktoken-cache", action="store_true",
                   help="do not give plugins tiktoken's GPT-2 files (TIKTOKEN_CACHE_DIR; the daemon image preloads "
                        "them, see tiktoken_cache.py)")
    p.add_argument("--no-launch-installed", action="store_true",
                   help="do not start installed plugins at boot (they start on their first call)")
    args = p.parse_args(argv)
    if not args.api_key:
        p.error("--api-key is required (or SERVER_KEY)")
    host, _, port = args.listen.rpartition(":")
    log = stderr_logger()
    srv = make_server((host or "127.0.0.1", int(port)), api_key=args.api_key, state_dir=args.state_dir,
                      cache_dir=args.cache or default_cache_dir(), python=args.python, uv=args.uv,
                      force_verifying_signature=args.force_verifying_signature,
                      env_init_timeout=args.env_init_timeout, max_execution_timeout=args.max_execution_timeout,
                      log=log, launch_installed=not args.no_launch_installed, tiktoken=not args.no_tiktoken_cache)

    def stop(signum, _frame):
        log("signal %d: stopping" % signum)
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log("%s (a test double, not the plugin daemon) listening on %s:%d, state %s, signature verification %s" % (
        NAME, srv.server_address[0], srv.server_address[1], args.state_dir,
        "forced" if args.force_verifying_signature else "off (unsigned packages accepted)"))
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        srv.close_all()
        log("stopped; every plugin process ended")
    return 0


if __name__ == "__main__":
    sys.exit(main())
