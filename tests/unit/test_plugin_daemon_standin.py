"""Unit tests of the plugin daemon stand-in (tests/plugin_daemon_standin): its protocol pieces, without
network and without the real plugins (a fake plugin process speaks the SDK's stdio protocol)."""

import base64
import hashlib
import http.client
import io
import json
import os
import sys
import textwrap
import threading
import time
import zipfile

import pytest

from plugin_daemon_standin import difypkg, dispatch, envs, errors, tiktoken_cache
from plugin_daemon_standin.core import Daemon
from plugin_daemon_standin.package import Package, PackageError, _go_match, describe, parse_identifier
from plugin_daemon_standin.runtime import PluginDead, PluginRuntime
from plugin_daemon_standin.server import make_server, parse_multipart

MANIFEST = """\
version: 0.1.0
type: plugin
author: "tester"
name: "fake_provider"
label:
  en_US: Fake provider
description:
  en_US: A provider for the tests.
  zh_Hans: 测试
icon: icon.svg
created_at: "2024-07-12T08:03:44.658609186Z"
resource:
  memory: 1048576
  permission:
    model:
      enabled: true
      llm: true
plugins:
  models:
    - "provider/fake.yaml"
meta:
  version: 0.0.1
  arch: [amd64]
  runner:
    language: "python"
    version: "3.12"
    entrypoint: "main"
"""
PROVIDER = """\
provider: fake
label:
  en_US: Fake
icon_small:
  en_US: icon.svg
supported_model_types: [llm, text-embedding]
configurate_methods: [predefined-model, customizable-model]
model_credential_schema:
  model:
    label:
      en_US: Model Name
  credential_form_schemas:
    - variable: endpoint_url
      label:
        en_US: URL
      type: text-input
      required: true
    - variable: context_size
      label:
        en_US: Context
      type: text-input
      default: 4096
      options:
        - value: a
          label:
            en_US: A
models:
  llm:
    predefined:
      - "models/llm/*.yaml"
extra:
  python:
    provider_source: provider/fake.py
"""
MODEL = """\
model: fake-chat
model_type: llm
model_properties:
  mode: chat
  context_size: 4096
parameter_rules:
  - name: temperature
    use_template: temperature
  - name: seed
    type: int
pricing:
  input: "0.001"
  unit: "0.000001"
  currency: USD
"""


def write_tree(root, files):
    for rel, content in files.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(content.encode() if isinstance(content, str) else content)


@pytest.fixture
def plugin_dir(tmp_path):
    root = str(tmp_path / "fake_provider")
    write_tree(root, {
        "manifest.yaml": MANIFEST, "provider/fake.yaml": PROVIDER, "provider/fake.py": "# provider\n",
        "models/llm/chat.yaml": MODEL, "models/llm/llm.py": "# model\n", "models/llm/_position.yaml": "- fake-chat\n",
        "_assets/icon.svg": "<svg/>", "README.md": "# Fake\n", "readme/README_ja_JP.md": "# フェイク\n",
        "requirements.txt": "dify_plugin==0.9.0\n", "main.py": "print('hi')\n",
        ".difyignore": ".venv/\n__pycache__/\n*.py[cod]\n.env\n/build\ndocs/**/*.md\n!keep.pyc\n",
        ".env": "SECRET=1\n", "keep.pyc": "x", "sub/.env": "SECRET=2\n", "build/out.txt": "x", "sub/build/in.txt": "y",
        "docs/a/b.md": "x", "docs/a/b.txt": "y", ".venv/lib/x.py": "x", "models/__pycache__/m.cpython-312.pyc": "x",
    })
    return root


def go_checksum(data):
    zf = zipfile.ZipFile(io.BytesIO(data))
    items = sorted((i.filename, hashlib.sha256(zf.read(i)).digest()) for i in zf.infolist())
    blob = b"".join(hashlib.sha256(name.encode()).digest() + digest for name, digest in items)
    return hashlib.sha256(blob).hexdigest()


# ------------------------------------------------------------------------------------------------ packages
def test_difypkg_honours_difyignore_the_way_the_packager_does(plugin_dir):
    files = difypkg.collect_files(plugin_dir)
    assert ".env" not in files and "sub/.env" not in files          # a bare name matches at any depth
    assert "keep.pyc" not in files                                  # a !pattern never re-includes
    assert "build/out.txt" not in files and "sub/build/in.txt" in files  # /build is anchored
    assert "docs/a/b.md" not in files and "docs/a/b.txt" in files
    assert not [f for f in files if f.startswith(".venv/") or "__pycache__" in f]
    assert {"manifest.yaml", ".difyignore", "_assets/icon.svg", "models/llm/chat.yaml", "main.py"} <= set(files)
    assert files == sorted(files)


def test_package_layout_checksum_and_identifier(plugin_dir, tmp_path):
    out = str(tmp_path / "fake.difypkg")
    data, uid = difypkg.build(plugin_dir, out=out)
    with open(out, "rb") as fh:
        assert fh.read() == data
    zf = zipfile.ZipFile(io.BytesIO(data))
    names = [i.filename for i in zf.infolist()]
    assert names == sorted(names) and not [n for n in names if n.endswith("/")]  # files only, sorted
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
    assert uid == "tester/fake_provider:0.1.0@" + go_checksum(data)
    assert parse_identifier(uid) == ("tester/fake_provider", "0.1.0", go_checksum(data))
    again, uid2 = difypkg.build(plugin_dir)
    assert again == data and uid2 == uid                            # deterministic
    _, uid3 = difypkg.build(plugin_dir, set_version="0.1.1")
    assert uid3.startswith("tester/fake_provider:0.1.1@") and uid3 != uid


def test_requirements_are_exported_from_uv_lock_when_missing(plugin_dir, monkeypatch):
    os.remove(os.path.join(plugin_dir, "requirements.txt"))
    write_tree(plugin_dir, {"pyproject.toml": "[project]\nname='x'\n", "uv.lock": "version = 1\n"})
    monkeypatch.setattr(difypkg, "export_requirements", lambda root, uv=None: b"dify-plugin==0.9.0\n")
    data, _ = difypkg.build(plugin_dir)
    assert zipfile.ZipFile(io.BytesIO(data)).read("requirements.txt") == b"dify-plugin==0.9.0\n"


def test_declaration_is_encoded_like_the_daemon(plugin_dir):
    data, uid = difypkg.build(plugin_dir)
    got_uid, decl, assets = describe(Package(data))
    assert got_uid == uid
    assert decl["verified"] is False and decl["tags"] == [] and decl["icon_dark"] == ""
    assert decl["plugins"] == {"tools": None, "models": ["provider/fake.yaml"], "endpoints": None,
                               "agent_strategies": None, "datasources": None, "triggers": None}
    assert decl["resource"]["permission"]["model"] == {"enabled": True, "llm": True, "text_embedding": False,
                                                       "rerank": False, "tts": False, "speech2text": False,
                                                       "moderation": False}
    assert decl["meta"]["minimum_dify_version"] is None
    assert decl["created_at"] == "2024-07-12T08:03:44.658609186Z"
    model = decl["model"]
    assert model["description"] == decl["description"]             # taken from the plugin when absent
    assert model["icon_large"] is None and model["help"] is None and model["background"] is None
    icon_id = hashlib.sha256(b"<svg/>" + b"icon.svg").hexdigest() + ".svg"
    assert decl["icon"] == icon_id and model["icon_small"] == {"en_US": icon_id}
    assert assets == {icon_id: b"<svg/>"}
    schemas = model["model_credential_schema"]["credential_form_schemas"]
    assert schemas[0] == {"variable": "endpoint_url", "label": {"en_US": "URL"}, "type": "text-input",
                          "required": True, "default": None, "options": [], "placeholder": None, "max_length": 0,
                          "show_on": []}
    assert schemas[1]["default"] == "4096" and schemas[1]["options"][0]["show_on"] == []
    assert model["provider_credential_schema"] is None
    [chat] = model["models"]                                          # the glob, not the _position file
    assert chat["fetch_from"] == "predefined-model" and chat["label"] == {"en_US": "fake-chat"}
    assert chat["features"] is None and chat["deprecated"] is False
    temperature, seed = chat["parameter_rules"]
    assert temperature["type"] == "float" and temperature["max"] == 1.0 and temperature["label"]["en_US"]
    assert seed["label"] == {"en_US": "seed"} and seed["options"] == []
    assert chat["pricing"] == {"input": "0.001", "output": None, "unit": "0.000001", "currency": "USD"}
    pkg = Package(data)
    assert pkg.readmes() == {"en_US": "# Fake\n", "ja_JP": "# フェイク\n"}


@pytest.mark.parametrize("change,message,at_upload", [
    ({"manifest.yaml": MANIFEST.replace('name: "fake_provider"', 'name: "Fake Provider"')}, "plugin name", False),
    ({"manifest.yaml": MANIFEST.replace("version: 0.1.0", "version: one")}, "version", False),
    ({"provider/fake.yaml": PROVIDER.replace("[llm, text-embedding]", "[llm, chat]")}, "supported model type", False),
    ({"manifest.yaml": MANIFEST.replace("icon: icon.svg", "icon: missing.svg")}, "file not found: missing.svg", True),
])
def test_bad_packages_are_refused(plugin_dir, change, message, at_upload):
    write_tree(plugin_dir, change)
    with pytest.raises(PackageError, match=message):
        if at_upload:  # assets are checked when the package is uploaded
            describe(Package(difypkg.build(plugin_dir)[0]))
        else:
            difypkg.build(plugin_dir)


def test_go_glob_does_not_cross_directories():
    assert _go_match("models/llm/*.yaml", "models/llm/a.yaml")
    assert not _go_match("models/llm/*.yaml", "models/llm/sub/a.yaml")
    assert _go_match("models/[a-l]lm/?.yaml", "models/llm/a.yaml")
    assert not _go_match("models/[!l]lm/?.yaml", "models/llm/a.yaml")


# ------------------------------------------------------------------------------------------------ dispatch
def test_dispatch_requests_get_go_zero_values_and_lose_unknown_fields():
    body = {"data": {"provider": "p", "model": "m", "model_type": "rerank", "credentials": {"k": "v"},
                     "query": "q", "docs": ["a"], "score_threshold": None, "top_n": None, "extra": 1}}
    got = dispatch.shape_request("rerank/invoke", body)
    assert got == {"user_id": "", "type": "model", "action": "invoke_rerank", "provider": "p", "model": "m",
                   "credentials": {"k": "v"}, "query": "q", "docs": ["a"], "score_threshold": 0, "top_n": 0,
                   "model_type": "rerank"}
    llm = dispatch.shape_request("llm/invoke", {"user_id": "u", "data": {
        "provider": "p", "model": "m", "model_type": "llm", "credentials": {}, "prompt_messages": [],
        "credential_type": "api-key"}})
    assert llm["user_id"] == "u" and llm["credential_type"] == "api-key" and llm["stream"] is False
    assert llm["tools"] is None and llm["stop"] is None and llm["json_schema"] is None
    assert "credential_type" not in dispatch.shape_request("model/validate_provider_credentials", {
        "data": {"provider": "p", "credentials": {}}})


@pytest.mark.parametrize("route,data,message", [
    ("rerank/invoke", {"provider": "p", "model": "m", "model_type": "llm", "query": "q", "docs": []}, "'eq' tag"),
    ("text_embedding/invoke", {"provider": "p", "model": "m", "model_type": "text-embedding", "texts": ["a"]},
     "input_type"),
    ("model/validate_model_credentials", {"provider": "p", "model": "m", "model_type": "chat"}, "model_type"),
    ("rerank/invoke", {"provider": "p", "model": "m", "model_type": "rerank", "query": "q", "docs": [],
                       "top_n": 1.5}, "cannot unmarshal"),
])
def test_dispatch_requests_that_do_not_bind_are_http_400(route, data, message):
    with pytest.raises(errors.DaemonError) as exc:
        dispatch.shape_request(route, {"data": data})
    assert exc.value.http_status == 400 and exc.value.code == -400 and message in exc.value.message


def test_plugin_errors_nest_the_way_dify_unwraps_them():
    """dify-api: code -500 -> json(message) -> error_type PluginInvokeError -> json(its message) -> the type."""
    resp = errors.invoke_error(errors.plugin_error_text(
        {"error_type": "CredentialsValidateFailedError", "message": "bad key", "args": {}})).response()
    assert resp["code"] == -500 and resp["data"] is None
    outer = json.loads(resp["message"])
    assert outer["error_type"] == "PluginInvokeError"
    inner = json.loads(outer["message"])
    assert inner == {"args": {}, "error_type": "CredentialsValidateFailedError", "message": "bad key"}
    assert errors.success([1]) == {"code": 0, "message": "success", "data": [1]}


def test_multipart_bodies_are_read():
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"verify_signature\"\r\n\r\nfalse\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"dify_pkg\"; filename=\"dify_pkg\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\nPK\x03\x04\r\n\r\nbinary\r\n--XyZ--\r\n")
    form = parse_multipart("multipart/form-data; boundary=XyZ", body)
    assert form["verify_signature"] == (None, b"false")
    assert form["dify_pkg"] == ("dify_pkg", b"PK\x03\x04\r\n\r\nbinary")


# ------------------------------------------------------------------------------------------------ plugin process
FAKE_PLUGIN = textwrap.dedent("""\
    import json, os, sys, threading, time
    lock = threading.Lock()
    def w(obj):
        with lock:
            sys.stdout.write(json.dumps(obj) + "\\n\\n")
            sys.stdout.flush()
    w({"version": "0.0.1", "type": "plugin"})           # the SDK's first line: its manifest
    def beat():
        while True:
            w({"event": "heartbeat", "session_id": None, "data": {}})
            time.sleep(0.2)
    if os.environ.get("FAKE_NO_HEARTBEAT") != "1":
        threading.Thread(target=beat, daemon=True).start()
    def handle(req):
        sid, data = req["session_id"], req["data"]
        def s(kind, payload):
            w({"event": "session", "session_id": sid, "data": {"type": kind, "data": payload}})
        action = data["action"]
        if action == "invoke_llm":
            for i in range(3):
                s("stream", {"model": data["model"], "delta": {"index": i, "message": {"content": str(i)}}})
                time.sleep(0.4)
        elif action == "invoke_text_embedding":
            time.sleep(0.05 * (len(data["texts"][0]) % 5))
            s("stream", {"model": data["model"], "embeddings": [[float(len(t))] for t in data["texts"]],
                         "echo": data["texts"], "env": os.environ.get("INSTALL_METHOD")})
        elif action == "validate_model_credentials":
            w({"event": "log", "data": {"level": "INFO", "message": "validating", "timestamp": 0}})
            s("error", {"error_type": "CredentialsValidateFailedError", "message": "bad key", "args": {}})
        elif action == "get_llm_num_tokens":
            print("stray print from plugin code")
            sys.stdout.flush()
            os._exit(3)
        s("end", {})
    for line in sys.stdin:
        if line.strip():
            threading.Thread(target=handle, args=(json.loads(line),)).start()
    """)
UID = "tester/fake_provider:0.1.0@" + "a" * 64


@pytest.fixture
def fake_plugin(tmp_path):
    workdir = str(tmp_path / "plugin")
    write_tree(workdir, {"fake_plugin.py": FAKE_PLUGIN})
    started = []

    def start(timeout=20, **env):
        rt = PluginRuntime(UID, workdir, sys.executable, entrypoint="fake_plugin", env=env)
        started.append(rt)
        return rt.start(timeout=timeout)

    yield start
    for rt in started:
        rt.stop()


def _relay(rt, route, data, emitted=None):
    emitted = [] if emitted is None else emitted
    request = dispatch.shape_request(route, {"user_id": "u", "data": data})
    outcome = dispatch.relay(rt, route, request, {}, lambda obj: emitted.append((time.time(), obj)) or True,
                             lambda: False, timeout=20)
    return outcome, [obj for _, obj in emitted], emitted


EMBED = {"provider": "p", "model": "m", "model_type": "text-embedding", "credentials": {}, "input_type": "document"}


def test_chunks_are_relayed_as_the_plugin_writes_them(fake_plugin):
    rt = fake_plugin()
    assert rt.ready_seconds < 10 and rt.manifest == {"version": "0.0.1", "type": "plugin"}
    outcome, objs, emitted = _relay(rt, "llm/invoke", {"provider": "p", "model": "m", "model_type": "llm",
                                                       "credentials": {}})
    assert outcome == "success" and len(objs) == 3
    assert [o["data"]["delta"]["message"]["content"] for o in objs] == ["0", "1", "2"]
    assert all(o["code"] == 0 and o["message"] == "success" and o["data"]["prompt_messages"] == [] for o in objs)
    gaps = [b[0] - a[0] for a, b in zip(emitted, emitted[1:], strict=False)]
    assert min(gaps) > 0.25, gaps  # not buffered: each chunk left when the plugin wrote it


def test_concurrent_sessions_share_one_process_without_mixing(fake_plugin):
    rt = fake_plugin()
    results = {}

    def one(i):
        text = "text %d " % i + "x" * i
        results[i] = (text, _relay(rt, "text_embedding/invoke", dict(EMBED, texts=[text]))[1])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 10
    for text, objs in results.values():
        assert objs[0]["data"]["echo"] == [text] and objs[0]["data"]["env"] == "local"
    assert rt.open_sessions() == 0


def test_a_plugin_error_ends_the_stream_as_plugin_invoke_error(fake_plugin):
    rt = fake_plugin()
    outcome, objs, _ = _relay(rt, "model/validate_model_credentials", {
        "provider": "p", "model": "m", "model_type": "llm", "credentials": {}})
    assert outcome == "error"
    inner = json.loads(json.loads(objs[-1]["message"])["message"])
    assert inner["error_type"] == "CredentialsValidateFailedError"


def test_a_dying_plugin_is_reported_and_marked_dead(fake_plugin):
    rt = fake_plugin()
    outcome, objs, _ = _relay(rt, "llm/num_tokens", {"provider": "p", "model": "m", "model_type": "llm",
                                                     "credentials": {}})
    assert outcome == "error"
    err = json.loads(objs[-1]["message"])
    assert err["error_type"] == "PluginDaemonInternalServerError"
    assert UID in err["message"] and "exited with code 3" in err["message"]
    assert not rt.alive()
    with pytest.raises(PluginDead):
        rt.open_session()


def test_a_plugin_without_heartbeat_does_not_start(fake_plugin):
    with pytest.raises(PluginDead, match="no heartbeat received"):
        fake_plugin(timeout=1.5, FAKE_NO_HEARTBEAT="1")


# ------------------------------------------------------------------------------------------------ daemon state
@pytest.fixture
def daemon(tmp_path, monkeypatch):
    d = Daemon(str(tmp_path / "state"), str(tmp_path / "cache"), force_verifying_signature=False)
    launched = []

    def fake_install_runtime(uid, progress):
        progress("installing")
        time.sleep(0.2)
        launched.append(uid)

    monkeypatch.setattr(d, "_install_runtime", fake_install_runtime)
    monkeypatch.setattr(d, "stop_runtime", lambda uid: launched.append("stop " + uid))
    d.launched = launched
    yield d
    d.stopped = True


def _wait_task(d, tenant, task_id):
    seen = []
    for _ in range(100):
        task = d.task(tenant, task_id)
        seen.append((task["status"], task["plugins"][0]["status"]))
        if task["status"] in ("success", "failed"):
            return task, seen
        time.sleep(0.05)
    raise AssertionError(seen)


def test_install_upgrade_uninstall(daemon, plugin_dir):
    d, tenant = daemon, "t-1"
    v1 = d.upload_package(tenant, difypkg.build(plugin_dir)[0], False)["unique_identifier"]
    v2 = d.upload_package(tenant, difypkg.build(plugin_dir, set_version="0.1.1")[0], False)["unique_identifier"]
    start = d.install(tenant, [v1], "package", [{}])
    assert start["all_installed"] is False
    first = d.task(tenant, start["task_id"])
    assert first["status"] == "running" and first["plugins"][0]["status"] in ("pending", "running")
    task, seen = _wait_task(d, tenant, start["task_id"])
    assert task["status"] == "success" and task["completed_plugins"] == 1 and task["plugins"][0]["message"] == "installed"
    [inst] = d.list_plugins(tenant, 1, 10)["list"]
    assert inst["version"] == "0.1.0" and inst["declaration"]["model"]["provider"] == "fake"
    assert d.list_models(tenant, 1, 10)[0]["declaration"]["provider"] == "fake"
    # the same identifier again: nothing to do
    assert d.install(tenant, [v1], "package", [{}]) == {"all_installed": True, "task_id": ""}
    # another version through install: success, and the installed version stays
    task, _ = _wait_task(d, tenant, d.install(tenant, [v2], "package", [{}])["task_id"])
    assert task["status"] == "success"
    assert d.list_plugins(tenant, 1, 10)["list"][0]["plugin_unique_identifier"] == v1
    assert d.missing(tenant, [v2]) == [{"plugin_unique_identifier": v2, "current_identifier": v1}]
    # a version change is an upgrade: same installation, new identifier
    with pytest.raises(errors.DaemonError, match="are the same"):
        d.upgrade(tenant, v1, v1, "package", {})
    with pytest.raises(errors.DaemonError, match="not found for this tenant"):
        d.upgrade("t-2", v1, v2, "package", {})
    task, _ = _wait_task(d, tenant, d.upgrade(tenant, v1, v2, "package", {"x": 1})["task_id"])
    assert task["plugins"][0]["message"] == "upgraded"
    [after] = d.list_plugins(tenant, 1, 10)["list"]
    assert after["plugin_unique_identifier"] == v2 and after["installation_id"] == inst["installation_id"]
    assert after["meta"] == {"x": 1}
    assert "stop " + v1 in d.launched and d.declaration(v1) is None  # nobody refers to v1 any more
    # a restarted stand-in keeps the installations
    again = Daemon(d.state_dir, d.cache_dir)
    again.stopped = True
    assert again.list_plugins(tenant, 1, 10)["total"] == 1
    assert d.uninstall(tenant, after["installation_id"]) is True
    assert d.list_plugins(tenant, 1, 10) == {"list": [], "total": 0}
    assert "stop " + v2 in d.launched and d.uninstall(tenant, "nope") is True


def test_unsigned_packages_need_verification_off(tmp_path, plugin_dir):
    d = Daemon(str(tmp_path / "s"), str(tmp_path / "c"), force_verifying_signature=True)
    d.stopped = True
    data = difypkg.build(plugin_dir)[0]
    with pytest.raises(errors.DaemonError, match="bad signature") as exc:
        d.upload_package("t", data, False)
    assert exc.value.error_type == "PluginDaemonBadRequestError"
    d.force_verifying_signature = False
    with pytest.raises(errors.DaemonError, match="bad signature"):
        d.upload_package("t", data, True)
    assert d.upload_package("t", data, False)["verification"] is None
    with pytest.raises(errors.DaemonError, match="difypkg"):
        d.upload_package("t", b"not a zip", False)


def test_running_tasks_fail_when_the_stand_in_restarts(daemon, plugin_dir):
    uid = daemon.upload_package("t", difypkg.build(plugin_dir)[0], False)["unique_identifier"]
    task_id = daemon._new_task("t", [(uid, daemon.declaration(uid))], "package")
    again = Daemon(daemon.state_dir, daemon.cache_dir)
    again.stopped = True
    task = again.task("t", task_id)
    assert task["status"] == "failed" and "restarted" in task["plugins"][0]["message"]


# ------------------------------------------------------------------------------------------------ HTTP
@pytest.fixture
def http_standin(tmp_path, fake_plugin):
    srv = make_server(("127.0.0.1", 0), api_key="k", state_dir=str(tmp_path / "hs"), cache_dir=str(tmp_path / "hc"),
                      force_verifying_signature=False, log=lambda msg: None, launch_installed=False, tiktoken=False)
    d = srv.daemon
    d.state["installations"]["t"] = {"tester/fake_provider": {
        "id": "inst-1", "plugin_id": "tester/fake_provider", "plugin_unique_identifier": UID, "runtime_type": "local",
        "source": "package", "meta": {}, "created_at": "x", "updated_at": "x"}}
    d.runtimes[UID] = fake_plugin()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.close_all()


def _conn(srv):
    return http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=20)


def test_http_streams_dispatch_answers_as_they_come(http_standin):
    conn = _conn(http_standin)
    body = json.dumps({"user_id": "u", "data": {"provider": "p", "model": "m", "model_type": "llm",
                                                "credentials": {}}})
    conn.request("POST", "/plugin/t/dispatch/llm/invoke", body, {
        "X-Api-Key": "k", "X-Plugin-ID": "tester/fake_provider", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    times, lines = [], []
    while True:
        line = resp.readline()  # http.client decodes the chunked framing
        if not line:
            break
        if line.startswith(b"data: "):
            times.append(time.time())
            lines.append(json.loads(line[6:]))
    assert [item["data"]["delta"]["index"] for item in lines] == [0, 1, 2]
    assert times[-1] - times[0] > 0.5
    # the same connection is reusable afterwards (chunked HTTP/1.1)
    conn.request("GET", "/plugin/t/management/list?page=1&page_size=10", headers={"X-Api-Key": "k"})
    listed = json.loads(conn.getresponse().read())
    assert listed["code"] == 0 and listed["data"]["total"] == 1


@pytest.mark.parametrize("method,path,headers,status,check", [
    ("GET", "/health", {}, 200, lambda b: b["standin"] == "plugin daemon stand-in"),
    ("GET", "/plugin/t/management/list?page=1&page_size=10", {"X-Api-Key": "bad"}, 401,
     lambda b: json.loads(b["message"])["error_type"] == "PluginDaemonUnauthorizedError"),
    ("GET", "/plugin/t/management/nothing/here/at/all", {"X-Api-Key": "k"}, 404,
     lambda b: b == {"code": "not_found", "message": "route not found"}),
    ("GET", "/plugin/t/management/list?page=0&page_size=10", {"X-Api-Key": "k"}, 400, lambda b: b["code"] == -400),
    ("GET", "/plugin/t/management/install/tasks/unknown", {"X-Api-Key": "k"}, 200,
     lambda b: b["code"] == -500 and json.loads(b["message"])["message"] == "record not found"),
    ("GET", "/plugin/t/management/tools?page=1&page_size=256", {"X-Api-Key": "k"}, 200, lambda b: b["data"] == []),
    ("GET", "/plugin/t/management/models?page=1&page_size=256", {"X-Api-Key": "k"}, 200, lambda b: b["data"] == []),
    ("POST", "/plugin/t/dispatch/llm/invoke", {"X-Api-Key": "k", "X-Plugin-ID": "other/plugin"}, 404,
     lambda b: json.loads(b["message"])["error_type"] == "PluginNotFoundError"),
    ("POST", "/plugin/t/dispatch/llm/invoke", {"X-Api-Key": "k"}, 400,
     lambda b: "plugin_id is required" in b["message"]),
])
def test_http_answers(http_standin, method, path, headers, status, check):
    conn = _conn(http_standin)
    conn.request(method, path, "{}" if method == "POST" else None, headers)
    resp = conn.getresponse()
    assert resp.status == status
    assert check(json.loads(resp.read()))


# ------------------------------------------------------------------------------------------------ environments
def test_find_python_says_what_it_tried(tmp_path):
    with pytest.raises(envs.PythonNotFound, match="Python 9.99 not found"):
        envs.find_python("9.99", explicit=sys.executable)
    assert envs.find_python("%d.%d" % sys.version_info[:2], explicit=sys.executable) == sys.executable


def test_dependency_spec_keys_on_the_lock(tmp_path):
    root = str(tmp_path)
    write_tree(root, {"pyproject.toml": "[project]\n", "uv.lock": "v1"})
    kind, key = envs.dependency_spec(root)
    write_tree(root, {"uv.lock": "v2"})
    assert kind == "uv.lock" and envs.dependency_spec(root)[1] != key
    os.remove(os.path.join(root, "uv.lock"))
    with pytest.raises(envs.EnvBuildError, match="no uv.lock"):
        envs.dependency_spec(root)


def test_tiktoken_files_are_rebuilt_from_ranks():
    order, table = tiktoken_cache._byte_alphabet()
    ranks = {bytes([b]): i for i, b in enumerate(order)}
    for token in (b"he", b"ll", b"hell", b"hello"):
        ranks[token] = len(ranks)
    text = "\n".join("%s %d" % (base64.b64encode(t).decode(), r) for t, r in ranks.items())
    vocab, encoder = tiktoken_cache.files_from_ranks(text)
    assert vocab.decode().split("\n") == ["#version: 0.2", "h e", "l l", "he ll", "hell o", ""]
    enc = json.loads(encoder)
    assert enc["hello"] == 259 and enc["<|endoftext|>"] == 50256 and enc[table[32]] == order.index(32)
    assert tiktoken_cache.cache_name(tiktoken_cache.VOCAB_URL) == hashlib.sha1(tiktoken_cache.VOCAB_URL.encode()).hexdigest()
