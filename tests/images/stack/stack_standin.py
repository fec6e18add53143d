"""Stand-ins for the Dify images in the dify Molecule scenario (test doubles, NOT Dify).

One entry point plays every Dify-owned container of the stack, chosen by the
image's DIFY_STANDIN_ROLE (and, for the api image, by the MODE variable that
the real langgenius/dify-api image reads too):

* ``api``           -> the Dify API stand-in (tests/dify_standin, contract 4) on
                       DIFY_PORT (5001), state in the stack's PostgreSQL built from
                       DB_USERNAME / DB_PASSWORD / DB_HOST / DB_PORT / DB_DATABASE;
* ``worker``/``beat`` -> an idle process (Celery stand-in; checks the DB once);
* ``web``           -> the stand-in in web mode (a small page) on port 3000;
* ``plugin_daemon`` -> /health on SERVER_PORT (5002); creates its own database
                       DB_DATABASE (dify_plugin) like the real daemon does;
* ``sandbox``       -> /health on SANDBOX_PORT (8194); refuses to start without API_KEY.

DIFY_STANDIN_BROKEN=1 (baked into a "broken" image tag) makes the api exit at
start like a failed migration, to test upgrade rollback.
Only the standard library, plus psycopg2 (Debian python3-psycopg2).
"""

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote


def log(msg):
    sys.stdout.write("[dify stand-in %s] %s\n" % (ROLE, msg))
    sys.stdout.flush()


def dsn(database=None):
    env = os.environ
    return "postgresql://%s:%s@%s:%s/%s" % (
        quote(env.get("DB_USERNAME", "postgres"), safe=""),
        quote(env.get("DB_PASSWORD", ""), safe=""),
        env.get("DB_HOST", "db_postgres"),
        env.get("DB_PORT", "5432"),
        quote(database or env.get("DB_DATABASE", "dify"), safe=""),
    )


def pg_connect(database, tries=60):
    import psycopg2

    last = None
    for _ in range(tries):
        try:
            return psycopg2.connect(dsn(database))
        except psycopg2.OperationalError as exc:
            last = exc
            time.sleep(1)
    raise SystemExit("cannot reach PostgreSQL: %s" % last)


def serve(port, routes):
    class Handler(BaseHTTPRequestHandler):
        server_version = "dify-%s-standin" % ROLE

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            for prefix, (status, ctype, body) in routes.items():
                if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                    data = body.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
            self.send_error(404)

        def log_message(self, fmt, *args):
            pass

    httpd = ThreadingHTTPServer(("0.0.0.0", int(port)), Handler)
    log("listening on %s" % port)
    httpd.serve_forever()


def run_api():
    if os.environ.get("DIFY_STANDIN_BROKEN") == "1":
        log("deliberately broken stand-in version: failing at start like a failed migration")
        sys.exit(3)
    pg_connect(os.environ.get("DB_DATABASE", "dify")).close()
    listen = "%s:%s" % (os.environ.get("DIFY_BIND_ADDRESS", "0.0.0.0"), os.environ.get("DIFY_PORT", "5001"))
    # the DSN holds DB_PASSWORD: through the environment, like Dify's api reads it, never argv
    os.environ["DIFY_STANDIN_DSN"] = dsn()
    args = [sys.executable, "-m", "dify_standin", "--listen", listen,
            "--version", os.environ.get("DIFY_STANDIN_VERSION", "0.0.0")]
    log("exec dify_standin (version %s)" % args[-1])
    os.execv(sys.executable, args)


def run_idle():
    pg_connect(os.environ.get("DB_DATABASE", "dify")).close()
    log("idle (%s stand-in); database reachable" % ROLE)
    while True:
        time.sleep(3600)


def run_plugin_daemon():
    if not os.environ.get("SERVER_KEY") or not os.environ.get("DIFY_INNER_API_KEY"):
        raise SystemExit("SERVER_KEY and DIFY_INNER_API_KEY are required")
    name = os.environ.get("DB_DATABASE", "dify_plugin")
    conn = pg_connect("postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute('CREATE DATABASE "%s"' % name.replace('"', ""))
            log("created database %s" % name)
    conn.close()
    conn = pg_connect(name)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS plugin_standin (id text PRIMARY KEY, note text)")
        cur.execute("INSERT INTO plugin_standin VALUES ('marker', 'plugin daemon stand-in') ON CONFLICT DO NOTHING")
    conn.close()
    serve(os.environ.get("SERVER_PORT", "5002"),
          {"/health": (200, "application/json", json.dumps({"code": 0, "message": "ok", "standin": True}))})


def run_sandbox():
    if not os.environ.get("API_KEY"):
        raise SystemExit("API_KEY is required")
    serve(os.environ.get("SANDBOX_PORT", "8194"),
          {"/health": (200, "application/json", json.dumps({"status": "ok", "standin": True}))})


def run_web():
    args = [sys.executable, "-m", "dify_standin", "--mode", "web", "--listen", "0.0.0.0:%s" % os.environ.get("PORT", "3000"),
            "--version", os.environ.get("DIFY_STANDIN_VERSION", "0.0.0")]
    os.execv(sys.executable, args)


ROLE = os.environ.get("DIFY_STANDIN_ROLE", "api-image")
if ROLE == "api-image":
    ROLE = {"api": "api", "worker": "worker", "beat": "beat"}.get(os.environ.get("MODE", "api"), "api")


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    {"api": run_api, "worker": run_idle, "beat": run_idle, "web": run_web,
     "plugin_daemon": run_plugin_daemon, "sandbox": run_sandbox}[ROLE]()


if __name__ == "__main__":
    main()
