"""Dify API **stand-in**: a test double of Dify's console and service API.

It is NOT Dify. It follows the facts in ``shared/dify-api.md`` (Dify 1.15)
closely enough that the project's ``dify_*`` modules can be tested without
Dify's images: cookie names (and the ``__Host-`` variants), ``X-CSRF-Token``
required on every authenticated console call (GETs too), base64 passwords
(>= 1.11.2), the login lockout once more than 5 logins failed, error bodies shaped
``{"code", "message", "status"}``, dataset name uniqueness and length limit,
plugin install tasks that advance pending -> running -> success and documents
whose indexing status advances over time -- both computed from timestamps, so
the state can live in PostgreSQL as well as in memory.

Use from pytest::

    from dify_standin.server import make_server
    srv = make_server(("127.0.0.1", 0), version="1.15.0")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d" % srv.server_address[1]
    ...
    srv.standin.requests      # every request seen: method, path, query, headers, json
    srv.standin.inject_fault("POST", "/console/api/apps", 503, count=2)
    srv.standin.expire_access_tokens()
    srv.shutdown(); srv.server_close()

``make_server`` keyword options are the CLI flags (see README.md).
"""

import base64
import hashlib
import io
import json
import os
import re
import secrets
import threading
import time
import uuid
import zipfile
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

try:  # optional, stdlib-only fallback for model endpoint checks
    from urllib.request import Request as _UrlRequest, urlopen as _urlopen
except ImportError:  # pragma: no cover
    _UrlRequest = _urlopen = None

from . import provider_schemas
from .store import MemoryStore

CONSOLE = "/console/api"
MODEL_TYPES = ("llm", "text-embedding", "rerank", "speech2text", "tts", "moderation")
APP_MODES = ("chat", "advanced-chat", "agent-chat", "workflow", "completion")
INDEXING_STEPS = ("waiting", "parsing", "cleaning", "splitting", "indexing", "completed")
PASSWORD_RE = re.compile(r"^(?=.*[a-zA-Z])(?=.*\d).{8,}$")
EMAIL_RE = re.compile(r"^[\w.!#$%&'*+\-/=?^`{|}~]+@([\w-]+\.)+[\w-]{2,}$")
LOGIN_MAX_ERRORS = 5
# The stand-in's "marketplace": plugin id -> version it offers.
MARKETPLACE = {
    "langgenius/openai_api_compatible": "0.0.63",
    "langgenius/huggingface_tei": "0.1.10",
    "langgenius/ollama": "0.0.7",
}
# Required credential fields per provider plugin (subset of the real schemas).
PROVIDER_REQUIRED = {
    "langgenius/openai_api_compatible/openai_api_compatible": ("endpoint_url",),
    "langgenius/huggingface_tei/huggingface_tei": ("server_url",),
    "langgenius/ollama/ollama": ("base_url",),
}
SECRET_FIELDS = ("api_key",)


def parse_version(text):
    nums = re.findall(r"\d+", text or "")[:3]
    nums += ["0"] * (3 - len(nums))
    return tuple(int(n) for n in nums)


def obfuscated(token):
    """Dify's obfuscation of secret credential fields."""
    if not token:
        return token
    if len(token) <= 8:
        return "*" * 20
    return token[:6] + "*" * 12 + token[-2:]


def now():
    return time.time()


class ApiError(Exception):
    def __init__(self, status, code, message, body=None):
        Exception.__init__(self, message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body


def bad(message, code="invalid_param", status=400):
    return ApiError(status, code, message)


class Response(object):
    def __init__(self, status=200, body=None, cookies=None, content_type="application/json", raw=None):
        self.status = status
        self.body = body
        self.cookies = cookies or []
        self.content_type = content_type
        self.raw = raw


class StandIn(object):
    """The stand-in's behaviour; the HTTP handler only parses and dispatches."""

    def __init__(self, version="1.15.0", dsn=None, mode="api", secure_cookies=False,
                 init_password=None, admin_api_key=None, fail_health=False,
                 task_seconds=0.6, index_seconds=1.0, access_token_ttl=3600,
                 marketplace=True, check_model_endpoints=False, store=None):
        self.version = version
        self.version_tuple = parse_version(version)
        self.mode = mode
        self.secure_cookies = secure_cookies
        self.init_password = init_password
        self.admin_api_key = admin_api_key
        self.fail_health = fail_health
        self.task_seconds = float(task_seconds)
        self.index_seconds = float(index_seconds)
        self.access_token_ttl = int(access_token_ttl)
        self.marketplace = marketplace
        self.check_model_endpoints = check_model_endpoints
        if store is not None:
            self.store = store
        elif dsn:
            from .store import PgStore

            self.store = PgStore(dsn)
        else:
            self.store = MemoryStore()
        self.lock = threading.RLock()
        self.requests = []
        self.faults = []

    # ----------------------------------------------------------- test hooks
    def inject_fault(self, method, path, status, count=1, code="internal_server_error"):
        """Answer the next ``count`` matching requests with ``status``."""
        self.faults.append({"method": method, "path": path, "status": status, "count": count, "code": code})

    def expire_access_tokens(self):
        for sess in self.store.list("sessions"):
            sess["expires_at"] = 0
            self.store.put("sessions", sess["token"], sess)

    def clear_requests(self):
        del self.requests[:]

    def reset(self):
        self.store.reset()
        self.clear_requests()
        del self.faults[:]

    # ------------------------------------------------------------- helpers
    def cookie_name(self, name):
        return "__Host-" + name if self.secure_cookies else name

    def _cookie(self, name, value, http_only=True, max_age=None):
        parts = ["%s=%s" % (self.cookie_name(name), value), "Path=/", "SameSite=Lax"]
        if http_only:
            parts.append("HttpOnly")
        if self.secure_cookies:
            parts.append("Secure")
        if max_age is not None:
            parts.append("Max-Age=%d" % max_age)
        return "; ".join(parts)

    def tenant(self):
        return self.store.get("system", "tenant")

    def is_setup(self):
        doc = self.store.get("system", "setup")
        return bool(doc and doc.get("step") == "finished")

    @staticmethod
    def _hash(password, salt):
        return hashlib.sha256((salt + password).encode("utf-8")).hexdigest()

    def _issue_session(self, account):
        access, refresh, csrf = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.store.put("sessions", access, {
            "token": access, "account_id": account["id"], "csrf": csrf,
            "expires_at": now() + self.access_token_ttl,
        })
        self.store.put("refresh_tokens", refresh, {
            "token": refresh, "account_id": account["id"], "expires_at": now() + 30 * 86400,
        })
        return [
            self._cookie("access_token", access, max_age=self.access_token_ttl),
            self._cookie("refresh_token", refresh, max_age=30 * 86400),
            self._cookie("csrf_token", csrf, http_only=False, max_age=self.access_token_ttl),
        ]

    def _require_setup(self):
        if not self.is_setup():
            raise ApiError(401, "not_setup", "Dify has not been initialized and installed yet. "
                           "Please proceed with the initialization and installation process first.")

    def authenticate_console(self, req):
        """Return the account doc or raise 401 like Dify's login_required + CSRF check."""
        self._require_setup()
        auth = req.headers.get("authorization", "")
        tenant = self.tenant()
        if self.admin_api_key and auth == "Bearer " + self.admin_api_key:
            if req.headers.get("x-workspace-id") != tenant["id"]:
                raise ApiError(401, "unauthorized", "Invalid workspace ID.")
            owner = [a for a in self.store.list("accounts") if a.get("role") == "owner"]
            return owner[0]
        token = None
        if auth.startswith("Bearer "):
            token = auth[7:]
        if not token:
            token = req.cookies.get(self.cookie_name("access_token"))
        if not token:
            raise ApiError(401, "unauthorized", "Invalid Authorization token.")
        sess = self.store.get("sessions", token)
        if not sess or sess["expires_at"] < now():
            raise ApiError(401, "unauthorized", "Invalid Authorization token.")
        header_csrf = req.headers.get("x-csrf-token")
        cookie_csrf = req.cookies.get(self.cookie_name("csrf_token"))
        if not header_csrf or header_csrf != sess["csrf"] or (cookie_csrf is not None and cookie_csrf != header_csrf):
            raise ApiError(401, "unauthorized", "CSRF token is missing or invalid.")
        account = None
        for acc in self.store.list("accounts"):
            if acc["id"] == sess["account_id"]:
                account = acc
        if account is None:
            raise ApiError(401, "unauthorized", "Invalid Authorization token.")
        return account

    def authenticate_service(self, req, key_kind):
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise ApiError(401, "unauthorized", "Authorization header must be provided and start with 'Bearer'")
        token = auth[7:]
        for key in self.store.list(key_kind):
            if key["token"] == token:
                key["last_used_at"] = int(now())
                self.store.put(key_kind, key["id"], key)
                return key
        raise ApiError(401, "unauthorized", "Access token is invalid")

    # ------------------------------------------------------------- routing
    def handle(self, req):
        """Dispatch one request; returns a Response."""
        for fault in self.faults:
            if fault["count"] > 0 and fault["method"] == req.method and req.path.startswith(fault["path"]):
                fault["count"] -= 1
                return Response(fault["status"], {"code": fault["code"], "message": "stand-in injected fault",
                                                  "status": fault["status"]})
        if req.path == "/health":
            if self.fail_health:
                return Response(503, {"code": "internal_server_error", "message": "stand-in: deliberately broken",
                                      "status": 503})
            return Response(200, {"pid": os.getpid(), "status": "ok", "version": self.version,
                                  "standin": True})
        if self.mode == "web":
            page = ("<!doctype html><html><head><title>Dify (stand-in)</title></head><body>"
                    "<h1>Dify web stand-in</h1><p>version %s, path %s</p></body></html>" % (self.version, req.path))
            return Response(200, content_type="text/html; charset=utf-8", raw=page.encode("utf-8"))
        if self.fail_health:
            return Response(502, {"code": "bad_gateway", "message": "stand-in: deliberately broken", "status": 502})
        with self.lock:
            for method, pattern, func in self.routes():
                m = re.match("^" + pattern + "$", req.path)
                if m and method == req.method:
                    return func(req, *m.groups())
            for method, pattern, func in self.routes():
                if re.match("^" + pattern + "$", req.path):
                    raise ApiError(405, "method_not_allowed",
                                   "The method is not allowed for the requested URL.")
        raise ApiError(404, "not_found", "The requested URL was not found on the server.")

    def routes(self):
        c = CONSOLE
        plug = c + "/workspaces/current/plugin"
        mp = c + "/workspaces/current/model-providers/(.+)"
        uid = "([0-9a-f-]{36})"
        return [
            ("GET", c + "/setup", self.get_setup),
            ("POST", c + "/setup", self.post_setup),
            ("GET", c + "/init", self.get_init),
            ("POST", c + "/init", self.post_init),
            ("POST", c + "/login", self.post_login),
            ("POST", c + "/logout", self.post_logout),
            ("POST", c + "/refresh-token", self.post_refresh),
            ("GET", c + "/account/profile", self.get_profile),
            ("POST", c + "/workspaces/current", self.workspace_current),  # POST only, as in Dify 1.15.0
            ("GET", plug + "/list", self.plugin_list),
            ("POST", plug + "/list/latest-versions", self.plugin_latest),
            ("POST", plug + "/install/marketplace", self.plugin_install_marketplace),
            ("POST", plug + "/upload/pkg", self.plugin_upload),
            ("POST", plug + "/install/pkg", self.plugin_install_pkg),
            ("GET", plug + "/tasks", self.plugin_tasks),
            ("GET", plug + "/tasks/" + uid, self.plugin_task),
            ("POST", plug + "/uninstall", self.plugin_uninstall),
            ("GET", c + "/workspaces/current/model-providers", self.model_providers),
            ("GET", mp + "/models/credentials", self.model_cred_get),
            ("POST", mp + "/models/credentials", self.model_cred_post),
            ("PUT", mp + "/models/credentials", self.model_cred_put),
            ("DELETE", mp + "/models/credentials", self.model_cred_delete),
            ("DELETE", mp + "/models", self.model_delete),
            ("GET", c + "/workspaces/current/default-model", self.default_get),
            ("POST", c + "/workspaces/current/default-model", self.default_post),
            ("GET", c + "/datasets/api-keys", self.ds_keys_get),
            ("POST", c + "/datasets/api-keys", self.ds_keys_post),
            ("DELETE", c + "/datasets/api-keys/" + uid, self.ds_keys_delete),
            ("GET", c + "/apps", self.apps_list),
            ("POST", c + "/apps", self.apps_create),
            ("GET", c + "/apps/" + uid, self.app_get),
            ("PUT", c + "/apps/" + uid, self.app_put),
            ("DELETE", c + "/apps/" + uid, self.app_delete),
            ("POST", c + "/apps/" + uid + "/model-config", self.app_model_config),
            ("GET", c + "/apps/" + uid + "/api-keys", self.app_keys_get),
            ("POST", c + "/apps/" + uid + "/api-keys", self.app_keys_post),
            ("DELETE", c + "/apps/" + uid + "/api-keys/" + uid, self.app_keys_delete),
            ("GET", "/v1/datasets", self.v1_ds_list),
            ("POST", "/v1/datasets", self.v1_ds_create),
            ("GET", "/v1/datasets/" + uid, self.v1_ds_get),
            ("PATCH", "/v1/datasets/" + uid, self.v1_ds_patch),
            ("DELETE", "/v1/datasets/" + uid, self.v1_ds_delete),
            ("POST", "/v1/datasets/" + uid + "/document/create-by-text", self.v1_doc_create_text),
            ("POST", "/v1/datasets/" + uid + "/document/create-by-file", self.v1_doc_create_file),
            ("GET", "/v1/datasets/" + uid + "/documents", self.v1_doc_list),
            ("DELETE", "/v1/datasets/" + uid + "/documents/" + uid, self.v1_doc_delete),
            ("GET", "/v1/datasets/" + uid + "/documents/([^/]+)/indexing-status", self.v1_doc_status),
            ("POST", "/v1/datasets/" + uid + "/retrieve", self.v1_retrieve),
            ("POST", "/v1/chat-messages", self.v1_chat),
            ("GET", "/v1/parameters", self.v1_parameters),
        ]

    # --------------------------------------------------------------- setup
    def get_setup(self, req):
        if self.is_setup():
            doc = self.store.get("system", "setup")
            return Response(200, {"step": "finished", "setup_at": doc.get("setup_at")})
        return Response(200, {"step": "not_started"})

    def get_init(self, req):
        # as Dify 1.15.0's get_init_validate_status(): finished once set up or validated in this session
        validated = not self.init_password or self.is_setup() or self._init_validated(req)
        return Response(200, {"status": "finished" if validated else "not_started"})

    def _init_validated(self, req):
        sid = req.cookies.get("session")
        return bool(sid and self.store.get("init_sessions", sid))

    def post_init(self, req):
        if self.is_setup():
            raise ApiError(403, "authorization_error", "Forbidden", body={
                "error": {"type": "authorization_error", "message": "Forbidden", "status": 403}})
        body = req.json_body()
        password = body.get("password")
        if not isinstance(password, str) or len(password) > 30:
            raise bad("password: must be a string of at most 30 characters")
        if not self.init_password or password != self.init_password:
            # Dify 1.15.0's fastopenapi /init route turns InitValidateFailedError into a bare 401
            raise ApiError(401, "authentication_error", "Unauthorized", body={
                "error": {"type": "authentication_error", "message": "Unauthorized", "status": 401}})
        sid = secrets.token_urlsafe(16)
        self.store.put("init_sessions", sid, {"id": sid})
        return Response(201, {"result": "success"}, cookies=["session=%s; Path=/; HttpOnly" % sid])

    def post_setup(self, req):
        if self.is_setup():
            # Dify 1.15.0's fastopenapi /setup route answers AlreadySetupError as a bare 403
            raise ApiError(403, "authorization_error", "Forbidden", body={
                "error": {"type": "authorization_error", "message": "Forbidden", "status": 403}})
        if self.init_password and not self._init_validated(req):
            # Dify 1.15.0's fastopenapi /setup route answers a bare 401 in its own error shape
            raise ApiError(401, "authentication_error", "Unauthorized", body={
                "error": {"type": "authentication_error", "message": "Unauthorized", "status": 401}})
        body = req.json_body()
        email, name, password = body.get("email"), body.get("name"), body.get("password")
        if not isinstance(email, str) or not EMAIL_RE.match(email):
            raise bad("email: %s is not a valid email." % email)
        if not isinstance(name, str) or not 1 <= len(name) <= 30:
            raise bad("name: Name must be between 1 to 30 characters.")
        if not isinstance(password, str) or not PASSWORD_RE.match(password):
            raise bad("password: Password must contain letters and numbers, and the length must be greater than 8.")
        tenant_id = str(uuid.uuid4())
        salt = secrets.token_hex(8)
        self.store.put("accounts", email.lower(), {
            "id": str(uuid.uuid4()), "email": email.lower(), "name": name, "salt": salt,
            "password": self._hash(password, salt), "role": "owner", "tenant_id": tenant_id,
            "interface_language": body.get("language") or "en-US",
        })
        self.store.put("system", "tenant", {"id": tenant_id, "name": "%s's Workspace" % name})
        self.store.put("system", "setup", {"step": "finished", "setup_at": int(now())})
        return Response(201, {"result": "success"})

    # ---------------------------------------------------------------- auth
    def post_login(self, req):
        self._require_setup()
        body = req.json_body()
        email = body.get("email")
        password = body.get("password")
        if not isinstance(email, str) or not EMAIL_RE.match(email):
            raise bad("email: %s is not a valid email." % email)
        if not isinstance(password, str):
            raise bad("password: Missing required parameter in the JSON body")
        email = email.lower()
        errors = self.store.get("login_errors", email) or {"count": 0}
        if errors["count"] > LOGIN_MAX_ERRORS:  # Dify 1.15.0: `count > 5`; the 6th failure is still a 401
            raise ApiError(429, "email_code_login_limit", "Too many incorrect password attempts. "
                           "Please try again later.")
        if self.version_tuple >= (1, 11, 2):
            try:
                password = base64.b64decode(password.encode("ascii"), validate=True).decode("utf-8")
            except Exception:
                password = None
        account = self.store.get("accounts", email)
        if account is None or password is None or self._hash(password, account["salt"]) != account["password"]:
            errors["count"] += 1
            self.store.put("login_errors", email, errors)
            raise ApiError(401, "authentication_failed", "Invalid email or password.")
        self.store.delete("login_errors", email)
        cookies = self._issue_session(account)
        if self.version_tuple < (1, 0, 0):
            # 0.15.x: tokens in the body, no cookies
            access = cookies[0].split("=", 1)[1].split(";")[0]
            refresh = cookies[1].split("=", 1)[1].split(";")[0]
            return Response(200, {"result": "success", "data": {"access_token": access, "refresh_token": refresh}})
        return Response(200, {"result": "success"}, cookies=cookies)

    def post_logout(self, req):
        token = req.cookies.get(self.cookie_name("access_token"))
        if token:
            self.store.delete("sessions", token)
        expired = [self._cookie(n, "", max_age=0) for n in ("access_token", "refresh_token", "csrf_token")]
        return Response(200, {"result": "success"}, cookies=expired)

    def post_refresh(self, req):
        token = req.cookies.get(self.cookie_name("refresh_token"))
        doc = self.store.get("refresh_tokens", token) if token else None
        if not doc or doc["expires_at"] < now():
            return Response(401, {"result": "fail", "message": "Invalid refresh token"})
        self.store.delete("refresh_tokens", token)
        account = [a for a in self.store.list("accounts") if a["id"] == doc["account_id"]][0]
        return Response(200, {"result": "success"}, cookies=self._issue_session(account))

    def get_profile(self, req):
        acc = self.authenticate_console(req)
        return Response(200, {"id": acc["id"], "name": acc["name"], "email": acc["email"],
                              "interface_language": acc.get("interface_language")})

    def workspace_current(self, req):
        self.authenticate_console(req)
        tenant = self.tenant() or {}
        return Response(200, {"id": tenant.get("id"), "name": tenant.get("name"), "status": "normal",
                              "role": "owner", "plan": "sandbox"})

    # ------------------------------------------------------------- plugins
    def _uid(self, plugin_id, version):
        digest = hashlib.sha256(("%s:%s" % (plugin_id, version)).encode()).hexdigest()
        return "%s:%s@%s" % (plugin_id, version, digest)

    def _settle_tasks(self):
        for task in self.store.list("plugin_tasks"):
            if task.get("settled"):
                continue
            if now() - task["created_at"] < self.task_seconds:
                continue
            for p in task["plugins"]:
                if any(inst["plugin_id"] == p["plugin_id"] for inst in self.store.list("plugins")):
                    # as the plugin daemon 0.6.3: an installed plugin id stays as it is (its install job
                    # ignores "plugin already installed" and the task still succeeds)
                    continue
                inst_id = str(uuid.uuid4())
                self.store.put("plugins", inst_id, {
                    "id": inst_id, "installation_id": inst_id, "plugin_id": p["plugin_id"],
                    "plugin_unique_identifier": p["plugin_unique_identifier"], "version": p["version"],
                    "name": p["plugin_id"].split("/")[-1], "source": task["source"],
                    "tenant_id": self.tenant()["id"], "created_at": int(now()),
                })
            task["settled"] = True
            self.store.put("plugin_tasks", task["id"], task)

    def _task_status(self, task):
        """The task as the plugin daemon reports it: running until done (never pending)."""
        return "success" if now() - task["created_at"] >= self.task_seconds else "running"

    def _entry_status(self, task):
        """Each plugin of a task: pending, then running, then success."""
        age = now() - task["created_at"]
        if age >= self.task_seconds:
            return "success"
        return "running" if age >= self.task_seconds / 3.0 else "pending"

    def plugin_list(self, req):
        self.authenticate_console(req)
        self._settle_tasks()
        page = int(req.query.get("page", "1"))
        size = int(req.query.get("page_size", "256"))
        if size > 256:
            raise bad("page_size: must be <= 256")
        plugins = self.store.list("plugins")
        return Response(200, {"plugins": plugins[(page - 1) * size:page * size], "total": len(plugins)})

    def plugin_latest(self, req):
        self.authenticate_console(req)
        ids = req.json_body().get("plugin_ids")
        if not isinstance(ids, list):
            raise bad("plugin_ids: must be a list")
        versions = {}
        for pid in ids:
            ver = MARKETPLACE.get(pid) if self.marketplace else None
            versions[pid] = ({"version": ver, "unique_identifier": self._uid(pid, ver), "status": "active"}
                             if ver else None)
        return Response(200, {"versions": versions})

    def _start_install(self, uids, source):
        plugins = []
        for uid in uids:
            m = re.match(r"^([^/:@]+/[^/:@]+):([^@]+)@([0-9a-f]{64})$", uid or "")
            if not m:
                raise bad("plugin_unique_identifier: invalid identifier %r" % uid, code="invalid_param")
            plugins.append({"plugin_unique_identifier": uid, "plugin_id": m.group(1), "version": m.group(2)})
        installed = dict((p["plugin_unique_identifier"], p) for p in self.store.list("plugins"))
        if all(p["plugin_unique_identifier"] in installed for p in plugins):
            return Response(200, {"all_installed": True, "task_id": ""})
        task_id = str(uuid.uuid4())
        self.store.put("plugin_tasks", task_id, {"id": task_id, "created_at": now(), "plugins": plugins,
                                                 "source": source, "settled": False})
        return Response(200, {"all_installed": False, "task_id": task_id})

    def plugin_install_marketplace(self, req):
        self.authenticate_console(req)
        if not self.marketplace:
            raise ApiError(400, "invalid_param", "Marketplace is not enabled.")
        uids = req.json_body().get("plugin_unique_identifiers")
        if not isinstance(uids, list) or not uids:
            raise bad("plugin_unique_identifiers: must be a non-empty list")
        for uid in uids:
            pid = (uid or "").split(":")[0]
            if pid not in MARKETPLACE or self._uid(pid, MARKETPLACE[pid]) != uid:
                raise ApiError(400, "plugin_not_found", "Plugin %s not found in the marketplace." % uid)
        return self._start_install(uids, "marketplace")

    def plugin_upload(self, req):
        self.authenticate_console(req)
        files = req.multipart()
        pkg = files.get("pkg")
        if pkg is None:
            raise bad("pkg: No file uploaded")
        try:
            with zipfile.ZipFile(io.BytesIO(pkg)) as zf:
                manifest = zf.read("manifest.yaml").decode("utf-8")
        except (zipfile.BadZipFile, KeyError):
            raise bad("Invalid plugin package: manifest.yaml not found", code="plugin_upload_failed")
        fields = {}
        for line in manifest.splitlines():
            m = re.match(r"^(author|name|version):\s*['\"]?([^'\"#]+?)['\"]?\s*$", line)
            if m:
                fields[m.group(1)] = m.group(2)
        if not all(k in fields for k in ("author", "name", "version")):
            raise bad("Invalid plugin package: manifest lacks author/name/version", code="plugin_upload_failed")
        pid = "%s/%s" % (fields["author"], fields["name"])
        uid = "%s:%s@%s" % (pid, fields["version"], hashlib.sha256(pkg).hexdigest())
        self.store.put("packages", uid, {"uid": uid, "plugin_id": pid, "version": fields["version"]})
        return Response(200, {"unique_identifier": uid, "manifest": {"author": fields["author"],
                                                                     "name": fields["name"],
                                                                     "version": fields["version"]}})

    def plugin_install_pkg(self, req):
        self.authenticate_console(req)
        uids = req.json_body().get("plugin_unique_identifiers")
        if not isinstance(uids, list) or not uids:
            raise bad("plugin_unique_identifiers: must be a non-empty list")
        for uid in uids:
            if not self.store.get("packages", uid):
                raise ApiError(400, "plugin_not_found", "Package %s was not uploaded." % uid)
        return self._start_install(uids, "package")

    def _task_view(self, task):
        """A PluginInstallTask as Dify 1.15.0 returns it (its plugin daemon's record)."""
        status = self._task_status(task)
        if status == "success":
            self._settle_tasks()
        entry = self._entry_status(task)
        plugins = [{"plugin_unique_identifier": p["plugin_unique_identifier"], "plugin_id": p["plugin_id"],
                    "status": entry, "message": "" if entry != "success" else "installed", "icon": "",
                    "labels": {"en_US": p["plugin_id"].split("/")[-1]}, "source": task["source"]}
                   for p in task["plugins"]]
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(task["created_at"]))
        return {"id": task["id"], "status": status, "total_plugins": len(plugins),
                "completed_plugins": len(plugins) if status == "success" else 0, "plugins": plugins,
                "created_at": created, "updated_at": created}

    def plugin_tasks(self, req):
        """GET .../plugin/tasks?page=&page_size= (1..256, default 1 and 256): {"tasks": [...]}, no total --
        the workspace's install tasks, the pending and running ones included (the plugin list shows a
        plugin only once its task ended)."""
        self.authenticate_console(req)
        try:
            page = int(req.query.get("page", "1"))
            size = int(req.query.get("page_size", "256"))
        except ValueError:
            raise bad("page, page_size: must be integers")
        if page < 1 or not 1 <= size <= 256:
            raise bad("page must be >= 1 and page_size 1..256")
        tasks = sorted(self.store.list("plugin_tasks"), key=lambda t: t["created_at"])
        return Response(200, {"tasks": [self._task_view(t) for t in tasks[(page - 1) * size:page * size]]})

    def plugin_task(self, req, task_id):
        self.authenticate_console(req)
        task = self.store.get("plugin_tasks", task_id)
        if not task:
            raise ApiError(404, "not_found", "Task not found")
        return Response(200, {"task": self._task_view(task)})

    def plugin_uninstall(self, req):
        self.authenticate_console(req)
        self._settle_tasks()
        inst_id = req.json_body().get("plugin_installation_id")
        if not self.store.delete("plugins", inst_id or ""):
            raise ApiError(400, "plugin_not_found", "Plugin installation %s not found." % inst_id)
        return Response(200, {"success": True})

    # -------------------------------------------------------------- models
    def _check_provider(self, provider):
        self._settle_tasks()
        plugin_id = provider.rsplit("/", 1)[0] if provider.count("/") == 2 else None
        installed = [p["plugin_id"] for p in self.store.list("plugins")]
        if plugin_id is None or plugin_id not in installed:
            raise bad("Provider %s does not exist." % provider)

    def _model_key(self, provider, model_type, model):
        return "%s|%s|%s" % (provider, model_type, model)

    def model_providers(self, req):
        """The installed providers with their model credential schemas (what dify_model reads)."""
        self.authenticate_console(req)
        self._settle_tasks()
        model_type = req.query.get("model_type")
        installed = set(p["plugin_id"] for p in self.store.list("plugins"))
        data = []
        for provider, (types, _fields) in sorted(provider_schemas.SCHEMAS.items()):
            if provider.rsplit("/", 1)[0] not in installed or (model_type and model_type not in types):
                continue
            data.append({"provider": provider, "supported_model_types": list(types),
                         "configurate_methods": ["customizable-model"],
                         "model_credential_schema": {"model": {"label": {"en_US": "Model Name"}},
                                                     "credential_form_schemas": provider_schemas.form_schemas(provider)}})
        return Response(200, {"data": data})

    def _validate_credentials(self, provider, model_type, credentials):
        """As Dify 1.15.0: required schema fields must be present; fields the schema lacks are dropped."""
        if not isinstance(credentials, dict):
            raise bad("credentials: must be an object")
        fields = provider_schemas.fields_for(provider, model_type)
        for field in [v for v, _t, req in fields if req] or PROVIDER_REQUIRED.get(provider, ()):
            if credentials.get(field) in (None, ""):
                raise bad("Variable %s is required" % field)
        if fields:
            known = set(v for v, _t, _r in fields)
            for key in list(credentials):
                if key not in known:
                    del credentials[key]
        for field in ("endpoint_url", "server_url", "base_url"):
            val = credentials.get(field)
            if val is not None and not re.match(r"^https?://[^/\s]+", str(val)):
                raise bad("Credentials validation failed: %s is not a valid URL" % field)
        for field in ("context_size", "max_tokens_to_sample", "max_chunks"):
            if field in credentials and not re.match(r"^\d+$", str(credentials[field])):
                raise bad("Credentials validation failed: %s must be an integer" % field)
        if self.check_model_endpoints:
            self._probe_endpoint(model_type, credentials)

    def _probe_endpoint(self, model_type, credentials):
        base = (credentials.get("endpoint_url") or credentials.get("server_url")
                or credentials.get("base_url") or "").rstrip("/")
        name = credentials.get("endpoint_model_name") or "model"
        if model_type == "llm":
            path, payload = "/chat/completions", {"model": name, "max_tokens": 5,
                                                  "messages": [{"role": "user", "content": "ping"}]}
        elif model_type == "text-embedding":
            path, payload = "/embeddings", {"model": name, "input": ["ping"]}
        elif model_type == "rerank":
            path, payload = "/rerank", {"model": name, "query": "ping", "documents": ["ping"]}
        else:
            return
        try:
            request = _UrlRequest(base + path, data=json.dumps(payload).encode(), method="POST",
                                  headers={"Content-Type": "application/json"})
            with _urlopen(request, timeout=30) as resp:  # nosec - test double
                resp.read()
        except Exception as exc:
            raise bad("Credentials validation failed: %s%s: %s" % (base, path, exc))

    def _mask(self, credentials):
        out = dict(credentials)
        for field in SECRET_FIELDS:
            if out.get(field):
                out[field] = obfuscated(out[field])
        return out

    def model_cred_get(self, req, provider):
        self.authenticate_console(req)
        model, model_type = req.query.get("model"), req.query.get("model_type")
        if not model or model_type not in MODEL_TYPES:
            raise bad("model_type: Input should be one of %s" % ", ".join(MODEL_TYPES))
        doc = self.store.get("model_credentials", self._model_key(provider, model_type, model))
        if not doc:
            return Response(200, {"credentials": {}, "current_credential_id": None, "current_credential_name": None,
                                  "load_balancing": {"enabled": False, "configs": []}, "available_credentials": []})
        return Response(200, {
            "credentials": self._mask(doc["credentials"]), "current_credential_id": doc["credential_id"],
            "current_credential_name": doc["name"], "load_balancing": {"enabled": False, "configs": []},
            "available_credentials": [{"credential_id": doc["credential_id"], "credential_name": doc["name"]}],
        })

    def _cred_body(self, req):
        body = req.json_body()
        if not isinstance(body.get("model"), str) or not body.get("model"):
            raise bad("model: Field required")
        if body.get("model_type") not in MODEL_TYPES:
            raise bad("model_type: Input should be one of %s" % ", ".join(MODEL_TYPES))
        name = body.get("name")
        if name is not None and len(name) > 30:
            raise bad("name: String should have at most 30 characters")
        return body

    def model_cred_post(self, req, provider):
        self.authenticate_console(req)
        body = self._cred_body(req)
        self._check_provider(provider)
        self._validate_credentials(provider, body["model_type"], body.get("credentials"))
        key = self._model_key(provider, body["model_type"], body["model"])
        existing = self.store.get("model_credentials", key)
        name = body.get("name") or "API KEY %d" % (1 if not existing else 2)
        if existing and existing["name"] == name:
            raise bad("Credential with name '%s' already exists." % name)
        cred_id = str(uuid.uuid4())
        self.store.put("model_credentials", key, {
            "provider": provider, "model": body["model"], "model_type": body["model_type"],
            "credential_id": cred_id, "name": name, "credentials": body["credentials"],
        })
        return Response(201, {"result": "success"})

    def model_cred_put(self, req, provider):
        self.authenticate_console(req)
        body = self._cred_body(req)
        self._check_provider(provider)
        key = self._model_key(provider, body["model_type"], body["model"])
        existing = self.store.get("model_credentials", key)
        if not existing or existing["credential_id"] != body.get("credential_id"):
            raise bad("Credential record not found.")
        creds = dict(body.get("credentials") or {})
        for field in SECRET_FIELDS:  # Dify keeps the stored secret when the masked value comes back
            if field in creds and creds[field] == obfuscated(existing["credentials"].get(field)):
                creds[field] = existing["credentials"][field]
        self._validate_credentials(provider, body["model_type"], creds)
        existing["credentials"] = creds
        if body.get("name"):
            existing["name"] = body["name"]
        self.store.put("model_credentials", key, existing)
        return Response(200, {"result": "success"})

    def model_cred_delete(self, req, provider):
        self.authenticate_console(req)
        body = self._cred_body(req)
        key = self._model_key(provider, body["model_type"], body["model"])
        existing = self.store.get("model_credentials", key)
        if not existing or existing["credential_id"] != body.get("credential_id"):
            raise bad("Credential record not found.")
        self.store.delete("model_credentials", key)
        return Response(204)

    def model_delete(self, req, provider):
        self.authenticate_console(req)
        body = self._cred_body(req)
        self.store.delete("model_credentials", self._model_key(provider, body["model_type"], body["model"]))
        return Response(204)

    def _model_exists(self, provider, model_type, model):
        return self.store.get("model_credentials", self._model_key(provider, model_type, model)) is not None

    def default_get(self, req):
        self.authenticate_console(req)
        mtype = req.query.get("model_type")
        if mtype not in MODEL_TYPES:
            raise bad("model_type: Input should be one of %s" % ", ".join(MODEL_TYPES))
        doc = self.store.get("default_models", mtype)
        if not doc:
            return Response(200, {"data": None})
        return Response(200, {"data": {"model": doc["model"], "model_type": mtype,
                                       "provider": {"provider": doc["provider"],
                                                    "label": {"en_US": doc["provider"].split("/")[-1]},
                                                    "supported_model_types": [mtype]}}})

    def default_post(self, req):
        self.authenticate_console(req)
        settings = req.json_body().get("model_settings")
        if not isinstance(settings, list):
            raise bad("model_settings: Field required")
        for s in settings:
            if not isinstance(s, dict) or s.get("model_type") not in MODEL_TYPES or not s.get("model"):
                raise bad("model_settings: each item needs model_type (one of %s) and model" % ", ".join(MODEL_TYPES))
        for s in settings:
            if s.get("provider") is None:
                continue
            if not self._model_exists(s["provider"], s["model_type"], s["model"]):
                raise bad("Model %s not exist." % s["model"])
        for s in settings:
            if s.get("provider") is not None:
                self.store.put("default_models", s["model_type"], {"provider": s["provider"], "model": s["model"]})
        return Response(200, {"result": "success"})

    # ------------------------------------------------------------ api keys
    def _key_doc(self, kind, prefix, extra):
        key_id = str(uuid.uuid4())
        doc = {"id": key_id, "type": kind, "token": prefix + secrets.token_urlsafe(18)[:24],
               "last_used_at": None, "created_at": int(now())}
        doc.update(extra)
        return doc

    def _public_key(self, doc):
        return dict((k, doc[k]) for k in ("id", "type", "token", "last_used_at", "created_at"))

    def ds_keys_get(self, req):
        self.authenticate_console(req)
        return Response(200, {"data": [self._public_key(k) for k in self.store.list("dataset_keys")]})

    def ds_keys_post(self, req):
        self.authenticate_console(req)
        if len(self.store.list("dataset_keys")) >= 10:
            raise ApiError(400, "max_keys_exceeded", "Cannot create more than 10 API keys for this resource type.")
        doc = self._key_doc("dataset", "dataset-", {})
        self.store.put("dataset_keys", doc["id"], doc)
        return Response(200, self._public_key(doc))

    def ds_keys_delete(self, req, key_id):
        self.authenticate_console(req)
        if not self.store.delete("dataset_keys", key_id):
            raise ApiError(404, "not_found", "API key not found")
        return Response(204)

    def app_keys_get(self, req, app_id):
        self.authenticate_console(req)
        self._app(app_id)
        keys = [self._public_key(k) for k in self.store.list("app_keys") if k["app_id"] == app_id]
        return Response(200, {"data": keys})

    def app_keys_post(self, req, app_id):
        self.authenticate_console(req)
        self._app(app_id)
        if len([k for k in self.store.list("app_keys") if k["app_id"] == app_id]) >= 10:
            raise ApiError(400, "max_keys_exceeded", "Cannot create more than 10 API keys for this resource type.")
        doc = self._key_doc("app", "app-", {"app_id": app_id})
        self.store.put("app_keys", doc["id"], doc)
        return Response(201, self._public_key(doc))

    def app_keys_delete(self, req, app_id, key_id):
        self.authenticate_console(req)
        self._app(app_id)
        doc = self.store.get("app_keys", key_id)
        if not doc or doc["app_id"] != app_id:
            raise ApiError(404, "not_found", "API key not found")
        self.store.delete("app_keys", key_id)
        return Response(204)

    # ---------------------------------------------------------------- apps
    def _app(self, app_id):
        doc = self.store.get("apps", app_id)
        if not doc:
            raise ApiError(404, "app_not_found", "App not found.")
        return doc

    def _app_public(self, app, detail=True):
        out = dict((k, app[k]) for k in ("id", "name", "description", "mode", "icon_type", "icon",
                                         "icon_background", "enable_site", "enable_api", "created_at",
                                         "updated_at"))
        out["model_config"] = app.get("model_config")
        if detail:
            out["site"] = {"access_token": app["site_code"], "code": app["site_code"], "title": app["name"],
                           "app_base_url": app["app_base_url"]}
            out["api_base_url"] = app["app_base_url"] + "/v1"
        return out

    def apps_list(self, req):
        self.authenticate_console(req)
        page = int(req.query.get("page", "1"))
        limit = int(req.query.get("limit", "20"))
        if not 1 <= limit <= 100:
            raise bad("limit: must be between 1 and 100")
        name = req.query.get("name")
        apps = [a for a in self.store.list("apps") if not name or name.lower() in a["name"].lower()]
        chunk = apps[(page - 1) * limit:page * limit]
        return Response(200, {"page": page, "limit": limit, "total": len(apps),
                              "has_more": page * limit < len(apps),
                              "data": [self._app_public(a, detail=False) for a in chunk]})

    def apps_create(self, req):
        self.authenticate_console(req)
        body = req.json_body()
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise bad("name: Field required")
        if body.get("mode") not in APP_MODES:
            raise bad("mode: invalid mode value")
        if len(body.get("description") or "") > 400:
            raise bad("description: Description cannot exceed 400 characters.")
        app_id = str(uuid.uuid4())
        host = req.headers.get("host", "localhost")
        app = {
            "id": app_id, "name": name, "description": body.get("description") or "", "mode": body["mode"],
            "icon_type": body.get("icon_type") or "emoji", "icon": body.get("icon") or "🤖",
            "icon_background": body.get("icon_background") or "#FFEAD5", "enable_site": True, "enable_api": True,
            "created_at": int(now()), "updated_at": int(now()), "site_code": secrets.token_hex(8),
            "app_base_url": "http://%s" % host,
            "model_config": None,
        }
        self.store.put("apps", app_id, app)
        return Response(201, self._app_public(app))

    def app_get(self, req, app_id):
        self.authenticate_console(req)
        return Response(200, self._app_public(self._app(app_id)))

    def app_put(self, req, app_id):
        self.authenticate_console(req)
        app = self._app(app_id)
        body = req.json_body()
        if not isinstance(body.get("name"), str) or not body["name"].strip():
            raise bad("name: Field required")
        for field in ("name", "description", "icon_type", "icon", "icon_background"):
            if field in body and body[field] is not None:
                app[field] = body[field]
        app["updated_at"] = int(now())
        self.store.put("apps", app_id, app)
        return Response(200, self._app_public(app))

    def app_delete(self, req, app_id):
        self.authenticate_console(req)
        self._app(app_id)
        self.store.delete("apps", app_id)
        for key in self.store.list("app_keys"):
            if key["app_id"] == app_id:
                self.store.delete("app_keys", key["id"])
        return Response(204)

    def app_model_config(self, req, app_id):
        self.authenticate_console(req)
        app = self._app(app_id)
        if app["mode"] not in ("chat", "agent-chat", "completion"):
            raise ApiError(400, "app_unavailable", "App unavailable, please check your app configurations.")
        cfg = req.json_body()
        model = cfg.get("model")
        if not isinstance(model, dict) or not model.get("provider") or not model.get("name"):
            raise bad("model is required and must be an object with provider and name")
        if not self._model_exists(model["provider"], "llm", model["name"]):
            raise bad("model.name: Model %s does not exist in provider %s" % (model["name"], model["provider"]))
        ds_cfg = (cfg.get("dataset_configs") or {}).get("datasets", {}).get("datasets", [])
        for item in ds_cfg:
            ds_id = (item.get("dataset") or {}).get("id")
            if not ds_id or not self.store.get("datasets", ds_id):
                raise bad("Dataset %s does not exist" % ds_id)
        # like Dify's ModelConfigManager: completion_params always carries a stop list
        model["completion_params"] = dict(model.get("completion_params") or {})
        model["completion_params"].setdefault("stop", [])
        app["model_config"] = cfg
        app["updated_at"] = int(now())
        self.store.put("apps", app_id, app)
        return Response(200, {"result": "success"})

    # ------------------------------------------------------------ datasets
    def _ds(self, ds_id):
        doc = self.store.get("datasets", ds_id)
        if not doc:
            raise ApiError(404, "not_found", "Dataset not found.")
        return doc

    def _check_retrieval(self, rm):
        if rm is None:
            return
        if not isinstance(rm, dict):
            raise bad("retrieval_model: must be an object")
        if rm.get("search_method") not in ("hybrid_search", "semantic_search", "full_text_search", "keyword_search"):
            raise bad("retrieval_model.search_method: invalid value")
        if rm.get("reranking_enable"):
            rr = rm.get("reranking_model") or {}
            if not self._model_exists(rr.get("reranking_provider_name"), "rerank", rr.get("reranking_model_name")):
                raise bad("Invalid rerank model: %s" % rr.get("reranking_model_name"))
        top_k = rm.get("top_k", 4)
        if not isinstance(top_k, int) or not 1 <= top_k <= 100:
            raise bad("retrieval_model.top_k: must be an integer between 1 and 100")

    def _check_name(self, name, exclude=None):
        if not isinstance(name, str) or not 1 <= len(name) <= 40:
            raise bad("Name must be between 1 to 40 characters.")
        for ds in self.store.list("datasets"):
            if ds["name"] == name and ds["id"] != exclude:
                raise ApiError(409, "dataset_name_duplicate",
                               "The dataset name already exists. Please modify your dataset name.")

    def _ds_public(self, ds):
        docs = [d for d in self.store.list("documents") if d["dataset_id"] == ds["id"]]
        out = dict(ds)
        out["document_count"] = len(docs)
        out["word_count"] = sum(len(d["text"].split()) for d in docs)
        return out

    def v1_ds_list(self, req):
        self.authenticate_service(req, "dataset_keys")
        page = int(req.query.get("page", "1"))
        limit = int(req.query.get("limit", "20"))
        if not 1 <= limit <= 100:
            raise bad("limit: must be between 1 and 100")
        keyword = req.query.get("keyword")
        items = [d for d in self.store.list("datasets") if not keyword or keyword in d["name"]]
        chunk = items[(page - 1) * limit:page * limit]
        return Response(200, {"data": [self._ds_public(d) for d in chunk], "has_more": page * limit < len(items),
                              "limit": limit, "total": len(items), "page": page})

    def v1_ds_create(self, req):
        self.authenticate_service(req, "dataset_keys")
        body = req.json_body()
        self._check_name(body.get("name"))
        tech = body.get("indexing_technique")
        if tech not in (None, "high_quality", "economy"):
            raise bad("indexing_technique: Invalid indexing technique.")
        if tech == "high_quality":
            if not body.get("embedding_model") or not body.get("embedding_model_provider"):
                raise bad("embedding_model and embedding_model_provider are required for high_quality indexing")
            if not self._model_exists(body["embedding_model_provider"], "text-embedding", body["embedding_model"]):
                raise bad("Invalid embedding model: %s" % body["embedding_model"])
        self._check_retrieval(body.get("retrieval_model"))
        ds_id = str(uuid.uuid4())
        ds = {
            "id": ds_id, "name": body["name"], "description": body.get("description") or "",
            "provider": "vendor", "permission": body.get("permission") or "only_me",
            "data_source_type": None, "indexing_technique": tech,
            "embedding_model": body.get("embedding_model"),
            "embedding_model_provider": body.get("embedding_model_provider"),
            "embedding_available": True,
            "retrieval_model_dict": body.get("retrieval_model") or {
                "search_method": "semantic_search", "reranking_enable": False, "top_k": 4,
                "score_threshold_enabled": False},
            "tags": [], "doc_form": None, "created_at": int(now()), "updated_at": int(now()),
        }
        self.store.put("datasets", ds_id, ds)
        return Response(200, self._ds_public(ds))

    def v1_ds_get(self, req, ds_id):
        self.authenticate_service(req, "dataset_keys")
        return Response(200, self._ds_public(self._ds(ds_id)))

    def v1_ds_patch(self, req, ds_id):
        self.authenticate_service(req, "dataset_keys")
        ds = self._ds(ds_id)
        body = req.json_body()
        if "name" in body:
            self._check_name(body["name"], exclude=ds_id)
            ds["name"] = body["name"]
        if "description" in body:
            ds["description"] = body["description"] or ""
        if body.get("embedding_model") or body.get("embedding_model_provider"):
            if not self._model_exists(body.get("embedding_model_provider"), "text-embedding",
                                      body.get("embedding_model")):
                raise bad("Invalid embedding model: %s" % body.get("embedding_model"))
            ds["embedding_model"] = body["embedding_model"]
            ds["embedding_model_provider"] = body["embedding_model_provider"]
        if "indexing_technique" in body:
            ds["indexing_technique"] = body["indexing_technique"]
        if "retrieval_model" in body:
            self._check_retrieval(body["retrieval_model"])
            ds["retrieval_model_dict"] = body["retrieval_model"]
        ds["updated_at"] = int(now())
        self.store.put("datasets", ds_id, ds)
        return Response(200, self._ds_public(ds))

    def v1_ds_delete(self, req, ds_id):
        self.authenticate_service(req, "dataset_keys")
        self._ds(ds_id)
        for app in self.store.list("apps"):
            cfg = app.get("model_config") or {}
            for item in (cfg.get("dataset_configs") or {}).get("datasets", {}).get("datasets", []):
                if (item.get("dataset") or {}).get("id") == ds_id:
                    raise ApiError(409, "dataset_in_use", "The dataset is being used by some apps. "
                                   "Please remove the dataset from the apps before deleting it.")
        self.store.delete("datasets", ds_id)
        for doc in self.store.list("documents"):
            if doc["dataset_id"] == ds_id:
                self.store.delete("documents", doc["id"])
        return Response(204)

    def _doc_status(self, doc):
        age = now() - doc["indexed_from"]
        steps = len(INDEXING_STEPS) - 1
        idx = min(steps, int(age / (self.index_seconds / steps))) if self.index_seconds > 0 else steps
        return INDEXING_STEPS[idx]

    def _doc_public(self, doc):
        status = self._doc_status(doc)
        return {"id": doc["id"], "position": doc["position"], "data_source_type": doc["data_source_type"],
                "name": doc["name"], "created_from": "api", "created_at": doc["created_at"],
                "indexing_status": status, "display_status": "available" if status == "completed" else "indexing",
                "enabled": True, "archived": False, "word_count": len(doc["text"].split()),
                "tokens": len(doc["text"].split()), "doc_form": "text_model", "batch": doc["batch"]}

    def _create_doc(self, ds_id, data, text, source_type):
        ds = self._ds(ds_id)
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise bad("name: Field required")
        if not isinstance(text, str):
            raise bad("text: Field required")
        existing = [d for d in self.store.list("documents") if d["dataset_id"] == ds_id]
        if not existing and not data.get("process_rule"):
            raise bad("process_rule is required.")
        tech = data.get("indexing_technique") or ds.get("indexing_technique")
        if not tech:
            raise bad("indexing_technique is required.")
        if not ds.get("indexing_technique"):
            ds["indexing_technique"] = tech
            self.store.put("datasets", ds_id, ds)
        batch = time.strftime("%Y%m%d%H%M%S") + "%06d" % secrets.randbelow(10 ** 6)
        same = [d for d in existing if d["name"] == name]
        if same:
            doc = same[0]
            doc.update({"text": text, "batch": batch, "indexed_from": now()})
        else:
            doc_id = str(uuid.uuid4())
            doc = {"id": doc_id, "dataset_id": ds_id, "name": name, "text": text, "batch": batch,
                   "position": len(existing) + 1, "data_source_type": source_type,
                   "created_at": int(now()), "indexed_from": now()}
        self.store.put("documents", doc["id"], doc)
        return Response(200, {"document": self._doc_public(doc), "batch": batch})

    def v1_doc_create_text(self, req, ds_id):
        self.authenticate_service(req, "dataset_keys")
        body = req.json_body()
        return self._create_doc(ds_id, body, body.get("text"), "upload_file")

    def v1_doc_create_file(self, req, ds_id):
        self.authenticate_service(req, "dataset_keys")
        parts = req.multipart(with_names=True)
        if "file" not in parts:
            raise ApiError(400, "no_file_uploaded", "Please upload your file.")
        filename, content = parts["file"]
        ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if ext not in ("txt", "md", "markdown", "mdx", "pdf", "html", "htm", "xlsx", "xls", "docx", "csv", "vtt",
                       "properties"):
            raise ApiError(415, "unsupported_file_type", "File type not allowed.")
        data = json.loads(parts["data"][1].decode("utf-8")) if "data" in parts else {}
        data.setdefault("name", filename)
        return self._create_doc(ds_id, data, content.decode("utf-8", "replace"), "upload_file")

    def v1_doc_list(self, req, ds_id):
        self.authenticate_service(req, "dataset_keys")
        self._ds(ds_id)
        keyword = req.query.get("keyword")
        page = int(req.query.get("page", "1"))
        limit = int(req.query.get("limit", "20"))
        if not 1 <= limit <= 100:
            raise bad("limit: must be between 1 and 100")
        docs = [d for d in self.store.list("documents") if d["dataset_id"] == ds_id
                and (not keyword or keyword in d["name"])]
        chunk = docs[(page - 1) * limit:page * limit]
        return Response(200, {"data": [self._doc_public(d) for d in chunk], "has_more": page * limit < len(docs),
                              "limit": limit, "total": len(docs), "page": page})

    def v1_doc_delete(self, req, ds_id, doc_id):
        self.authenticate_service(req, "dataset_keys")
        self._ds(ds_id)
        doc = self.store.get("documents", doc_id)
        if not doc or doc["dataset_id"] != ds_id:
            raise ApiError(404, "not_found", "Document Not Exists.")
        if self._doc_status(doc) != "completed":
            raise ApiError(400, "document_indexing", "The document is being processed and cannot be edited.")
        self.store.delete("documents", doc_id)
        return Response(204)

    def v1_doc_status(self, req, ds_id, batch):
        self.authenticate_service(req, "dataset_keys")
        self._ds(ds_id)
        docs = [d for d in self.store.list("documents") if d["dataset_id"] == ds_id and d["batch"] == batch]
        if not docs:
            raise ApiError(404, "not_found", "Documents not found.")
        out = []
        for d in docs:
            status = self._doc_status(d)
            total = max(1, len(d["text"]) // 500 + 1)
            out.append({"id": d["id"], "indexing_status": status, "error": None,
                        "completed_segments": total if status == "completed" else 0, "total_segments": total})
        return Response(200, {"data": out})

    def _search(self, ds_ids, query, top_k):
        words = set(re.findall(r"\w+", (query or "").lower()))
        records = []
        for d in self.store.list("documents"):
            if d["dataset_id"] not in ds_ids or self._doc_status(d) != "completed":
                continue
            dwords = re.findall(r"\w+", d["text"].lower())
            score = len(words & set(dwords)) / float(len(words) or 1)
            if score > 0:
                records.append({"segment": {"content": d["text"][:2000],
                                            "document": {"id": d["id"], "name": d["name"]}}, "score": score})
        records.sort(key=lambda r: -r["score"])
        return records[:top_k]

    def v1_retrieve(self, req, ds_id):
        self.authenticate_service(req, "dataset_keys")
        ds = self._ds(ds_id)
        body = req.json_body()
        if not body.get("query"):
            raise bad("query: Field required")
        top_k = (ds.get("retrieval_model_dict") or {}).get("top_k", 4)
        return Response(200, {"query": {"content": body["query"]},
                              "records": self._search([ds_id], body["query"], top_k)})

    def v1_parameters(self, req):
        key = self.authenticate_service(req, "app_keys")
        cfg = self._app(key["app_id"]).get("model_config") or {}
        return Response(200, {"opening_statement": cfg.get("opening_statement") or "",
                              "suggested_questions": cfg.get("suggested_questions") or [],
                              "retriever_resource": cfg.get("retriever_resource") or {"enabled": False},
                              "user_input_form": cfg.get("user_input_form") or [],
                              "file_upload": cfg.get("file_upload") or {},
                              "system_parameters": {"file_size_limit": 15}})

    def v1_chat(self, req):
        key = self.authenticate_service(req, "app_keys")
        app = self._app(key["app_id"])
        body = req.json_body()
        if not body.get("query"):
            raise bad("query: Field required")
        if body.get("response_mode", "streaming") == "streaming":
            raise bad("response_mode: the stand-in only answers blocking requests")
        cfg = app.get("model_config") or {}
        ds_ids = [(i.get("dataset") or {}).get("id") for i in
                  (cfg.get("dataset_configs") or {}).get("datasets", {}).get("datasets", [])]
        records = self._search(ds_ids, body["query"], 4)
        answer = "(Dify stand-in) %s" % (records[0]["segment"]["content"][:200] if records else "no context")
        return Response(200, {"event": "message", "task_id": str(uuid.uuid4()), "id": str(uuid.uuid4()),
                              "message_id": str(uuid.uuid4()), "conversation_id": str(uuid.uuid4()),
                              "mode": app["mode"], "answer": answer,
                              "metadata": {"retriever_resources": [
                                  {"document_name": r["segment"]["document"]["name"], "score": r["score"]}
                                  for r in records]},
                              "created_at": int(now())})


class _Request(object):
    def __init__(self, method, path, query, headers, body):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.cookies = {}
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:
            pass
        for name, morsel in cookie.items():
            self.cookies[name] = morsel.value

    def json_body(self):
        if not self.body:
            return {}
        try:
            data = json.loads(self.body.decode("utf-8"))
        except ValueError:
            raise ApiError(400, "bad_request", "Failed to decode JSON object.")
        if not isinstance(data, dict):
            raise ApiError(400, "bad_request", "The JSON body must be an object.")
        return data

    def multipart(self, with_names=False):
        """Parse multipart/form-data: {name: bytes} or {name: (filename, bytes)}."""
        ctype = self.headers.get("content-type", "")
        m = re.match(r'^multipart/form-data;.*boundary="?([^";]+)"?', ctype)
        if not m:
            raise ApiError(415, "unsupported_media_type", "Expected multipart/form-data.")
        delimiter = b"--" + m.group(1).encode("latin-1")
        out = {}
        for part in (self.body or b"").split(delimiter)[1:]:
            if part.startswith(b"--"):
                break
            head, _, content = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
            if content.endswith(b"\r\n"):
                content = content[:-2]
            head = head.decode("utf-8", "replace")
            name = re.search(r'name="([^"]*)"', head)
            filename = re.search(r'filename="([^"]*)"', head)
            if not name:
                continue
            out[name.group(1)] = (filename.group(1) if filename else "", content) if with_names else content
        return out


class Handler(BaseHTTPRequestHandler):
    server_version = "DifyStandIn/1"

    def log_message(self, fmt, *args):  # quiet; the request log is in .standin.requests
        if getattr(self.server, "verbose", False):
            BaseHTTPRequestHandler.log_message(self, fmt, *args)

    def _serve(self):
        standin = self.server.standin
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = dict((k.lower(), v) for k, v in self.headers.items())
        query = dict((k, v[0]) for k, v in parse_qs(parts.query, keep_blank_values=True).items())
        req = _Request(self.command, parts.path, query, headers, body)
        entry = {"method": self.command, "path": parts.path, "query": query, "headers": headers, "json": None}
        if body and headers.get("content-type", "").startswith("application/json"):
            try:
                entry["json"] = json.loads(body.decode("utf-8"))
            except ValueError:
                entry["json"] = body.decode("utf-8", "replace")
        elif body:
            entry["body_bytes"] = len(body)
        standin.requests.append(entry)
        if len(standin.requests) > 20000:
            del standin.requests[:10000]
        try:
            resp = standin.handle(req)
        except ApiError as err:
            resp = Response(err.status, err.body or {"code": err.code, "message": err.message, "status": err.status})
        except Exception as exc:  # the stand-in's own bug: answer like Dify's 500
            resp = Response(500, {"code": "internal_server_error", "message": "stand-in error: %r" % exc,
                                  "status": 500})
        entry["status"] = resp.status
        if resp.raw is not None:
            payload = resp.raw
        elif resp.status == 204 or resp.body is None:
            payload = b""
        else:
            payload = json.dumps(resp.body).encode("utf-8")
        self.send_response(resp.status)
        if resp.status != 204:
            self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for cookie in resp.cookies:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve


class StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(address=("127.0.0.1", 0), verbose=False, **options):
    """Create (not start) a stand-in server.

    ``address`` is ``(host, port)``; port 0 picks a free one (read it back from
    ``server.server_address[1]``). ``options`` are :class:`StandIn` arguments:
    ``version``, ``dsn``, ``mode`` ("api" | "web"), ``secure_cookies``,
    ``init_password``, ``admin_api_key``, ``fail_health``, ``task_seconds``,
    ``index_seconds``, ``access_token_ttl``, ``marketplace``,
    ``check_model_endpoints``. The returned ThreadingHTTPServer has the
    behaviour object at ``server.standin``; run ``server.serve_forever()`` in
    a thread and stop with ``server.shutdown(); server.server_close()``.
    """
    srv = StandInServer(address, Handler)
    srv.standin = StandIn(**options)
    srv.verbose = verbose
    return srv
