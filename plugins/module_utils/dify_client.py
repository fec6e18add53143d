# -*- coding: utf-8 -*-
# Shared HTTP client for the dify_* modules (Dify console + service API).
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One client for every dify_* module.

* Console login with the password base64-encoded (Dify >= 1.11.2; plain
  before), cookies ``access_token``/``refresh_token``/``csrf_token`` kept by
  the client itself -- including the ``__Host-`` prefixed names Dify uses
  when its console URL is https, which a cookie jar would refuse to send over
  plain http to 127.0.0.1.
* ``X-CSRF-Token`` on every authenticated console call, GETs included.
* One refresh (``POST /console/api/refresh-token``) and retry on a 401; a
  fresh login when the refresh token is gone too.
* Bounded retries with exponential backoff; every call has a timeout. Idempotent
  requests (GET, HEAD, PUT, DELETE) are retried on connection errors, 429 and
  5xx. A POST is retried only when it cannot have landed (429, connection
  refused) or when its caller says it is safe (login, refresh); on a 5xx or a
  lost answer a creating POST is retried only after its ``landed`` check (a
  lookup of what it would have created) finds nothing -- so a flaky proxy can
  not make Dify create an app or a dataset twice.
* Errors name the call, the HTTP status, Dify's error code and message.
* Optional admin API key mode (``ADMIN_API_KEY_ENABLE``): ``Authorization:
  Bearer <key>`` + ``X-WORKSPACE-ID``, no login and no CSRF.
* Version detection (``GET /health``) with a clear refusal of versions the
  modules do not speak (0.x, < 1.9.2, unknown majors).

Uses only ``ansible.module_utils.urls`` (no ``requests`` on the managed host).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import json
import os
import re
import socket
import time

from http.client import HTTPException
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode

from ansible.module_utils.urls import Request, open_url

try:
    from ansible.module_utils.urls import make_context
except ImportError:  # pragma: no cover - older ansible-core
    make_context = None

CONSOLE = "/console/api"
MIN_VERSION = (1, 9, 2)
BASE64_PASSWORD_SINCE = (1, 11, 2)
SUPPORTED_MAJORS = (1,)
RETRY_STATUSES = (429, 500, 502, 503, 504)
SERVER_ERRORS = (500, 502, 503, 504)
IDEMPOTENT_METHODS = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
# Dify counts failed logins per email in Redis and refuses the next one once the count is
# above this (services/account_service.py: `count > 5`): the 6th wrong password is still a
# 401, the 7th login is a 429 even with the right password. Cleared after 24 h.
LOGIN_LOCKOUT_AFTER = 5
MODEL_TYPES = ["llm", "text-embedding", "rerank", "speech2text", "tts", "moderation"]
EMAIL_RE = re.compile(r"^[\w.!#$%&'*+\-/=?^`{|}~]+@([\w-]+\.)+[\w-]{2,}$")
PASSWORD_RE = re.compile(r"^(?=.*[a-zA-Z])(?=.*\d).{8,}$")
COOKIE_NAMES = ("access_token", "refresh_token", "csrf_token")


def dify_argument_spec():
    """Options every dify_* module shares."""
    return dict(
        url=dict(type="str", required=True, aliases=["dify_url"]),
        admin_email=dict(type="str"),
        admin_password=dict(type="str", no_log=True),
        admin_api_key=dict(type="str", no_log=True),
        workspace_id=dict(type="str"),
        timeout=dict(type="int", default=30),
        retries=dict(type="int", default=3),
        retry_delay=dict(type="float", default=1.0),
        validate_certs=dict(type="bool", default=True),
        dify_version=dict(type="str"),
    )


def dify_module_kwargs():
    """AnsibleModule keyword arguments that go with dify_argument_spec()."""
    return dict(
        required_together=[("admin_email", "admin_password"), ("admin_api_key", "workspace_id")],
        required_one_of=[("admin_password", "admin_api_key")],
        supports_check_mode=True,
    )


def parse_version(text):
    """'1.15.0' -> (1, 15, 0); None when there is no number."""
    if not text:
        return None
    nums = re.findall(r"\d+", str(text))[:3]
    if not nums:
        return None
    nums += ["0"] * (3 - len(nums))
    return tuple(int(n) for n in nums)


def version_str(ver):
    return ".".join(str(n) for n in ver)


def check_version(ver):
    """Raise DifyUnsupportedVersion unless these modules speak this version."""
    if ver is None:
        return
    if ver[0] == 0:
        raise DifyUnsupportedVersion(
            "Dify %s is not supported: 0.x returns tokens in the login body, uses no CSRF and plain "
            "passwords. Upgrade Dify to 1.x (>= %s)." % (version_str(ver), version_str(MIN_VERSION)))
    if ver[0] not in SUPPORTED_MAJORS:
        raise DifyUnsupportedVersion(
            "Dify %s is not supported: major version %d is unknown to these modules (they speak 1.x, "
            ">= %s). Pin dify_version to a 1.x release or update the modules." % (
                version_str(ver), ver[0], version_str(MIN_VERSION)))
    if ver < MIN_VERSION:
        raise DifyUnsupportedVersion(
            "Dify %s is not supported: need >= %s (cookie + CSRF login)." % (version_str(ver),
                                                                             version_str(MIN_VERSION)))


class DifyError(Exception):
    """An API call failed; str() names the call, HTTP status, Dify code and message."""

    def __init__(self, msg, status=None, code=None, body=None, method=None, path=None):
        Exception.__init__(self, msg)
        self.msg = msg
        self.status = status
        self.code = code
        self.body = body
        self.method = method
        self.path = path


class DifyNotSetUp(DifyError):
    """Dify answered that no admin account exists yet."""


class DifyUnsupportedVersion(DifyError):
    pass


class DifyLoginLocked(DifyError):
    pass


class DifyNoAnswer(DifyError):
    """The request may or may not have reached Dify (timeout, reset connection)."""


def _never_sent(err):
    """True when the error proves the request did not reach the server (connection refused)."""
    reason = getattr(err, "reason", err)
    return isinstance(reason, ConnectionRefusedError) or isinstance(err, ConnectionRefusedError)


def error_fields(data):
    """(code, message) of a Dify error body, read as _error_from() reads it: {"code", "message", "status"}
    (``result`` when there is no ``code``), fastopenapi's {"error": {"type", "message"}}, or any other
    body (its first 300 characters). The message is a string, or None when there is none."""
    code = message = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            code, message = err.get("type") or err.get("code"), err.get("message")
        else:
            code, message = data.get("code") or data.get("result"), data.get("message") or err
    elif data:
        message = str(data)[:300]
    return code, ("%s" % (message,) if message else None)


def _error_from(method, path, status, data):
    # Dify's fastopenapi routes (/setup, /init, ...) answer {"error": {"type", "message", "status"}}
    code, message = error_fields(data)
    text = "%s %s failed: HTTP %s" % (method, path, status)
    if code:
        text += " %s" % code
    if message:
        text += ": %s" % message
    cls = DifyNotSetUp if code == "not_setup" else DifyError
    return cls(text, status=status, code=code, body=data, method=method, path=path)


class DifyClient(object):
    """Talks to one Dify; see the module docstring."""

    def __init__(self, url, admin_email=None, admin_password=None, admin_api_key=None, workspace_id=None,
                 timeout=30, retries=3, retry_delay=1.0, validate_certs=True, dify_version=None,
                 sleep=time.sleep, opener=None):
        self.base = url.rstrip("/")
        self.email = admin_email
        self.password = admin_password
        self.api_key = admin_api_key
        self.workspace_id = workspace_id
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.retry_delay = float(retry_delay)
        self.validate_certs = validate_certs
        self.sleep = sleep
        self.opener = opener or self._open
        self._context = None
        self.cookies = {}
        self.logged_in = False
        self.version = parse_version(dify_version) if dify_version else None
        self._version_checked = bool(dify_version)
        if self.version:
            check_version(self.version)
        self.calls = []  # (method, path, status) of every HTTP exchange, for debugging

    @classmethod
    def from_module(cls, module):
        p = module.params
        return cls(p["url"], admin_email=p.get("admin_email"), admin_password=p.get("admin_password"),
                   admin_api_key=p.get("admin_api_key"), workspace_id=p.get("workspace_id"),
                   timeout=p.get("timeout", 30), retries=p.get("retries", 3),
                   retry_delay=p.get("retry_delay", 1.0), validate_certs=p.get("validate_certs", True),
                   dify_version=p.get("dify_version"))

    # ------------------------------------------------------------ transport
    def _open(self, url, method=None, **kwargs):
        """open_url with one TLS context per client (building one per call costs ~30 ms)."""
        if make_context is None:
            return open_url(url, method=method, **kwargs)
        if self._context is None:
            self._context = make_context(validate_certs=self.validate_certs)
        return Request().open(method, url, context=self._context, **kwargs)

    def _cookie_header(self):
        return "; ".join("%s=%s" % (k, v) for k, v in sorted(self.cookies.items()))

    def _cookie(self, name):
        return self.cookies.get(name) or self.cookies.get("__Host-" + name)

    def _store_cookies(self, headers):
        if headers is None:
            return
        getter = getattr(headers, "get_all", None)
        values = getter("Set-Cookie") if getter else headers.get("Set-Cookie")
        if isinstance(values, str):
            values = [values]
        for raw in values or []:
            first, _sep, attrs = raw.partition(";")
            name, _sep, value = first.strip().partition("=")
            expired = re.search(r"max-age=0\b", attrs, re.I) or not value
            if expired:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    def _backoff(self, attempt, headers=None):
        delay = self.retry_delay * (2 ** attempt)
        if headers is not None:
            after = headers.get("Retry-After")
            if after and str(after).isdigit():
                delay = max(delay, min(int(after), 60))
        return delay

    def raw(self, method, path, body=None, query=None, headers=None, data=None,
            retry_statuses=None, send_cookies=True, safe=None):
        """One HTTP exchange with bounded retries. Returns (status, headers, parsed body).

        ``safe``: whether repeating the request cannot duplicate anything (default: the method is
        idempotent). An unsafe request is retried only on 429 and on a refused connection (it never
        reached Dify); any other failure is returned or raised for the caller to decide.
        """
        if safe is None:
            safe = method.upper() in IDEMPOTENT_METHODS
        if retry_statuses is None:
            retry_statuses = RETRY_STATUSES if safe else (429,)
        url = self.base + path
        if query:
            url += "?" + urlencode(query)
        hdrs = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        if send_cookies and self.cookies:
            hdrs["Cookie"] = self._cookie_header()
        hdrs.update(headers or {})
        last_error = None
        for attempt in range(self.retries + 1):
            try:
                resp = self.opener(url, data=data, headers=hdrs, method=method, timeout=self.timeout,
                                   validate_certs=self.validate_certs, follow_redirects="none",
                                   http_agent="ansible-dify-client", use_proxy=True, use_netrc=False)
                status, rheaders, payload = resp.getcode(), resp.headers, resp.read()
            except HTTPError as err:
                status, rheaders = err.code, err.headers
                try:
                    payload = err.read()
                except Exception:
                    payload = b""
            except (URLError, socket.timeout, socket.error, HTTPException, ConnectionError) as err:
                last_error = err
                self.calls.append((method, path, None))
                if attempt < self.retries and (safe or _never_sent(err)):
                    self.sleep(self._backoff(attempt))
                    continue
                raise DifyNoAnswer("%s %s failed: Dify at %s did not answer after %d attempt(s): %s" % (
                    method, path, self.base, attempt + 1, getattr(err, "reason", err)), method=method, path=path)
            self.calls.append((method, path, status))
            self._store_cookies(rheaders)
            parsed = None
            if payload:
                try:
                    parsed = json.loads(payload.decode("utf-8"))
                except ValueError:
                    parsed = payload.decode("utf-8", "replace")
            if status in retry_statuses and attempt < self.retries:
                self.sleep(self._backoff(attempt, rheaders))
                continue
            return status, rheaders, parsed
        raise DifyError("%s %s failed: %s" % (method, path, last_error))  # pragma: no cover

    # ------------------------------------------------------------- version
    def detect_version(self):
        """Read the version from GET /health; None when the URL does not route /health to the api."""
        if self._version_checked:
            return self.version
        self._version_checked = True
        try:
            # optional: Dify's nginx does not route /health, so a 404 (or 502 from web) is normal
            status, _headers, data = self.raw("GET", "/health", send_cookies=False, retry_statuses=())
        except DifyError:
            status, data = None, None
        if status == 200 and isinstance(data, dict) and data.get("version"):
            self.version = parse_version(data["version"])
        check_version(self.version)
        return self.version

    # ---------------------------------------------------------------- auth
    def setup_status(self):
        return self.request("GET", CONSOLE + "/setup", auth=False).get("step")

    def encode_password(self, password):
        ver = self.version
        if ver is not None and ver < BASE64_PASSWORD_SINCE:
            return password
        return base64.b64encode(password.encode("utf-8")).decode("ascii")

    def login(self):
        if self.api_key:
            return
        if not self.email or not self.password:
            raise DifyError("admin_email and admin_password are required to log in to Dify")
        self.detect_version()
        path = CONSOLE + "/login"
        for name in list(self.cookies):
            if name.replace("__Host-", "") in COOKIE_NAMES:
                del self.cookies[name]
        # a login creates nothing: safe to repeat on a 5xx (never on a 401, which counts as a failure)
        status, _headers, data = self.raw("POST", path, body={"email": self.email,
                                                              "password": self.encode_password(self.password),
                                                              "remember_me": True},
                                          retry_statuses=SERVER_ERRORS, safe=True)
        if status == 200:
            if isinstance(data, dict) and isinstance(data.get("data"), dict) and "access_token" in data["data"]:
                raise DifyUnsupportedVersion(
                    "Dify answered the login with tokens in the body (0.15.x style): that version is not "
                    "supported; upgrade Dify to 1.x (>= %s)." % version_str(MIN_VERSION))
            if not self._cookie("csrf_token") or not self._cookie("access_token"):
                raise DifyError("POST %s answered 200 but set no access_token/csrf_token cookies; check that "
                                "the url reaches Dify's api (CONSOLE_API_URL / COOKIE_DOMAIN)." % path)
            self.logged_in = True
            return
        err = _error_from("POST", path, status, data)
        if status == 429 or err.code == "email_code_login_limit":
            raise DifyLoginLocked(
                "%s -- Dify locked logins for %s after more than %d failed attempts (24 h). Fix admin_password, "
                "then wait, or delete the Redis key login_error_rate_limit:%s (docs/troubleshooting.md)."
                % (err.msg, self.email, LOGIN_LOCKOUT_AFTER, self.email),
                status=status, code=err.code, body=data, method="POST", path=path)
        if err.code == "authentication_failed":
            err.msg = err.args[0] + (" (login as %s; Dify locks the login for 24 h once more than %d attempts "
                                     "failed)" % (self.email, LOGIN_LOCKOUT_AFTER))
            err.args = (err.msg,)
        raise err

    def refresh(self):
        if not self._cookie("refresh_token"):
            return False
        status, _headers, _data = self.raw("POST", CONSOLE + "/refresh-token", retry_statuses=SERVER_ERRORS, safe=True)
        return status == 200 and bool(self._cookie("access_token"))

    def _auth_headers(self):
        if self.api_key:
            return {"Authorization": "Bearer %s" % self.api_key, "X-WORKSPACE-ID": self.workspace_id or ""}
        return {"X-CSRF-Token": self._cookie("csrf_token") or ""}

    # ------------------------------------------------------------- calls
    def request(self, method, path, body=None, query=None, auth=True, expected=None, data=None,
                content_type=None, landed=None, safe=None):
        """A console call; returns the parsed JSON body ({} when empty).

        ``safe=True`` marks a POST that creates nothing (a query, an upload of the same bytes):
        it is retried like a GET.

        ``landed``: for a creating POST, a function that looks up what the POST would have created
        and returns it (or None). When the POST fails with a 5xx or no answer, ``landed()`` decides:
        found -> that is the result; not found -> the POST is sent again (bounded by ``retries``).
        Without it a failed POST is not repeated.
        """
        return self._with_landed_check(method, path, landed, lambda: self._console(
            method, path, body, query, auth, expected, data, content_type, safe))

    def _console(self, method, path, body, query, auth, expected, data, content_type, safe):
        if auth:
            if not self.api_key:
                self.detect_version()
            if not self.api_key and not self.logged_in:
                self.login()
        for attempt in (0, 1):
            headers = self._auth_headers() if auth else {}
            if content_type:
                headers["Content-Type"] = content_type
            status, _headers, parsed = self.raw(method, path, body=body, query=query, headers=headers, data=data,
                                                send_cookies=not self.api_key, safe=safe)
            if status == 401 and auth and not self.api_key and attempt == 0:
                if not self.refresh():
                    self.login()
                continue
            break
        if (expected and status not in expected) or not 200 <= status < 300:
            raise _error_from(method, path, status, parsed)
        return parsed if parsed is not None else {}

    def _with_landed_check(self, method, path, landed, send):
        attempt = 0
        while True:
            try:
                return send()
            except DifyError as err:
                unknown = isinstance(err, DifyNoAnswer) or err.status in SERVER_ERRORS
                if landed is None or not unknown or method.upper() in IDEMPOTENT_METHODS:
                    raise
                found = landed()
                if found is not None:
                    return found
                if attempt >= self.retries:
                    raise
                self.sleep(self._backoff(attempt))
                attempt += 1

    def service_request(self, method, path, api_key, body=None, query=None, landed=None, safe=None):
        """A service API call (/v1/...) with a dataset- or app- key; ``landed``/``safe`` as for request()."""
        def send():
            status, _headers, parsed = self.raw(method, path, body=body, query=query, send_cookies=False,
                                                headers={"Authorization": "Bearer %s" % api_key}, safe=safe)
            if not 200 <= status < 300:
                raise _error_from(method, path, status, parsed)
            return parsed if parsed is not None else {}

        return self._with_landed_check(method, path, landed, send)

    def upload(self, path, field, filename, content):
        """multipart/form-data upload of one file (console, authenticated)."""
        # Built by hand: ansible's prepare_multipart rewrites LF to CRLF, which corrupts binary files.
        boundary = "----dify-ansible-%s" % binascii.hexlify(os.urandom(12)).decode("ascii")
        head = ('--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n" % (boundary, field, filename.replace('"', "")))
        body = head.encode("utf-8") + content + ("\r\n--%s--\r\n" % boundary).encode("ascii")
        # the same bytes give the same result (Dify keys plugin packages by their hash): safe to repeat
        return self.request("POST", path, data=body, content_type="multipart/form-data; boundary=%s" % boundary,
                            safe=True)


def provider_path(provider):
    """Provider ids contain slashes that Dify routes as a path: keep them, quote the rest."""
    return quote(provider, safe="/")


def secret_matches(returned, desired):
    """Compare a secret Dify returns obfuscated with the value we would send."""
    if returned == desired:
        return True
    if not isinstance(returned, str) or "*" not in returned or not isinstance(desired, str):
        return False
    if len(desired) <= 8:
        return returned == "*" * 20
    return returned == desired[:6] + "*" * 12 + desired[-2:]


def run_module(module, func):
    """Run func(client) and turn Dify errors into fail_json; check mode on a not-set-up Dify is a change."""
    try:
        client = DifyClient.from_module(module)
        result = func(client)
    except DifyNotSetUp as err:
        if module.check_mode:
            module.exit_json(changed=True, msg="Dify has no admin account yet (would be created after "
                                               "dify_setup): %s" % err.msg)
        module.fail_json(msg="Dify is not set up yet; run dify_setup first. %s" % err.msg)
    except DifyError as err:
        module.fail_json(msg=err.msg, status=err.status, code=err.code)
    module.exit_json(**result)
