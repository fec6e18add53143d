"""A plugin process run the way the plugin daemon runs a local plugin -- plugin daemon stand-in.

``<venv>/bin/python -m <entrypoint>`` in the unpacked package, with ``INSTALL_METHOD=local``, in its
own process group. The ``dify-plugin`` SDK then speaks a line protocol over stdio:

* the daemon writes one JSON line per request:
  ``{"session_id", "conversation_id", "message_id", "app_id", "endpoint_id", "context",
  "event": "request", "data": {"user_id", "type", "action", ...}}``;
* the plugin writes JSON lines (each followed by a blank line): first its manifest, then
  ``{"event": "heartbeat"}`` every 10 s (the first one means ready), ``{"event": "log", "data":
  {level, message, timestamp}}``, ``{"event": "error", "data": ...}`` (a protocol error, logged) and
  ``{"event": "session", "session_id", "data": {"type": "stream" | "end" | "error" | "invoke",
  "data": ...}}`` -- the answers, routed here to the session that asked.

Many sessions share one process (each request has its own session id; the SDK runs them in a
thread pool), so dify-api's concurrent embedding calls are multiplexed without mixing answers.
A process that exits, or sends no heartbeat for 120 s, is dead: its open sessions end with an error
naming the plugin and the tail of its stderr, and the next call starts it again.
"""

import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid

READY_TIMEOUT = 120.0       # MAX_HEARTBEAT_INTERVAL of the daemon: first heartbeat within it
HEARTBEAT_DEAD_AFTER = 120.0
STDERR_KEEP = 4096


class PluginDead(RuntimeError):
    pass


class Session(object):
    """One request's answers: ``get()`` returns ("stream", data) / ("end", None) / ("error", json string)."""

    def __init__(self, runtime, session_id):
        self.runtime = runtime
        self.id = session_id
        self.queue = queue.Queue()
        self.closed = False

    def get(self, timeout):
        return self.queue.get(timeout=timeout)

    def close(self):
        if not self.closed:
            self.closed = True
            self.runtime._forget(self.id)


class PluginRuntime(object):
    def __init__(self, identifier, workdir, python, entrypoint="main", env=None, log=None):
        self.identifier = identifier
        self.workdir = workdir
        self.python = python
        self.entrypoint = entrypoint
        self.extra_env = dict(env or {})
        self.log = log or (lambda msg: None)
        self.proc = None
        self.pgid = None
        self.ready = threading.Event()
        self.dead = threading.Event()
        self.dead_reason = None
        self.last_active = 0.0
        self.started_at = None
        self.ready_seconds = None
        self.stderr_tail = ""
        self.manifest = None
        self._sessions = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.stopping = False

    # ---------------------------------------------------------------- lifecycle
    def environment(self):
        env = dict(os.environ)
        for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(key, None)
        env.update(self.extra_env)
        env["INSTALL_METHOD"] = "local"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout=READY_TIMEOUT):
        """Start the process and wait for its first heartbeat; PluginDead when it does not come."""
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [self.python, "-m", self.entrypoint], cwd=self.workdir, env=self.environment(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.pgid = self.proc.pid
        self.log("plugin %s: process %d started" % (self.identifier, self.proc.pid))
        threading.Thread(target=self._read_stdout, name="stdout-%s" % self.proc.pid, daemon=True).start()
        threading.Thread(target=self._read_stderr, name="stderr-%s" % self.proc.pid, daemon=True).start()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.ready.wait(0.1):
                self.ready_seconds = time.time() - self.started_at
                self.log("plugin %s: ready in %.2fs (first heartbeat)" % (self.identifier, self.ready_seconds))
                return self
            if self.dead.is_set():
                break
        if not self.ready.is_set():
            reason = self.dead_reason or "no heartbeat received in %ds" % timeout
            self.stop()
            raise PluginDead("plugin %s failed to start: %s%s" % (self.identifier, reason, self._stderr_note()))
        return self

    def alive(self):
        if self.proc is None or self.dead.is_set():
            return False
        if self.proc.poll() is not None:
            self._mark_dead("process exited with code %s" % self.proc.returncode)
            return False
        if self.ready.is_set() and time.time() - self.last_active > HEARTBEAT_DEAD_AFTER:
            self._mark_dead("no heartbeat for %ds" % int(time.time() - self.last_active))
            self._kill_group(signal.SIGKILL)
            return False
        return True

    def stop(self, grace=5.0):
        """Stop the process and everything in its process group."""
        self.stopping = True
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self._kill_group(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._kill_group(signal.SIGKILL)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
        self._kill_group(signal.SIGKILL)  # anything the plugin left in its group
        self._mark_dead("stopped by the plugin daemon stand-in")

    def _kill_group(self, sig):
        if self.pgid is None:
            return
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _stderr_note(self):
        tail = self.stderr_tail.strip()
        return (", captured error logs: %s" % tail[-1500:]) if tail else ""

    def _mark_dead(self, reason):
        if self.dead.is_set():
            return
        self.dead_reason = reason
        self.dead.set()
        if not self.stopping:
            self.log("plugin %s: dead (%s)%s" % (self.identifier, reason, self._stderr_note()))
        message = "plugin %s is not running: %s%s" % (self.identifier, reason, self._stderr_note())
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.queue.put(("dead", message))

    # ---------------------------------------------------------------- stdio
    def _read_stdout(self):
        proc = self.proc
        try:
            for raw in proc.stdout:
                line = raw.strip()
                if line:
                    self.handle_line(line)
        except (OSError, ValueError):
            pass
        proc.wait()
        self._mark_dead("process exited with code %s" % proc.returncode)

    def _read_stderr(self):
        try:
            for raw in self.proc.stderr:
                text = raw.decode("utf-8", "replace")
                self.stderr_tail = (self.stderr_tail + text)[-STDERR_KEEP:]
        except (OSError, ValueError):
            pass

    def handle_line(self, line):
        """One line the plugin wrote on stdout."""
        try:
            event = json.loads(line)
        except ValueError:
            self.log("plugin %s: stdout (not an event): %s" % (self.identifier, line[:300].decode("utf-8", "replace")))
            return
        if not isinstance(event, dict) or "event" not in event:
            if self.manifest is None and isinstance(event, dict):
                self.manifest = event  # the SDK's first line: its manifest
            return
        kind = event.get("event")
        self.last_active = time.time()
        if kind == "heartbeat":
            self.ready.set()
        elif kind == "log":
            data = event.get("data") or {}
            self.log("plugin %s: [%s] %s" % (self.identifier, data.get("level"), data.get("message")))
        elif kind == "error":
            self.log("plugin %s: error event: %s" % (self.identifier, json.dumps(event.get("data"))[:1000]))
        elif kind == "session":
            sid = event.get("session_id")
            with self._lock:
                session = self._sessions.get(sid)
            if session is not None:
                data = event.get("data") or {}
                session.queue.put((data.get("type"), data.get("data")))

    def open_session(self, session_id=None):
        if not self.alive():
            raise PluginDead("plugin %s is not running: %s%s" % (self.identifier, self.dead_reason, self._stderr_note()))
        session = Session(self, session_id or str(uuid.uuid4()))
        with self._lock:
            self._sessions[session.id] = session
        return session

    def _forget(self, session_id):
        with self._lock:
            self._sessions.pop(session_id, None)

    def open_sessions(self):
        with self._lock:
            return len(self._sessions)

    def write_request(self, session, data, conversation_id=None, message_id=None, app_id=None, endpoint_id=None,
                      context=None):
        line = json.dumps({
            "session_id": session.id, "conversation_id": conversation_id, "message_id": message_id,
            "app_id": app_id, "endpoint_id": endpoint_id, "context": context, "event": "request", "data": data,
        }, separators=(",", ":")).encode("utf-8") + b"\n"
        with self._write_lock:
            try:
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
            except (OSError, ValueError) as exc:
                self._mark_dead("writing to its stdin failed: %s" % exc)
                raise PluginDead("plugin %s is not running: %s%s" % (self.identifier, self.dead_reason,
                                                                      self._stderr_note()))
