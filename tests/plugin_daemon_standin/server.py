"""HTTP API of the plugin daemon stand-in: the routes dify-api 1.15.0 calls on its plugin daemon.

Everything under ``/plugin/{tenant_id}/`` needs ``X-Api-Key``; answers are
``{"code": 0, "message": "success", "data": ...}`` or an error (errors.py). Binding errors (a
malformed identifier, a missing page) answer HTTP 400 and service errors HTTP 200 with a negative
code, as the daemon's gin handlers do. Unknown routes answer 404 ``{"code": "not_found", "message":
"route not found"}``. ``GET /health`` (and the daemon's ``/health/check``) needs no key.
``GET /standin/status`` (no key; not a daemon route) shows the plugin processes and timings.
"""

import json
import re
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from . import errors
from .core import Daemon
from .dispatch import ROUTES, relay, shape_request
from .package import IDENTIFIER_RE
from .runtime import PluginDead

NAME = "plugin daemon stand-in"
VERSION = "0.6.3-standin"


def _json(body):
    if not body:
        return {}
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError as exc:
        raise errors.bad_request("invalid JSON body: %s" % exc, http_status=400)


def parse_multipart(content_type, body):
    """{field: (filename or None, bytes)} of a multipart/form-data body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not m:
        raise errors.bad_request("request Content-Type isn't multipart/form-data")
    boundary = b"--" + m.group(1).encode("latin-1")
    out = {}
    for part in body.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        part = part[2:] if part.startswith(b"\r\n") else part
        head, _, value = part.partition(b"\r\n\r\n")
        if value.endswith(b"\r\n"):
            value = value[:-2]
        disposition = ""
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                disposition = line
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if name:
            out[name.group(1)] = (filename.group(1) if filename else None, value)
    return out


def _page(query):
    try:
        page, size = int(query.get("page", "")), int(query.get("page_size", ""))
    except ValueError:
        raise errors.bad_request("Key: 'Page' Error:Field validation for 'Page' failed on the 'required' tag",
                                 http_status=400)
    if page < 1 or size < 1 or size > 256:
        raise errors.bad_request("Key: 'PageSize' Error:Field validation for 'PageSize' failed on the 'max' tag",
                                 http_status=400)
    return page, size


def _identifier(value, field="plugin_unique_identifier"):
    if not isinstance(value, str) or not IDENTIFIER_RE.match(value):
        raise errors.bad_request("Key: '%s' Error:Field validation for '%s' failed on the "
                                 "'plugin_unique_identifier' tag" % (field, field), http_status=400)
    return value


def _required(body, field):
    value = body.get(field)
    if value in (None, "", [], {}):
        raise errors.bad_request("Key: '%s' Error:Field validation for '%s' failed on the 'required' tag"
                                 % (field, field), http_status=400)
    return value


class Api(object):
    """The route table; each handler gets (tenant, match, query, body bytes, headers)."""

    def __init__(self, daemon):
        self.d = daemon
        m = "management/"
        self.routes = [
            ("POST", m + r"install/upload/package", self.upload_package),
            ("POST", m + r"install/upload/bundle", self.upload_bundle),
            ("POST", m + r"install/identifiers", self.install_identifiers),
            ("POST", m + r"install/upgrade", self.upgrade),
            ("POST", m + r"install/tasks/delete_all", self.delete_all_tasks),
            ("GET", m + r"install/tasks", self.tasks),
            ("GET", m + r"install/tasks/(?P<id>[^/]+)", self.task),
            ("POST", m + r"install/tasks/(?P<id>[^/]+)/delete", self.delete_task),
            ("POST", m + r"install/tasks/(?P<id>[^/]+)/delete/(?P<identifier>.+)", self.delete_task_item),
            ("GET", m + r"decode/from_identifier", self.decode),
            ("GET", m + r"fetch/manifest", self.fetch_manifest),
            ("GET", m + r"fetch/identifier", self.fetch_identifier),
            ("GET", m + r"fetch/readme", self.fetch_readme),
            ("POST", m + r"uninstall", self.uninstall),
            ("GET", m + r"list", self.list_plugins),
            ("GET", m + r"installation/ids", self.installation_ids),
            ("POST", m + r"installation/fetch/batch", self.fetch_batch),
            ("POST", m + r"installation/missing", self.missing),
            ("GET", m + r"models", self.models),
            ("GET", m + r"tools", self.empty_list),
            ("GET", m + r"agent_strategies", self.empty_list),
            ("GET", m + r"datasources", self.empty_list),
            ("GET", m + r"triggers", self.empty_list),
            ("GET", m + r"tool", self.no_provider),
            ("GET", m + r"agent_strategy", self.no_provider),
            ("GET", m + r"trigger", self.no_provider),
            ("GET", m + r"datasource", self.no_datasource),
            ("POST", m + r"tools/check_existence", self.check_tools),
            ("GET", m + r"(?P<category>[^/]+)/list", self.list_by_category),
            ("GET", r"endpoint/list", self.empty_list),
            ("GET", r"endpoint/list/plugin", self.empty_list),
            ("POST", r"endpoint/(?P<op>setup|remove|update|enable|disable)", self.endpoint_op),
            ("GET", r"asset/(?P<id>[^/]+)", self.asset),
            ("GET", r"extract-asset/", self.extract_asset),
            ("POST", r"dispatch/model/polling/(?P<op>start|check)", self.polling),
            ("POST", r"dispatch/(?P<route>.+)", None),  # streamed: see Handler
        ]
        self.compiled = [(meth, re.compile("^" + rx + "$"), fn) for meth, rx, fn in self.routes]

    def match(self, method, rest):
        for meth, rx, fn in self.compiled:
            mt = rx.match(rest)
            if mt and meth == method:
                if fn is None and mt.group("route") not in ROUTES:
                    continue
                return fn, mt
        return None, None

    # ---------------------------------------------------------------- packages
    def upload_package(self, tenant, mt, query, body, headers):
        form = parse_multipart(headers.get("Content-Type"), body)
        if "dify_pkg" not in form or form["dify_pkg"][0] is None:
            raise errors.bad_request("http: no such file")
        verify = form.get("verify_signature", (None, b""))[1].decode("utf-8", "replace") == "true"
        return self.d.upload_package(tenant, form["dify_pkg"][1], verify)

    def upload_bundle(self, tenant, mt, query, body, headers):
        raise errors.bad_request("plugin bundles are not played by the plugin daemon stand-in")

    def decode(self, tenant, mt, query, body, headers):
        uid = _identifier(query.get("plugin_unique_identifier") or query.get("PluginUniqueIdentifier"))
        return self.d.decode_from_identifier(uid)

    def fetch_manifest(self, tenant, mt, query, body, headers):
        decl = self.d.declaration(_identifier(query.get("plugin_unique_identifier")))
        if decl is None:
            raise errors.bad_request("plugin not found")
        return decl

    def fetch_identifier(self, tenant, mt, query, body, headers):
        uid = _identifier(query.get("plugin_unique_identifier"))
        with self.d.lock:
            return uid in self.d.state["plugins"]

    def fetch_readme(self, tenant, mt, query, body, headers):
        return self.d.readme(_identifier(query.get("plugin_unique_identifier")), query.get("language", ""))

    def asset(self, tenant, mt, query, body, headers):
        data = self.d.asset(unquote(mt.group("id")))
        return ("raw", 200, data or b"")

    def extract_asset(self, tenant, mt, query, body, headers):
        uid = _identifier(query.get("plugin_unique_identifier"))
        path = query.get("file_path")
        if not path:
            raise errors.bad_request("Key: 'FilePath' Error:Field validation for 'FilePath' failed on the 'required' "
                                     "tag", http_status=400)
        try:
            return ("raw", 200, self.d.extract_asset(uid, path))
        except errors.DaemonError as exc:
            exc.http_status = 500
            raise

    # ---------------------------------------------------------------- install
    def install_identifiers(self, tenant, mt, query, body, headers):
        req = _json(body)
        uids = _required(req, "plugin_unique_identifiers")
        if not isinstance(uids, list) or len(uids) > 64:
            raise errors.bad_request("Key: 'PluginUniqueIdentifiers' Error:Field validation for "
                                     "'PluginUniqueIdentifiers' failed on the 'max' tag", http_status=400)
        for i, uid in enumerate(uids):
            _identifier(uid, "PluginUniqueIdentifiers[%d]" % i)
        source = _required(req, "source")
        metas = req.get("metas") or []
        metas = [m or {} for m in metas]
        return self.d.install(tenant, uids, source, metas)

    def upgrade(self, tenant, mt, query, body, headers):
        req = _json(body)
        original = _identifier(_required(req, "original_plugin_unique_identifier"),
                               "original_plugin_unique_identifier")
        new = _identifier(_required(req, "new_plugin_unique_identifier"), "new_plugin_unique_identifier")
        source = _required(req, "source")
        return self.d.upgrade(tenant, original, new, source, req.get("meta") or {})

    def uninstall(self, tenant, mt, query, body, headers):
        req = _json(body)
        return self.d.uninstall(tenant, _required(req, "plugin_installation_id"))

    def tasks(self, tenant, mt, query, body, headers):
        page, size = _page(query)
        return self.d.tasks(tenant, page, size)

    def task(self, tenant, mt, query, body, headers):
        return self.d.task(tenant, mt.group("id"))

    def delete_task(self, tenant, mt, query, body, headers):
        return self.d.delete_task(tenant, mt.group("id"))

    def delete_all_tasks(self, tenant, mt, query, body, headers):
        return self.d.delete_all_tasks(tenant)

    def delete_task_item(self, tenant, mt, query, body, headers):
        uid = unquote(mt.group("identifier")).lstrip("/")
        if not IDENTIFIER_RE.match(uid):
            raise errors.bad_request("plugin_unique_identifier is not valid: " + uid)
        return self.d.delete_task_item(tenant, mt.group("id"), uid)

    # ---------------------------------------------------------------- listings
    def list_plugins(self, tenant, mt, query, body, headers):
        page, size = _page(query)
        return self.d.list_plugins(tenant, page, size)

    def list_by_category(self, tenant, mt, query, body, headers):
        page, size = _page(query)
        return self.d.list_plugins_by_category(tenant, mt.group("category"), page, size)

    def installation_ids(self, tenant, mt, query, body, headers):
        category = query.get("category")
        if not category:
            raise errors.bad_request("Key: 'Category' Error:Field validation for 'Category' failed on the "
                                     "'required' tag", http_status=400)
        with self.d.lock:
            return sorted(self.d.installations(tenant)) if category == "model" else []

    def fetch_batch(self, tenant, mt, query, body, headers):
        req = _json(body)
        ids = req.get("plugin_ids")
        if ids is None:
            raise errors.bad_request("Key: 'PluginIDs' Error:Field validation for 'PluginIDs' failed on the "
                                     "'required' tag", http_status=400)
        return self.d.fetch_installations(tenant, ids)

    def missing(self, tenant, mt, query, body, headers):
        req = _json(body)
        uids = req.get("plugin_unique_identifiers")
        if uids is None:
            raise errors.bad_request("Key: 'PluginUniqueIdentifiers' Error:Field validation for "
                                     "'PluginUniqueIdentifiers' failed on the 'required' tag", http_status=400)
        for i, uid in enumerate(uids):
            _identifier(uid, "PluginUniqueIdentifiers[%d]" % i)
        return self.d.missing(tenant, uids)

    def models(self, tenant, mt, query, body, headers):
        page, size = _page(query)
        return self.d.list_models(tenant, page, size)

    def empty_list(self, tenant, mt, query, body, headers):
        return []

    def no_provider(self, tenant, mt, query, body, headers):
        raise errors.plugin_not_found()

    def no_datasource(self, tenant, mt, query, body, headers):
        raise errors.internal("record not found")

    def check_tools(self, tenant, mt, query, body, headers):
        return [False for _ in (_json(body).get("provider_ids") or [])]

    def endpoint_op(self, tenant, mt, query, body, headers):
        raise errors.bad_request("plugin endpoints are not played by the plugin daemon stand-in (%s)" % mt.group("op"))

    def polling(self, tenant, mt, query, body, headers):
        raise errors.invoke_error(errors.plugin_error_text({
            "error_type": "NotImplementedError",
            "message": "the plugin daemon stand-in does not support polling"}))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "plugin-daemon-standin/" + VERSION

    def log_message(self, fmt, *args):  # request lines are logged by _handle
        pass

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    # ---------------------------------------------------------------- plumbing
    def _send(self, status, payload, content_type="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _disconnected(self):
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True
        return False

    def _handle(self, method):
        server = self.server
        start = time.time()
        status = [0]
        url = urlsplit(self.path)
        path = url.path
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            if path in ("/health", "/health/check") and method == "GET":
                status[0] = 200
                return self._send(200, {"status": "ok", "standin": NAME, "version": VERSION,
                                        "platform": "local"})
            if path == "/standin/status" and method == "GET":
                status[0] = 200
                return self._send(200, server.daemon.status())
            m = re.match(r"^/plugin/(?P<tenant>[^/]+)/(?P<rest>.*)$", path)
            fn = mt = None
            if m:
                fn, mt = server.api.match(method, m.group("rest"))
            if mt is None:
                body = self._body()
                status[0] = 404
                return self._send(404, {"code": "not_found", "message": "route not found"})
            if self.headers.get("X-Api-Key") != server.api_key:
                self._body()
                raise errors.unauthorized()
            body = self._body()
            tenant = m.group("tenant")
            if fn is None:
                status[0] = self._dispatch(tenant, mt.group("route"), body)
                return
            result = fn(tenant, mt, query, body, self.headers)
            if isinstance(result, tuple) and result and result[0] == "raw":
                status[0] = result[1]
                return self._send(result[1], result[2], "application/octet-stream")
            status[0] = 200
            self._send(200, errors.success(result))
        except errors.DaemonError as exc:
            status[0] = exc.http_status
            self._send(exc.http_status, exc.response())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - answered like the daemon's recovery, and logged
            server.log("%s %s: unexpected error: %r" % (method, path, exc))
            status[0] = 500
            try:
                self._send(500, errors.internal(str(exc)).response())
            except OSError:
                pass
        finally:
            if path not in ("/health", "/health/check", "/standin/status"):
                server.log("%s %s -> %s (%.2fs)" % (method, path, status[0], time.time() - start))

    def _dispatch(self, tenant, route, raw_body):
        daemon = self.server.daemon
        plugin_id = self.headers.get("X-Plugin-ID") or ""
        if not plugin_id:
            raise errors.bad_request("plugin_id is required", http_status=400)
        with daemon.lock:
            inst = daemon.installations(tenant).get(plugin_id)
        if inst is None:
            raise errors.plugin_not_found(http_status=404)
        uid = inst["plugin_unique_identifier"]
        body = _json(raw_body)
        plugin_request = shape_request(route, body)
        started = time.time()
        try:
            runtime = daemon.get_runtime(uid)
        except PluginDead as exc:
            raise errors.internal("failed to get plugin runtime: %s" % exc, http_status=500)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        broken = [False]

        def emit(obj):
            if broken[0]:
                return False
            line = b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            except OSError:
                broken[0] = True
                return False
            return True

        try:
            outcome = relay(runtime, route, plugin_request, body, emit, self._disconnected,
                            daemon.max_execution_timeout)
        except PluginDead as exc:
            emit(errors.internal(str(exc)).response())
            outcome = "error"
        if not broken[0]:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                broken[0] = True
        if broken[0]:
            self.close_connection = True
        timing = daemon.timings.setdefault(uid, {})
        if outcome == "success" and "first_call_seconds" not in timing:
            timing["first_call_seconds"] = round(time.time() - started, 3)
            timing["first_call_route"] = route
        self.server.log("dispatch %s %s for tenant %s: %s" % (route, plugin_id, tenant, outcome))
        return 200


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, daemon, api_key, log):
        self.daemon = daemon
        self.api = Api(daemon)
        self.api_key = api_key
        self.log = log
        ThreadingHTTPServer.__init__(self, address, Handler)

    def handle_error(self, request, client_address):
        """A client dropping its keep-alive connection is normal (dify-api's workers come and go)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        self.log("error while serving %s: %r" % (client_address, exc))

    def close_all(self):
        """Stop serving and stop every plugin process."""
        try:
            self.daemon.stop_all()
        finally:
            self.server_close()


def stderr_logger(prefix="plugin daemon stand-in"):
    lock = threading.Lock()

    def log(msg):
        with lock:
            sys.stderr.write("%s %s: %s\n" % (time.strftime("%H:%M:%S"), prefix, msg))
            sys.stderr.flush()

    return log


def make_server(address, api_key, state_dir, cache_dir, python=None, uv=None, force_verifying_signature=True,
                env_init_timeout=600.0, max_execution_timeout=600.0, plugin_env=None, log=None,
                launch_installed=True, tiktoken=True):
    """A StandinServer on ``address`` (port 0 = any); call serve_forever(), then close_all()."""
    log = log or stderr_logger()
    daemon = Daemon(state_dir, cache_dir, python=python, uv=uv, force_verifying_signature=force_verifying_signature,
                    env_init_timeout=env_init_timeout, max_execution_timeout=max_execution_timeout,
                    plugin_env=plugin_env, tiktoken=tiktoken, log=log)
    srv = StandinServer(address, daemon, api_key, log)
    if launch_installed:
        daemon.start_installed()
    return srv
