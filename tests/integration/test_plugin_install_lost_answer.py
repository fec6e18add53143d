"""dify_plugin against REAL Dify 1.15.0 when the answer to its install POST is lost.

A tiny proxy between the module and a second real Dify api (its own database: a fresh workspace) forwards
the first ``POST .../plugin/install/pkg`` to Dify -- which starts the install task in the plugin daemon --
and answers the module 502. The plugin is of a version whose runtime the daemon does not have yet, so its
install task is still running when the module looks: real Dify does not list the plugin yet, and the
module must find the task through Dify's ``GET .../plugin/tasks`` and wait for it instead of installing
again.
"""

import http.client
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from ansible.module_utils.dify_client import DifyClient
from conftest import OAC_ID, build_package, module_playbook

PL = "/console/api/workspaces/current/plugin"
ADMIN = {"admin_email": "lost-answer@example.com", "admin_password": "Lost-answer-pw-7"}
VERSION = "0.9.13"  # a version no other test installs: the daemon builds its runtime, the task runs a while
# a port of the harness's range (17610-17629) that no service of it takes; follows DIFY_TEST_PORT_OFFSET
API_PORT_FROM_API = 15
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te", "upgrade"}


class LosingProxy(object):
    """Forwards everything to ``upstream``; the first POST to ``lose`` is forwarded too, but its answer is
    replaced by a 502. ``seen``: (method, path, status, answer as parsed JSON or None) of every request."""

    def __init__(self, upstream, lose):
        self.upstream = urlsplit(upstream)
        self.lose = lose
        self.lost = []
        self.seen = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                headers = dict((k, v) for k, v in self.headers.items() if k.lower() not in HOP | {"host"})
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                path = urlsplit(self.path).path
                try:
                    parsed = json.loads(data.decode("utf-8")) if data else None
                except ValueError:
                    parsed = None
                proxy.seen.append((self.command, path, resp.status, parsed))
                if self.command == "POST" and path == proxy.lose and not proxy.lost:
                    proxy.lost.append((resp.status, parsed))
                    out = json.dumps({"code": "bad_gateway", "message": "test proxy: answer lost"}).encode()
                    self.send_response(502)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def calls(self):
        return [(m, p) for m, p, _status, _answer in self.seen]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def lost_dify(real_dify):
    port = real_dify.ports["api"] + API_PORT_FROM_API
    return real_dify.start_extra_api("lost-answer", port, "http://127.0.0.1:%d" % port)


def test_an_install_whose_answer_was_lost_waits_for_its_task_found_in_dify_tasks(
        lost_dify, real_dify, plugin_packages, ansible_run):
    run = ansible_run(module_playbook("dify_setup", dict(ADMIN, url=lost_dify)))
    assert run.rc == 0, run.failures()
    pkg = build_package(os.path.join(plugin_packages["_models"], "openai_api_compatible"), plugin_packages["_dir"],
                        version=VERSION)
    proxy = LosingProxy(lost_dify, PL + "/install/pkg")
    try:
        run = ansible_run(module_playbook("dify_plugin", dict(
            ADMIN, url=proxy.url, plugin_id=OAC_ID, package_path=pkg, poll_interval=0.5, wait_timeout=600)))
    finally:
        proxy.close()
    assert run.rc == 0, run.failures()
    (res,) = run.results("run dify_plugin")
    assert res["changed"] and res["method"] == "install" and res["plugin"]["version"] == VERSION, res

    # Dify took the POST (its answer, a task id, was lost on the way back)
    ((status, answer),) = proxy.lost
    assert status == 200 and answer["all_installed"] is False and answer["task_id"], answer
    task_id = answer["task_id"]
    assert res["task_id"] == task_id
    calls = proxy.calls()
    assert calls.count(("POST", PL + "/install/pkg")) == 1, calls
    first = calls.index(("POST", PL + "/install/pkg"))
    # the landed check: the plugin list (not listed yet), then Dify's install tasks ...
    assert calls[first + 1:first + 3] == [("GET", PL + "/list"), ("GET", PL + "/tasks")], calls
    listed, tasks = proxy.seen[first + 1][3], proxy.seen[first + 2][3]
    assert OAC_ID not in [p["plugin_id"] for p in listed["plugins"]], listed
    (mine,) = [t for t in tasks["tasks"] if t["id"] == task_id]
    assert mine["status"] in ("pending", "running"), mine
    assert [p["plugin_unique_identifier"] for p in mine["plugins"]] == [json_uid(proxy)]
    # ... then that task, polled until it ended, then the list once more -- no second install
    polls = calls[first + 3:-1]
    assert polls and set(polls) == {("GET", PL + "/tasks/" + task_id)}, calls
    assert calls[-1] == ("GET", PL + "/list")

    client = DifyClient(lost_dify, retry_delay=0.2, **ADMIN)
    plugins = client.request("GET", PL + "/list", query={"page": 1, "page_size": 256})["plugins"]
    assert [(p["plugin_id"], p["version"]) for p in plugins] == [(OAC_ID, VERSION)]
    tasks = client.request("GET", PL + "/tasks", query={"page": 1, "page_size": 256})["tasks"]
    assert [t["id"] for t in tasks if any(p["plugin_id"] == OAC_ID for p in t["plugins"])] in ([task_id], [])


def json_uid(proxy):
    """The unique identifier Dify gave the uploaded package (the answer to POST .../upload/pkg)."""
    (answer,) = [a for m, p, _s, a in proxy.seen if (m, p) == ("POST", PL + "/upload/pkg")]
    return answer["unique_identifier"]
