"""Plugin daemon **stand-in**: a test double of Dify's plugin daemon (langgenius/dify-plugin-daemon 0.6.3).

It is NOT the plugin daemon. It serves the daemon HTTP API dify-api 1.15.0 calls
(``/plugin/{tenant}/management/...`` and ``/dispatch/...``) and runs the REAL provider plugins
(e.g. langgenius/openai_api_compatible) through the PyPI ``dify-plugin`` SDK, unmodified, over
stdio like the daemon runs local plugins. See README.md for what it plays and what it does not.

As a process (what the real-Dify test harness does)::

    from plugin_daemon_standin import StandinProcess
    standin = StandinProcess(listen="127.0.0.1:17650", api_key="key", state_dir="/tmp/pds")
    standin.start()                 # waits for GET /health
    ...                             # PLUGIN_DAEMON_URL=standin.url PLUGIN_DAEMON_KEY=key
    standin.stop()                  # SIGTERM: it stops every plugin process it started

In-process (unit tests)::

    from plugin_daemon_standin.server import make_server
    srv = make_server(("127.0.0.1", 0), api_key="key", state_dir=..., cache_dir=...)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    ...
    srv.shutdown(); srv.close_all()
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from .envs import PythonNotFound, find_python, find_uv  # noqa: F401 - re-exported

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = "/var/cache/dify-test/plugin-daemon-standin"


def default_cache_dir():
    return os.environ.get("PLUGIN_DAEMON_STANDIN_CACHE") or DEFAULT_CACHE


def find_python312(uv=None):
    """Python 3.12 as the real-Dify harness finds it (pyenv, ``uv python find``, python3.12 on PATH)."""
    return find_python("3.12", uv=uv)


class StandinProcess(object):
    """``python -m plugin_daemon_standin`` as a child in its own process group."""

    def __init__(self, listen, api_key, state_dir, python=None, uv=None, cache=None, log_path=None,
                 force_verifying_signature=False, interpreter=None, extra_args=()):
        self.listen = listen
        self.api_key = api_key
        self.state_dir = state_dir
        self.python = python
        self.uv = uv
        self.cache = cache or default_cache_dir()
        self.log_path = log_path or os.path.join(state_dir, "standin.log")
        self.force_verifying_signature = force_verifying_signature
        self.interpreter = interpreter or sys.executable
        self.extra_args = list(extra_args)
        self.proc = None
        self._log_fh = None

    @property
    def url(self):
        return "http://%s" % self.listen

    def argv(self):
        argv = [self.interpreter, "-m", "plugin_daemon_standin", "--listen", self.listen, "--api-key", self.api_key,
                "--state-dir", self.state_dir, "--cache", self.cache,
                "--force-verifying-signature", "true" if self.force_verifying_signature else "false"]
        if self.python:
            argv += ["--python", self.python]
        if self.uv:
            argv += ["--uv", self.uv]
        return argv + self.extra_args

    def start(self, timeout=30.0):
        os.makedirs(self.state_dir, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE)] + (
            [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self._log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log_fh, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("plugin daemon stand-in exited with %s; log: %s\n%s" % (
                    self.proc.returncode, self.log_path, self.log_tail()))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("plugin daemon stand-in did not answer /health within %ss; log: %s" % (
            timeout, self.log_path))

    def log_tail(self, size=4000):
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - size))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def status(self):
        with urllib.request.urlopen(self.url + "/standin/status", timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self, timeout=30.0):
        """SIGTERM (the stand-in stops its plugins), then SIGKILL to the whole group if needed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
