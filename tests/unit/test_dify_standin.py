"""The Dify API stand-in (tests/dify_standin, a test double) is strict where dify-api.md says Dify is."""

import base64
import json
import time
import urllib.request
from urllib.error import HTTPError

import pytest

C = "/console/api"


def call(url, method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
            return resp.status, resp.headers, json.loads(raw) if raw else None
    except HTTPError as err:
        raw = err.read()
        return err.code, err.headers, json.loads(raw) if raw else None


def setup(url, password="Sup3rSecret"):
    status, _, body = call(url, "POST", C + "/setup", {"email": "admin@example.com", "name": "Admin",
                                                       "password": password})
    assert status == 201, body


def login(url, password="Sup3rSecret", encode=True):
    pw = base64.b64encode(password.encode()).decode() if encode else password
    return call(url, "POST", C + "/login", {"email": "admin@example.com", "password": pw})


def cookies_of(headers):
    out = {}
    for raw in headers.get_all("Set-Cookie") or []:
        name, _, rest = raw.partition("=")
        out[name] = rest.split(";")[0]
    return out


def auth_headers(cookies, csrf=True):
    hdrs = {"Cookie": "; ".join("%s=%s" % kv for kv in cookies.items())}
    if csrf:
        hdrs["X-CSRF-Token"] = cookies.get("csrf_token") or cookies.get("__Host-csrf_token")
    return hdrs


def test_health_and_setup_flow(standin):
    status, _, body = call(standin.url, "GET", "/health")
    assert status == 200 and body["version"] == "1.15.0"
    assert call(standin.url, "GET", C + "/setup")[2] == {"step": "not_started"}
    status, _, body = call(standin.url, "POST", C + "/setup", {"email": "bad", "name": "A", "password": "abc12345"})
    assert status == 400 and body["code"] == "invalid_param" and body["status"] == 400
    status, _, body = call(standin.url, "POST", C + "/setup", {"email": "a@b.io", "name": "A", "password": "abcdefgh"})
    assert status == 400 and body["message"].startswith("password")
    setup(standin.url)
    status, _, body = call(standin.url, "POST", C + "/setup", {"email": "a@b.io", "name": "A", "password": "abcdefg1"})
    assert (status, body["error"]["type"]) == (403, "authorization_error")  # Dify 1.15.0's fastopenapi shape
    assert call(standin.url, "GET", C + "/setup")[2]["step"] == "finished"


def test_login_cookies_and_csrf_on_get(standin):
    setup(standin.url)
    status, headers, body = login(standin.url)
    assert status == 200 and body == {"result": "success"}  # no token in the body
    raw = headers.get_all("Set-Cookie")
    assert any(c.startswith("access_token=") and "HttpOnly" in c for c in raw)
    assert any(c.startswith("refresh_token=") and "HttpOnly" in c for c in raw)
    assert any(c.startswith("csrf_token=") and "HttpOnly" not in c for c in raw)
    cookies = cookies_of(headers)
    assert call(standin.url, "GET", C + "/apps", headers=auth_headers(cookies))[0] == 200
    status, _, body = call(standin.url, "GET", C + "/apps", headers=auth_headers(cookies, csrf=False))
    assert status == 401 and body["message"] == "CSRF token is missing or invalid."
    # Bearer access token: CSRF is still checked
    bearer = {"Authorization": "Bearer " + cookies["access_token"]}
    assert call(standin.url, "GET", C + "/apps", headers=bearer)[0] == 401
    bearer["X-CSRF-Token"] = cookies["csrf_token"]
    assert call(standin.url, "GET", C + "/apps", headers=bearer)[0] == 200


def test_plain_password_refused_on_1_15(standin):
    setup(standin.url)
    status, _, body = login(standin.url, encode=False)
    assert (status, body["code"]) == (401, "authentication_failed")


def test_secure_cookie_names(standin_factory):
    s = standin_factory(secure_cookies=True)
    setup(s.url)
    _, headers, _ = login(s.url)
    raw = headers.get_all("Set-Cookie")
    assert sorted(c.split("=")[0] for c in raw) == ["__Host-access_token", "__Host-csrf_token",
                                                    "__Host-refresh_token"]
    assert all("Secure" in c for c in raw)


def test_lockout_after_more_than_five_failures(standin):
    setup(standin.url)
    for _ in range(6):  # as Dify 1.15.0 (count > 5): the 6th failure is still a 401
        assert login(standin.url, password="Wrong12345")[0] == 401
    status, _, body = login(standin.url)
    assert status == 429
    assert body == {"code": "email_code_login_limit", "status": 429,
                    "message": "Too many incorrect password attempts. Please try again later."}


def test_refresh_token_rotation(standin):
    setup(standin.url)
    cookies = cookies_of(login(standin.url)[1])
    status, headers, _ = call(standin.url, "POST", C + "/refresh-token",
                              headers={"Cookie": "refresh_token=" + cookies["refresh_token"]})
    assert status == 200 and cookies_of(headers)["access_token"] != cookies["access_token"]
    status, _, body = call(standin.url, "POST", C + "/refresh-token",
                           headers={"Cookie": "refresh_token=" + cookies["refresh_token"]})
    assert status == 401 and body["result"] == "fail"  # one use only


def test_plugin_task_advances(standin_factory):
    s = standin_factory(task_seconds=0.6)
    setup(s.url)
    hdrs = auth_headers(cookies_of(login(s.url)[1]))
    latest = call(s.url, "POST", C + "/workspaces/current/plugin/list/latest-versions",
                  {"plugin_ids": ["langgenius/openai_api_compatible", "nobody/nothing"]}, hdrs)[2]["versions"]
    assert latest["nobody/nothing"] is None
    uid = latest["langgenius/openai_api_compatible"]["unique_identifier"]
    body = call(s.url, "POST", C + "/workspaces/current/plugin/install/marketplace",
                {"plugin_unique_identifiers": [uid]}, hdrs)[2]
    assert body["all_installed"] is False
    seen, entries = [], []
    deadline = time.time() + 5
    while time.time() < deadline:
        task = call(s.url, "GET", C + "/workspaces/current/plugin/tasks/" + body["task_id"], headers=hdrs)[2]["task"]
        if not seen or seen[-1] != task["status"]:
            seen.append(task["status"])
        if not entries or entries[-1] != task["plugins"][0]["status"]:
            entries.append(task["plugins"][0]["status"])
        if task["status"] == "success":
            break
        time.sleep(0.05)
    # as the plugin daemon: the task starts running; each plugin in it goes pending -> running -> success
    assert seen == ["running", "success"]
    assert entries == ["pending", "running", "success"]
    plugins = call(s.url, "GET", C + "/workspaces/current/plugin/list?page=1&page_size=256", headers=hdrs)[2]
    assert [p["plugin_id"] for p in plugins["plugins"]] == ["langgenius/openai_api_compatible"]


def test_datasets_names_documents_indexing(standin_factory):
    s = standin_factory(index_seconds=0.5)
    setup(s.url)
    hdrs = auth_headers(cookies_of(login(s.url)[1]))
    key = call(s.url, "POST", C + "/datasets/api-keys", headers=hdrs)[2]["token"]
    svc = {"Authorization": "Bearer " + key}
    assert call(s.url, "GET", "/v1/datasets", headers={"Authorization": "Bearer dataset-nope"})[0] == 401
    status, _, body = call(s.url, "POST", "/v1/datasets", {"name": "x" * 41}, svc)
    assert (status, body["code"]) == (400, "invalid_param") and "40" in body["message"]
    status, _, ds = call(s.url, "POST", "/v1/datasets", {"name": "x" * 40}, svc)
    assert status == 200
    status, _, body = call(s.url, "POST", "/v1/datasets", {"name": "x" * 40}, svc)
    assert (status, body["code"]) == (409, "dataset_name_duplicate")
    doc = {"name": "a.md", "text": "alpha beta gamma", "indexing_technique": "economy"}
    status, _, body = call(s.url, "POST", "/v1/datasets/%s/document/create-by-text" % ds["id"], doc, svc)
    assert status == 400 and "process_rule" in body["message"]
    doc["process_rule"] = {"mode": "automatic"}
    status, _, body = call(s.url, "POST", "/v1/datasets/%s/document/create-by-text" % ds["id"], doc, svc)
    assert status == 200 and body["document"]["indexing_status"] == "waiting"
    status_path = "/v1/datasets/%s/documents/%s/indexing-status" % (ds["id"], body["batch"])
    seen = []
    deadline = time.time() + 5
    while time.time() < deadline:
        st = call(s.url, "GET", status_path, headers=svc)[2]["data"][0]["indexing_status"]
        if not seen or seen[-1] != st:
            seen.append(st)
        if st == "completed":
            break
        time.sleep(0.02)
    assert seen[0] in ("waiting", "parsing") and seen[-1] == "completed" and len(seen) >= 3
    # same name again re-indexes instead of duplicating
    call(s.url, "POST", "/v1/datasets/%s/document/create-by-text" % ds["id"], doc, svc)
    docs = call(s.url, "GET", "/v1/datasets/%s/documents?keyword=a.md" % ds["id"], headers=svc)[2]
    assert docs["total"] == 1
    status, _, body = call(s.url, "DELETE", "/v1/datasets/%s/documents/%s" % (ds["id"], docs["data"][0]["id"]),
                           headers=svc)
    assert (status, body["code"]) == (400, "document_indexing")


def test_unknown_route_and_method(standin):
    assert call(standin.url, "GET", "/console/api/nothing")[0] == 404
    status, _, body = call(standin.url, "DELETE", C + "/setup")
    assert status == 405 and body["code"] == "method_not_allowed"


def test_fail_health_and_web_mode(standin_factory):
    broken = standin_factory(fail_health=True, version="1.16.1")
    assert call(broken.url, "GET", "/health")[0] == 503
    assert call(broken.url, "GET", C + "/setup")[0] == 502
    web = standin_factory(mode="web")
    with urllib.request.urlopen(web.url + "/apps", timeout=5) as resp:
        page = resp.read().decode()
    assert resp.headers["Content-Type"].startswith("text/html") and "stand-in" in page


def test_cli_help_names_the_flags():
    import subprocess
    import sys
    import os
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), ".."))
    out = subprocess.run([sys.executable, "-m", "dify_standin", "--help"], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 0
    for flag in ("--listen", "--dsn", "--version", "--mode", "--fail-health", "--secure-cookies"):
        assert flag in out.stdout


@pytest.mark.parametrize("version", ["0.15.3"])
def test_zero_15_login_shape(standin_factory, version):
    s = standin_factory(version=version)
    setup(s.url)
    status, headers, body = login(s.url, encode=False)
    assert status == 200 and "access_token" in body["data"] and not headers.get_all("Set-Cookie")


def test_check_model_endpoints_calls_the_model_server(standin_factory, run_module):
    """With check_model_endpoints the stand-in validates credentials by calling the server, like Dify."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = []

    class FakeOpenAI(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, json.loads(body)))
            payload = b'{"choices": [{"message": {"role": "assistant", "content": "pong"}}]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    fake = HTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=fake.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        s = standin_factory(check_model_endpoints=True)
        run_module("dify_setup", s.args())
        run_module("dify_plugin", s.args(plugin_id="langgenius/openai_api_compatible", poll_interval=0.05))
        provider = "langgenius/openai_api_compatible/openai_api_compatible"
        good = "http://127.0.0.1:%d/v1" % fake.server_address[1]
        res = run_module("dify_model", s.args(provider=provider, model="m", model_type="llm",
                                              credentials={"endpoint_url": good, "endpoint_model_name": "m",
                                                           "context_size": "2048"}))
        assert res["changed"], res
        assert seen[0][0] == "/v1/chat/completions" and seen[0][1]["model"] == "m"
        res = run_module("dify_model", s.args(provider=provider, model="m2", model_type="llm",
                                              credentials={"endpoint_url": "http://127.0.0.1:1/v1", "context_size": "2048"}))
        assert res["failed"] and "HTTP 400 invalid_param: Credentials validation failed" in res["msg"]
    finally:
        fake.shutdown()
        fake.server_close()
