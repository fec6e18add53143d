"""DifyClient (plugins/module_utils/dify_client.py): auth, CSRF, refresh, retries, versions, errors.

Runs against the Dify API stand-in (tests/dify_standin, a test double) in a thread, and
against a recorded fake transport where the network itself must misbehave.
"""

import base64
import json
import socket

import pytest

from ansible.module_utils import dify_client as dc
from ansible.module_utils.dify_client import DifyClient, DifyError

ADMIN = {"admin_email": "admin@example.com", "admin_password": "Sup3rSecret"}

C = "/console/api"


def setup_admin(standin):
    client = DifyClient(standin.url, retry_delay=0.01)
    client.request("POST", C + "/setup", auth=False, body={"email": ADMIN["admin_email"], "name": "Admin",
                                                           "password": ADMIN["admin_password"]})


def client_for(standin, **kw):
    args = dict(ADMIN, retry_delay=0.01)
    args.update(kw)
    return DifyClient(standin.url, sleep=lambda s: None, **args)


def test_login_sends_base64_password_and_csrf_on_get(standin):
    setup_admin(standin)
    mark = standin.mark()
    client = client_for(standin)
    client.request("GET", C + "/apps", query={"page": 1, "limit": 100})
    reqs = standin.requests[mark:]
    assert [(r["method"], r["path"]) for r in reqs] == [
        ("GET", "/health"), ("POST", C + "/login"), ("GET", C + "/apps")]
    login = reqs[1]
    assert login["json"] == {"email": ADMIN["admin_email"], "remember_me": True,
                             "password": base64.b64encode(ADMIN["admin_password"].encode()).decode()}
    assert login["headers"]["content-type"] == "application/json"
    get = reqs[2]
    csrf = client.cookies["csrf_token"]
    assert get["headers"]["x-csrf-token"] == csrf
    cookie = get["headers"]["cookie"]
    for name in ("access_token=", "refresh_token=", "csrf_token=" + csrf):
        assert name in cookie
    assert get["query"] == {"page": "1", "limit": "100"}


def test_plain_password_before_1_11_2(standin_factory):
    standin = standin_factory(version="1.10.1")
    setup_admin(standin)
    mark = standin.mark()
    client_for(standin).login()
    login = [r for r in standin.requests[mark:] if r["path"] == C + "/login"][0]
    assert login["json"]["password"] == ADMIN["admin_password"]


def test_host_prefixed_cookies_over_plain_http(standin_factory):
    standin = standin_factory(secure_cookies=True)
    setup_admin(standin)
    client = client_for(standin)
    mark = standin.mark()
    client.request("GET", C + "/account/profile")
    assert set(client.cookies) == {"__Host-access_token", "__Host-refresh_token", "__Host-csrf_token"}
    get = standin.requests[-1]
    assert "__Host-access_token=" in get["headers"]["cookie"]
    assert get["headers"]["x-csrf-token"] == client.cookies["__Host-csrf_token"]
    assert standin.calls(mark) == [("POST", C + "/login"), ("GET", C + "/account/profile")]


def test_missing_csrf_is_rejected(standin):
    setup_admin(standin)
    client = client_for(standin)
    client.login()
    status, _, body = client.raw("GET", C + "/apps")  # cookies, but no X-CSRF-Token header
    assert status == 401
    assert body == {"code": "unauthorized", "message": "CSRF token is missing or invalid.", "status": 401}
    status, _, body = client.raw("GET", C + "/apps", headers={"X-CSRF-Token": "forged"})
    assert status == 401 and body["code"] == "unauthorized"


def test_expired_access_token_refreshes_once_and_retries(standin):
    setup_admin(standin)
    client = client_for(standin)
    client.request("GET", C + "/apps")
    old_csrf = client.cookies["csrf_token"]
    standin.state.expire_access_tokens()
    mark = standin.mark()
    client.request("GET", C + "/apps")
    assert standin.calls(mark) == [("GET", C + "/apps"), ("POST", C + "/refresh-token"), ("GET", C + "/apps")]
    refresh = standin.requests[mark + 1]
    assert "refresh_token=" in refresh["headers"]["cookie"]
    assert client.cookies["csrf_token"] != old_csrf
    assert standin.requests[-1]["headers"]["x-csrf-token"] == client.cookies["csrf_token"]
    assert standin.requests[-1]["status"] == 200


def test_relogin_when_refresh_fails_and_no_loop(standin):
    setup_admin(standin)
    client = client_for(standin)
    client.login()
    standin.state.expire_access_tokens()
    client.cookies["refresh_token"] = "bogus"
    mark = standin.mark()
    client.request("GET", C + "/apps")
    assert standin.calls(mark) == [("GET", C + "/apps"), ("POST", C + "/refresh-token"),
                                   ("POST", C + "/login"), ("GET", C + "/apps")]


def test_persistent_401_fails_after_one_retry(standin):
    setup_admin(standin)
    client = client_for(standin)
    client.login()
    standin.state.inject_fault("GET", C + "/apps", 401, count=5, code="unauthorized")
    mark = standin.mark()
    with pytest.raises(DifyError) as err:
        client.request("GET", C + "/apps")
    assert standin.calls(mark) == [("GET", C + "/apps"), ("POST", C + "/refresh-token"), ("GET", C + "/apps")]
    assert "GET /console/api/apps failed: HTTP 401 unauthorized" in str(err.value)


def test_wrong_password_then_lockout_message(standin):
    setup_admin(standin)
    bad = client_for(standin, admin_password="Wrong1234")
    for _ in range(6):  # Dify locks once more than 5 failed: the 6th wrong password is still a 401
        with pytest.raises(DifyError) as err:
            bad.login()
        assert "HTTP 401 authentication_failed: Invalid email or password." in str(err.value)
    mark = standin.mark()
    with pytest.raises(dc.DifyLoginLocked) as err:
        client_for(standin).login()  # even the right password is locked out now
    assert "HTTP 429 email_code_login_limit" in str(err.value)
    assert "more than 5 failed attempts" in str(err.value)
    assert standin.calls(mark) == [("POST", C + "/login")]  # 429 on login is not retried


@pytest.mark.parametrize("version,needle", [
    ("0.15.3", "0.x returns tokens in the login body"),
    ("2.0.0", "major version 2 is unknown"),
    ("1.8.0", "need >= 1.9.2"),
])
def test_unsupported_versions_refused_before_login(standin_factory, version, needle):
    standin = standin_factory(version=version)
    client = client_for(standin)
    with pytest.raises(dc.DifyUnsupportedVersion) as err:
        client.request("GET", C + "/apps")
    assert needle in str(err.value)
    assert standin.calls() == []


def test_zero_15_login_shape_refused_without_health():
    """Behind a proxy that hides /health, the 0.15 login body still gives the version away."""
    fake = FakeOpener([(404, {}, b"not found"),
                       (200, {}, json.dumps({"result": "success", "data": {"access_token": "a",
                                                                           "refresh_token": "r"}}))])
    client = DifyClient("http://dify.test", sleep=lambda s: None, opener=fake, **ADMIN)
    with pytest.raises(dc.DifyUnsupportedVersion) as err:
        client.login()
    assert "0.15.x" in str(err.value)


def test_retries_on_503_are_bounded(standin):
    setup_admin(standin)
    slept = []
    client = DifyClient(standin.url, retries=2, retry_delay=0.5, sleep=slept.append, **ADMIN)
    client.login()
    standin.state.inject_fault("GET", C + "/apps", 503, count=10)
    mark = standin.mark()
    with pytest.raises(DifyError) as err:
        client.request("GET", C + "/apps")
    assert standin.calls(mark) == [("GET", C + "/apps")] * 3
    assert slept == [0.5, 1.0]
    assert "HTTP 503 internal_server_error: stand-in injected fault" in str(err.value)


def test_retry_then_success(standin):
    setup_admin(standin)
    client = client_for(standin, retries=3)
    client.login()
    standin.state.inject_fault("GET", C + "/apps", 429, count=2)
    mark = standin.mark()
    assert client.request("GET", C + "/apps")["total"] == 0
    assert [r["status"] for r in standin.requests[mark:]] == [429, 429, 200]


class FakeResponse(object):
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def getcode(self):
        return self.status

    def read(self):
        return self.body.encode() if isinstance(self.body, str) else self.body


class FakeHeaders(dict):
    def get_all(self, name):
        value = self.get(name)
        return value if isinstance(value, list) or value is None else [value]


class FakeOpener(object):
    """Recorded transport: returns scripted answers, records every call's arguments."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def __call__(self, url, **kw):
        self.calls.append(dict(kw, url=url))
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        status, headers, body = item
        resp = FakeResponse(status, FakeHeaders(headers), body)
        if status >= 400:
            from urllib.error import HTTPError
            import io
            raise HTTPError(url, status, "err", FakeHeaders(headers), io.BytesIO(resp.read()))
        return resp


def test_connection_errors_bounded_with_timeout_and_backoff():
    from urllib.error import URLError
    fake = FakeOpener([URLError("refused"), socket.timeout("timed out"), URLError("refused")])
    slept = []
    client = DifyClient("http://dify.test:1", retries=2, retry_delay=1.0, timeout=7, sleep=slept.append,
                        opener=fake, **ADMIN)
    with pytest.raises(DifyError) as err:
        client.setup_status()
    assert len(fake.calls) == 3 and slept == [1.0, 2.0]
    assert all(c["timeout"] == 7 and c["method"] == "GET" and c["url"] == "http://dify.test:1/console/api/setup"
               for c in fake.calls)
    assert "did not answer after 3 attempt(s)" in str(err.value)


def test_retry_after_header_is_honoured():
    fake = FakeOpener([(503, {"Retry-After": "5"}, "{}"), (200, {}, '{"step": "finished"}')])
    slept = []
    client = DifyClient("http://dify.test", retry_delay=0.1, sleep=slept.append, opener=fake)
    assert client.setup_status() == "finished"
    assert slept == [5]


def test_admin_api_key_mode_headers_no_login(standin_factory):
    standin = standin_factory(admin_api_key="adm-key-123")
    setup_admin(standin)
    tenant = standin.state.tenant()["id"]
    client = DifyClient(standin.url, admin_api_key="adm-key-123", workspace_id=tenant, sleep=lambda s: None)
    mark = standin.mark()
    client.request("GET", C + "/apps")
    assert standin.calls(mark) == [("GET", C + "/apps")]
    req = standin.requests[-1]
    assert req["headers"]["authorization"] == "Bearer adm-key-123"
    assert req["headers"]["x-workspace-id"] == tenant
    assert "x-csrf-token" not in req["headers"] and "cookie" not in req["headers"]
    bad = DifyClient(standin.url, admin_api_key="adm-key-123", workspace_id="other", sleep=lambda s: None)
    with pytest.raises(DifyError) as err:
        bad.request("GET", C + "/apps")
    assert "HTTP 401 unauthorized: Invalid workspace ID." in str(err.value)


def test_error_message_names_status_code_and_message(standin):
    setup_admin(standin)
    with pytest.raises(DifyError) as err:
        client_for(standin).request("GET", C + "/apps/00000000-0000-0000-0000-000000000000")
    assert str(err.value) == ("GET /console/api/apps/00000000-0000-0000-0000-000000000000 failed: "
                              "HTTP 404 app_not_found: App not found.")
    assert err.value.status == 404 and err.value.code == "app_not_found"


def test_not_setup_is_reported(standin):
    with pytest.raises(dc.DifyNotSetUp) as err:
        client_for(standin).login()
    assert "HTTP 401 not_setup" in str(err.value)


def test_secret_matches_obfuscation():
    assert dc.secret_matches("sk-abc************kl", "sk-abcdefghijkl")
    assert not dc.secret_matches("sk-abc************kl", "sk-abcdefghijXX")
    assert dc.secret_matches("*" * 20, "short")
    assert dc.provider_path("langgenius/openai_api_compatible/openai_api_compatible") == \
        "langgenius/openai_api_compatible/openai_api_compatible"


def test_pinned_version_skips_health_and_picks_password_encoding(standin_factory):
    standin = standin_factory(version="1.10.1")
    setup_admin(standin)
    mark = standin.mark()
    client_for(standin, dify_version="1.10.1").login()
    assert [(r["method"], r["path"]) for r in standin.requests[mark:]] == [("POST", C + "/login")]
    assert standin.requests[-1]["json"]["password"] == ADMIN["admin_password"]
    with pytest.raises(dc.DifyUnsupportedVersion):
        DifyClient(standin.url, dify_version="0.15.3", **ADMIN)
