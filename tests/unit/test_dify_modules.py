"""plugins/modules/dify_*: exact HTTP calls and `changed` for create / no change / update / delete,
check mode, and input validation before any call. Runs against the Dify API stand-in (a test double).
"""

import importlib.util
import io
import os
import zipfile

import pytest
import yaml
from ansible.module_utils import basic

from conftest import ROOT, load_module

C = "/console/api"
P = "langgenius/openai_api_compatible/openai_api_compatible"
MP = C + "/workspaces/current/model-providers/" + P + "/models"
PL = C + "/workspaces/current/plugin"
LOGIN = ("POST", C + "/login")
WORKSPACE = ("POST", C + "/workspaces/current")
CREDS = {"endpoint_url": "http://127.0.0.1:9/v1", "endpoint_model_name": "tiny", "context_size": "4096"}
PROVIDERS = ("GET", C + "/workspaces/current/model-providers")  # the credential schema, read before writing


def last(standin, method, path):
    return [r for r in standin.requests if r["method"] == method and r["path"] == path][-1]


def assert_csrf(standin, mark):
    """Every console call after login carried the current CSRF cookie value as X-CSRF-Token."""
    for req in standin.requests[mark:]:
        if req["path"].startswith(C) and req["path"] not in (C + "/login", C + "/setup", C + "/init"):
            assert req["headers"].get("x-csrf-token"), req
            assert "csrf_token=" + req["headers"]["x-csrf-token"] in req["headers"]["cookie"]


# ------------------------------------------------------------------ dify_setup
def test_setup_create_then_noop(standin, run_module):
    mark = standin.mark()
    res = run_module("dify_setup", standin.args(admin_name="Ops"))
    assert res["changed"] and res["setup_step"] == "not_started"
    assert standin.calls(mark) == [("GET", C + "/setup"), ("GET", C + "/init"), ("POST", C + "/setup"), LOGIN,
                                   WORKSPACE]
    assert res["workspace_id"] == standin.state.tenant()["id"]
    assert last(standin, "POST", C + "/setup")["json"] == {
        "email": "admin@example.com", "name": "Ops", "password": "Sup3rSecret", "language": "en-US"}
    assert res["diff"]["after"]["admin_email"] == "admin@example.com"
    mark = standin.mark()
    res = run_module("dify_setup", standin.args(admin_name="Ops"))
    assert not res["changed"] and res["setup_step"] == "finished"
    assert standin.calls(mark) == [("GET", C + "/setup"), LOGIN, WORKSPACE]


def test_setup_check_mode_changes_nothing(standin, run_module):
    res = run_module("dify_setup", standin.args(), check_mode=True)
    assert res["changed"]
    assert standin.calls() == [("GET", C + "/setup"), ("GET", C + "/init")]
    assert not standin.state.is_setup()


def test_setup_wrong_password_on_existing_admin_fails_clearly(standin, run_module):
    run_module("dify_setup", standin.args())
    res = run_module("dify_setup", standin.args(admin_password="Other1234"))
    assert res["failed"]
    assert "HTTP 401 authentication_failed: Invalid email or password." in res["msg"]


@pytest.mark.parametrize("args,needle", [
    ({"admin_email": "not-an-email"}, "admin_email"),
    ({"admin_password": "short1"}, "admin_password"),
    ({"admin_password": "lettersonly"}, "admin_password"),
    ({"admin_name": "x" * 31}, "admin_name"),
])
def test_setup_invalid_input_fails_before_http(standin, run_module, args, needle):
    res = run_module("dify_setup", standin.args(**args))
    assert res["failed"] and res["msg"].startswith(needle)
    assert standin.requests == []


def test_setup_with_init_password(standin_factory, run_module):
    standin = standin_factory(init_password="InitPw99")
    res = run_module("dify_setup", standin.args())
    assert res["failed"] and "INIT_PASSWORD" in res["msg"] and "dify_bootstrap_init_password" in res["msg"]
    assert standin.calls() == [("GET", C + "/setup"), ("GET", C + "/init")]  # nothing written
    mark = standin.mark()
    res = run_module("dify_setup", standin.args(init_password="InitPw99"))
    assert res["changed"]
    assert standin.calls(mark) == [("GET", C + "/setup"), ("GET", C + "/init"), ("POST", C + "/init"),
                                   ("POST", C + "/setup"), LOGIN, WORKSPACE]
    assert "session=" in last(standin, "POST", C + "/setup")["headers"]["cookie"]


# ----------------------------------------------------------------- dify_plugin
def test_plugin_marketplace_install_noop_remove(standin_factory, run_module):
    standin = standin_factory(task_seconds=0.5)
    run_module("dify_setup", standin.args())
    mark = standin.mark()
    res = run_module("dify_plugin", standin.args(plugin_id="langgenius/openai_api_compatible", poll_interval=0.03))
    assert res["changed"] and res["plugin"]["plugin_id"] == "langgenius/openai_api_compatible"
    calls = standin.calls(mark)
    task = res["task_id"]
    assert calls[:4] == [LOGIN, ("GET", PL + "/list"), ("POST", PL + "/list/latest-versions"),
                         ("POST", PL + "/install/marketplace")]
    polls = calls[4:-1]
    assert len(polls) >= 2 and set(polls) == {("GET", PL + "/tasks/" + task)}
    assert calls[-1] == ("GET", PL + "/list")
    assert last(standin, "POST", PL + "/list/latest-versions")["json"] == {
        "plugin_ids": ["langgenius/openai_api_compatible"]}
    uid = last(standin, "POST", PL + "/install/marketplace")["json"]["plugin_unique_identifiers"][0]
    assert uid.startswith("langgenius/openai_api_compatible:0.0.63@")
    assert last(standin, "GET", PL + "/list")["query"] == {"page": "1", "page_size": "256"}
    assert_csrf(standin, mark)

    mark = standin.mark()
    res = run_module("dify_plugin", standin.args(plugin_id="langgenius/openai_api_compatible"))
    assert not res["changed"]
    assert standin.calls(mark) == [LOGIN, ("GET", PL + "/list")]

    inst = res["plugin"]["installation_id"]
    mark = standin.mark()
    res = run_module("dify_plugin", standin.args(plugin_id="langgenius/openai_api_compatible", state="absent"))
    assert res["changed"]
    assert standin.calls(mark) == [LOGIN, ("GET", PL + "/list"), ("POST", PL + "/uninstall")]
    assert last(standin, "POST", PL + "/uninstall")["json"] == {"plugin_installation_id": inst}
    mark = standin.mark()
    res = run_module("dify_plugin", standin.args(plugin_id="langgenius/openai_api_compatible", state="absent"))
    assert not res["changed"] and standin.calls(mark) == [LOGIN, ("GET", PL + "/list")]


def test_plugin_check_mode(standin, run_module):
    run_module("dify_setup", standin.args())
    mark = standin.mark()
    res = run_module("dify_plugin", standin.args(plugin_id="langgenius/openai_api_compatible"), check_mode=True)
    assert res["changed"] and standin.calls(mark) == [LOGIN, ("GET", PL + "/list")]


def test_plugin_offline_package(standin_factory, run_module, tmp_path):
    standin = standin_factory(marketplace=False)
    run_module("dify_setup", standin.args())
    res = run_module("dify_plugin", standin.args(plugin_id="langgenius/openai_api_compatible"))
    assert res["failed"] and "marketplace offers no plugin" in res["msg"] and "package_path" in res["msg"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.yaml", "version: 0.0.63\nauthor: langgenius\nname: openai_api_compatible\n")
    pkg = tmp_path / "openai_api_compatible.difypkg"
    pkg.write_bytes(buf.getvalue())
    mark = standin.mark()
    res = run_module("dify_plugin", standin.args(plugin_id="langgenius/openai_api_compatible",
                                                 package_path=str(pkg), poll_interval=0.03))
    assert res["changed"], res
    calls = standin.calls(mark)
    assert calls[:4] == [LOGIN, ("GET", PL + "/list"), ("POST", PL + "/upload/pkg"), ("POST", PL + "/install/pkg")]
    upload = last(standin, "POST", PL + "/upload/pkg")
    assert upload["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert upload["headers"]["x-csrf-token"]
    assert res["plugin"]["source"] == "package"


def test_plugin_invalid_id_fails_before_http(standin, run_module):
    res = run_module("dify_plugin", standin.args(plugin_id="openai_api_compatible"))
    assert res["failed"] and res["msg"].startswith("plugin_id") and standin.requests == []


# ------------------------------------------------------------------ dify_model
def model_args(standin, **kw):
    args = standin.args(provider=P, model="tiny-llm", model_type="llm", credentials=dict(CREDS),
                        secret_credentials={"api_key": "sk-local-0123456789"})
    args.update(kw)
    return args


def test_model_create_noop_update_delete(ready, run_module):
    s = ready
    mark = s.mark()
    res = run_module("dify_model", model_args(s))
    assert res["changed"] and res["credential_id"]
    assert s.calls(mark) == [LOGIN, PROVIDERS, ("GET", MP + "/credentials"), ("POST", MP + "/credentials"),
                             ("GET", MP + "/credentials")]
    assert s.requests[mark + 2]["query"] == {"model_type": "llm"}
    assert s.requests[mark + 3]["query"] == {"model": "tiny-llm", "model_type": "llm"}
    assert last(s, "POST", MP + "/credentials")["json"] == {
        "model": "tiny-llm", "model_type": "llm", "credentials": dict(CREDS, api_key="sk-local-0123456789")}
    assert res["diff"]["after"]["credentials"]["api_key"] == "********"
    assert_csrf(s, mark)

    mark = s.mark()
    res = run_module("dify_model", model_args(s))
    assert not res["changed"], res
    assert s.calls(mark) == [LOGIN, PROVIDERS, ("GET", MP + "/credentials")]

    mark = s.mark()
    res = run_module("dify_model", model_args(s, credentials=dict(CREDS, context_size="8192")))
    assert res["changed"] and res["changed_fields"] == ["context_size"]
    assert s.calls(mark) == [LOGIN, PROVIDERS, ("GET", MP + "/credentials"), ("PUT", MP + "/credentials")]
    put = last(s, "PUT", MP + "/credentials")["json"]
    assert put["credential_id"] == res["credential_id"] and put["credentials"]["context_size"] == "8192"

    mark = s.mark()
    res = run_module("dify_model", model_args(s, credentials=dict(CREDS, context_size="8192"),
                                              secret_credentials={"api_key": "sk-local-rotated99"}))
    assert res["changed"] and res["changed_fields"] == ["api_key"]

    mark = s.mark()
    res = run_module("dify_model", model_args(s, state="absent"))
    assert res["changed"]
    assert s.calls(mark) == [LOGIN, ("GET", MP + "/credentials"), ("DELETE", MP)]
    assert last(s, "DELETE", MP)["json"] == {"model": "tiny-llm", "model_type": "llm"}
    mark = s.mark()
    assert not run_module("dify_model", model_args(s, state="absent"))["changed"]


def test_model_check_mode_and_validation(ready, run_module):
    s = ready
    mark = s.mark()
    res = run_module("dify_model", model_args(s), check_mode=True)
    assert res["changed"] and s.calls(mark) == [LOGIN, PROVIDERS, ("GET", MP + "/credentials")]
    mark = s.mark()
    res = run_module("dify_model", model_args(s, model_type="chat"))
    assert res["failed"] and "model_type" in res["msg"] and s.mark() == mark
    res = run_module("dify_model", model_args(s, provider="openai_api_compatible"))
    assert res["failed"] and res["msg"].startswith("provider") and s.mark() == mark


def test_model_provider_without_plugin_reports_dify_error(standin, run_module):
    run_module("dify_setup", standin.args())
    res = run_module("dify_model", model_args(standin))
    assert res["failed"]
    assert "provider %s is not installed in this workspace" % P in res["msg"]


@pytest.mark.parametrize("creds,needle", [
    (dict(CREDS, invoke_timeout="60"), "invoke_timeout not in the schema (Dify would drop them)"),
    ({"endpoint_url": "http://127.0.0.1:9/v1"}, "context_size required"),
], ids=["unknown-field", "missing-required"])
def test_model_credentials_checked_against_the_schema_before_any_write(ready, run_module, creds, needle):
    s = ready
    mark = s.mark()
    res = run_module("dify_model", model_args(s, credentials=creds))
    assert res["failed"] and needle in res["msg"], res
    assert s.calls(mark) == [LOGIN, PROVIDERS]


def test_model_embedding_needs_max_chunks(ready, run_module):
    res = run_module("dify_model", model_args(ready, model="e", model_type="text-embedding"))
    assert res["failed"] and "max_chunks required" in res["msg"]


@pytest.fixture
def models(ready, run_module):
    for mtype, name in (("llm", "tiny-llm"), ("text-embedding", "tiny-embed"), ("rerank", "tiny-rerank")):
        creds = dict(CREDS, max_chunks="8") if mtype == "text-embedding" else dict(CREDS)
        assert run_module("dify_model", model_args(ready, model=name, model_type=mtype, credentials=creds))["changed"]
    return ready


# --------------------------------------------------------- dify_default_models
def test_default_models(models, run_module):
    s = models
    want = [{"model_type": "llm", "provider": P, "model": "tiny-llm"},
            {"model_type": "text-embedding", "provider": P, "model": "tiny-embed"}]
    dm = C + "/workspaces/current/default-model"
    mark = s.mark()
    res = run_module("dify_default_models", s.args(models=want))
    assert res["changed"]
    assert s.calls(mark) == [LOGIN, ("GET", dm), ("GET", dm), ("POST", dm)]
    assert [r["query"] for r in s.requests[mark:] if r["method"] == "GET" and r["path"] == dm] == [
        {"model_type": "llm"}, {"model_type": "text-embedding"}]
    assert last(s, "POST", dm)["json"] == {"model_settings": want}
    mark = s.mark()
    assert not run_module("dify_default_models", s.args(models=want))["changed"]
    assert s.calls(mark) == [LOGIN, ("GET", dm), ("GET", dm)]
    want[1]["model"] = "tiny-llm"  # not an embedding model: Dify refuses
    res = run_module("dify_default_models", s.args(models=want))
    assert res["failed"] and "HTTP 400 invalid_param: Model tiny-llm not exist." in res["msg"]
    want[1] = {"model_type": "rerank", "provider": P, "model": "tiny-rerank"}
    res = run_module("dify_default_models", s.args(models=want))
    assert res["changed"] and last(s, "POST", dm)["json"] == {"model_settings": [want[1]]}


# ---------------------------------------------------------------- dify_dataset
def ds_args(s, key, **kw):
    args = s.args(name="Handbook", dataset_api_key=key, embedding_model="tiny-embed", embedding_model_provider=P,
                  reranking_model="tiny-rerank", reranking_provider=P)
    args.update(kw)
    return args


def test_dataset_create_noop_update_delete(models, run_module):
    s = models
    key = run_module("dify_api_key", s.args(kind="dataset"))["token"]
    assert key.startswith("dataset-")
    mark = s.mark()
    res = run_module("dify_dataset", ds_args(s, key))
    assert res["changed"] and res["id"]
    assert s.calls(mark) == [("GET", "/v1/datasets"), ("POST", "/v1/datasets")]  # service API only, no login
    assert s.requests[mark]["query"] == {"keyword": "Handbook", "page": "1", "limit": "100"}
    post = last(s, "POST", "/v1/datasets")
    assert post["headers"]["authorization"] == "Bearer " + key and "cookie" not in post["headers"]
    assert post["json"] == {
        "name": "Handbook", "description": "", "indexing_technique": "high_quality",
        "embedding_model": "tiny-embed", "embedding_model_provider": P,
        "retrieval_model": {"search_method": "hybrid_search", "reranking_enable": True, "top_k": 5,
                            "score_threshold_enabled": False, "score_threshold": None,
                            "reranking_mode": "reranking_model",
                            "reranking_model": {"reranking_provider_name": P, "reranking_model_name": "tiny-rerank"}}}
    mark = s.mark()
    assert not run_module("dify_dataset", ds_args(s, key))["changed"]
    assert s.calls(mark) == [("GET", "/v1/datasets")]
    mark = s.mark()
    res = run_module("dify_dataset", ds_args(s, key, top_k=8))
    assert res["changed"] and res["diff"]["before"]["top_k"] == 5 and res["diff"]["after"]["top_k"] == 8
    assert s.calls(mark) == [("GET", "/v1/datasets"), ("PATCH", "/v1/datasets/" + res["id"])]
    assert last(s, "PATCH", "/v1/datasets/" + res["id"])["json"]["retrieval_model"]["top_k"] == 8
    mark = s.mark()
    res2 = run_module("dify_dataset", ds_args(s, key, state="absent"))
    assert res2["changed"] and s.calls(mark) == [("GET", "/v1/datasets"), ("DELETE", "/v1/datasets/" + res["id"])]
    mark = s.mark()
    assert not run_module("dify_dataset", ds_args(s, key, state="absent"))["changed"]


def test_dataset_without_key_uses_console_key(models, run_module):
    s = models
    mark = s.mark()
    res = run_module("dify_dataset", ds_args(s, None))
    assert res["changed"] and res["dataset_api_key_created"]
    assert s.calls(mark) == [LOGIN, ("GET", C + "/datasets/api-keys"), ("POST", C + "/datasets/api-keys"),
                             ("GET", "/v1/datasets"), ("POST", "/v1/datasets")]
    mark = s.mark()
    res = run_module("dify_dataset", ds_args(s, None))
    assert not res["changed"]
    assert s.calls(mark) == [LOGIN, ("GET", C + "/datasets/api-keys"), ("GET", "/v1/datasets")]


def test_dataset_validation_before_http(models, run_module):
    s = models
    mark = s.mark()
    res = run_module("dify_dataset", ds_args(s, "dataset-x", name="n" * 41))
    assert res["failed"] and res["msg"].startswith("name") and "40" in res["msg"]
    res = run_module("dify_dataset", ds_args(s, "dataset-x", embedding_model=None, embedding_model_provider=None))
    assert res["failed"] and res["msg"].startswith("embedding_model")
    assert s.mark() == mark


# -------------------------------------------------------------------- dify_app
@pytest.fixture
def dataset_id(models, run_module):
    key = run_module("dify_api_key", models.args(kind="dataset"))["token"]
    return run_module("dify_dataset", ds_args(models, key))["id"]


def app_args(s, ds, **kw):
    args = s.args(name="Assistant", model_provider=P, model_name="tiny-llm", pre_prompt="Be brief.",
                  dataset_ids=[ds], reranking_model="tiny-rerank", reranking_provider=P,
                  completion_params={"temperature": 0.2})
    args.update(kw)
    return args


def test_app_create_noop_update_delete(models, dataset_id, run_module):
    s = models
    mark = s.mark()
    res = run_module("dify_app", app_args(s, dataset_id))
    assert res["changed"]
    app = res["app_id"]
    assert s.calls(mark) == [LOGIN, ("GET", C + "/apps"), ("POST", C + "/apps"),
                             ("POST", C + "/apps/%s/model-config" % app), ("GET", C + "/apps/" + app)]
    assert s.requests[mark + 2]["query"] == {"page": "1", "limit": "100", "name": "Assistant"}
    assert last(s, "POST", C + "/apps")["json"] == {"name": "Assistant", "mode": "chat", "icon_type": "emoji",
                                                     "icon": "\U0001F916", "icon_background": "#FFEAD5",
                                                     "description": ""}
    cfg = last(s, "POST", C + "/apps/%s/model-config" % app)["json"]
    assert cfg["model"] == {"provider": P, "name": "tiny-llm", "mode": "chat",
                            "completion_params": {"temperature": 0.2}}
    assert cfg["dataset_configs"]["datasets"] == {"datasets": [{"dataset": {"enabled": True, "id": dataset_id}}]}
    assert cfg["dataset_configs"]["reranking_model"] == {"reranking_provider_name": P,
                                                         "reranking_model_name": "tiny-rerank"}
    assert cfg["retriever_resource"] == {"enabled": True} and cfg["pre_prompt"] == "Be brief."
    code = s.state.store.get("apps", app)["site_code"]
    assert res["web_url"] == "%s/chat/%s" % (s.url, code)
    assert res["api_base_url"] == s.url + "/v1"
    assert_csrf(s, mark)

    mark = s.mark()
    res = run_module("dify_app", app_args(s, dataset_id))
    assert not res["changed"], res
    assert s.calls(mark) == [LOGIN, ("GET", C + "/apps"), ("GET", C + "/apps/" + app)]
    assert res["web_url"].endswith("/chat/" + code)

    mark = s.mark()
    res = run_module("dify_app", app_args(s, dataset_id, pre_prompt="Be thorough."))
    assert res["changed"] and res["diff"]["after"]["pre_prompt"] == "Be thorough."
    assert s.calls(mark) == [LOGIN, ("GET", C + "/apps"), ("GET", C + "/apps/" + app),
                             ("POST", C + "/apps/%s/model-config" % app)]
    mark = s.mark()
    res = run_module("dify_app", app_args(s, dataset_id, pre_prompt="Be thorough.", description="Helpdesk"))
    assert res["changed"] and s.calls(mark)[-1] == ("PUT", C + "/apps/" + app)

    mark = s.mark()
    res = run_module("dify_app", app_args(s, dataset_id, state="absent"))
    assert res["changed"] and s.calls(mark) == [LOGIN, ("GET", C + "/apps"), ("DELETE", C + "/apps/" + app)]
    assert not run_module("dify_app", app_args(s, dataset_id, state="absent"))["changed"]


def test_app_check_mode_and_duplicates(models, dataset_id, run_module):
    s = models
    mark = s.mark()
    res = run_module("dify_app", app_args(s, dataset_id), check_mode=True)
    assert res["changed"] and s.calls(mark) == [LOGIN, ("GET", C + "/apps")]
    from ansible.module_utils.dify_client import DifyClient
    client = DifyClient(s.url, admin_email="admin@example.com", admin_password="Sup3rSecret")
    for _ in range(2):
        client.request("POST", C + "/apps", body={"name": "Assistant", "mode": "chat"})
    res = run_module("dify_app", app_args(s, dataset_id))
    assert res["failed"] and "2 apps are named 'Assistant'" in res["msg"]


# ---------------------------------------------------------------- dify_api_key
def test_api_key_reuse_rotate_delete(models, dataset_id, run_module):
    s = models
    app = run_module("dify_app", app_args(s, dataset_id))["app_id"]
    keys = C + "/apps/%s/api-keys" % app
    mark = s.mark()
    res = run_module("dify_api_key", s.args(app_name="Assistant"))
    assert res["changed"] and res["token_source"] == "created" and res["token"].startswith("app-")
    token = res["token"]
    assert s.calls(mark) == [LOGIN, ("GET", C + "/apps"), ("GET", keys), ("POST", keys)]

    mark = s.mark()
    res = run_module("dify_api_key", s.args(app_name="Assistant", token=token))
    assert not res["changed"] and res["token_source"] == "input"
    assert s.calls(mark) == [LOGIN, ("GET", C + "/apps"), ("GET", keys)]
    mark = s.mark()
    res = run_module("dify_api_key", s.args(app_id=app))  # lost the stored token: reuse, do not mint
    assert not res["changed"] and res["token"] == token and res["token_source"] == "existing"
    assert s.calls(mark) == [LOGIN, ("GET", keys)]
    res = run_module("dify_api_key", s.args(app_id=app, token="app-stale", reuse_existing=False))
    assert res["changed"] and res["token"] != token
    assert len(s.state.store.list("app_keys")) == 2

    mark = s.mark()
    res = run_module("dify_api_key", s.args(app_id=app, rotate=True))
    assert res["changed"] and res["deleted"] == 2
    assert [k["token"] for k in s.state.store.list("app_keys")] == [res["token"]]
    calls = s.calls(mark)
    assert calls[:3] == [LOGIN, ("GET", keys), ("POST", keys)] and calls[3:] and all(
        m == "DELETE" for m, _ in calls[3:])

    mark = s.mark()
    res2 = run_module("dify_api_key", s.args(app_id=app, token=res["token"], state="absent"))
    assert res2["changed"] and s.calls(mark)[-1][0] == "DELETE"
    assert s.state.store.list("app_keys") == []


def test_api_key_check_mode_creates_nothing(models, run_module):
    s = models
    mark = s.mark()
    res = run_module("dify_api_key", s.args(kind="dataset"), check_mode=True)
    assert res["changed"] and "token" not in res
    assert s.calls(mark) == [LOGIN, ("GET", C + "/datasets/api-keys")]
    assert s.state.store.list("dataset_keys") == []


def test_modules_check_mode_on_fresh_dify_do_not_fail(standin, run_module):
    res = run_module("dify_plugin", standin.args(plugin_id="langgenius/openai_api_compatible"), check_mode=True)
    assert res["changed"] and "no admin account yet" in res["msg"]
    res = run_module("dify_plugin", standin.args(plugin_id="langgenius/openai_api_compatible"))
    assert res["failed"] and "run dify_setup first" in res["msg"]
    assert all(r["method"] == "GET" or r["path"] == C + "/login" for r in standin.requests)


def test_module_refuses_unsupported_version(standin_factory, run_module):
    standin = standin_factory(version="0.15.3")
    res = run_module("dify_plugin", standin.args(plugin_id="langgenius/openai_api_compatible"))
    assert res["failed"] and "Dify 0.15.3 is not supported" in res["msg"]
    assert [r["path"] for r in standin.requests] == ["/health"]
    res = run_module("dify_setup", standin.args())
    assert res["failed"] and "Dify 0.15.3 is not supported" in res["msg"]


# ------------------------------------------- every module: the shared resource pattern (dify_resource)
PATTERN_MODULES = ["dify_setup", "dify_plugin", "dify_model", "dify_default_models", "dify_dataset", "dify_app",
                   "dify_api_key"]  # the modules on plugins/module_utils/dify_resource.py
READS = {C + "/login", C + "/refresh-token", C + "/workspaces/current"}  # POSTs that write nothing


def writes(s, mark):
    """The requests since ``mark`` that could change something in Dify."""
    return [(m, p) for m, p in s.calls(mark) if m not in ("GET", "HEAD") and p not in READS]


def package(tmp_path, version):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.yaml", "version: %s\nauthor: langgenius\nname: openai_api_compatible\n" % version)
    pkg = tmp_path / ("openai_api_compatible-%s.difypkg" % version)
    pkg.write_bytes(buf.getvalue())
    return str(pkg)


def lifecycle(name, request, tmp_path):
    """(stand-in, module, [(action, args, changed)]) for one module: every resource action it has."""
    if name == "dify_setup":
        s = request.getfixturevalue("standin")
        return s, name, [("create", s.args(admin_name="Ops"), True), ("unchanged", s.args(admin_name="Ops"), False)]
    if name == "dify_plugin":
        s = request.getfixturevalue("standin")
        request.getfixturevalue("run_module")("dify_setup", s.args())
        a = dict(plugin_id="langgenius/openai_api_compatible", poll_interval=0.03)
        v63, v64 = package(tmp_path, "0.0.63"), package(tmp_path, "0.0.64")
        return s, name, [("create", s.args(package_path=v63, **a), True), ("unchanged", s.args(**a), False),
                         ("update", s.args(package_path=v64, **a), True),
                         ("delete", s.args(state="absent", **a), True),
                         ("absent", s.args(state="absent", **a), False)]
    if name == "dify_model":
        s = request.getfixturevalue("ready")
        return s, name, [("create", model_args(s), True), ("unchanged", model_args(s), False),
                         ("update", model_args(s, credentials=dict(CREDS, context_size="8192")), True),
                         ("delete", model_args(s, state="absent"), True),
                         ("absent", model_args(s, state="absent"), False)]
    s = request.getfixturevalue("models")
    if name == "dify_default_models":
        llm = {"model_type": "llm", "provider": P, "model": "tiny-llm"}
        emb = {"model_type": "text-embedding", "provider": P, "model": "tiny-embed"}
        rr = {"model_type": "rerank", "provider": P, "model": "tiny-rerank"}
        return s, name, [("update", s.args(models=[llm, emb]), True), ("unchanged", s.args(models=[llm, emb]), False),
                         ("update", s.args(models=[llm, rr]), True)]
    key = request.getfixturevalue("run_module")("dify_api_key", s.args(kind="dataset"))["token"]
    if name == "dify_dataset":
        return s, name, [("create", ds_args(s, key), True), ("unchanged", ds_args(s, key), False),
                         ("update", ds_args(s, key, top_k=8), True), ("delete", ds_args(s, key, state="absent"), True),
                         ("absent", ds_args(s, key, state="absent"), False)]
    ds = request.getfixturevalue("run_module")("dify_dataset", ds_args(s, key))["id"]
    if name == "dify_app":
        return s, name, [("create", app_args(s, ds), True), ("unchanged", app_args(s, ds), False),
                         ("update", app_args(s, ds, pre_prompt="Be thorough."), True),
                         ("update", app_args(s, ds, pre_prompt="Be thorough.", description="Helpdesk"), True),
                         ("delete", app_args(s, ds, state="absent"), True),
                         ("absent", app_args(s, ds, state="absent"), False)]
    assert name == "dify_api_key"
    request.getfixturevalue("run_module")("dify_app", app_args(s, ds))
    return s, name, [("create", s.args(app_name="Assistant", reuse_existing=False), True),
                     ("unchanged", s.args(app_name="Assistant"), False),
                     ("update (rotate)", s.args(app_name="Assistant", rotate=True), True),
                     ("delete", s.args(app_name="Assistant", state="absent"), True),
                     ("absent", s.args(app_name="Assistant", state="absent"), False)]


@pytest.mark.parametrize("name", PATTERN_MODULES)
def test_every_action_check_mode_diff_and_changed(name, request, run_module, tmp_path):
    """Each resource action of each module, run three times: in check mode without and with --diff
    (no write; ``changed`` as the real run; a diff only with --diff and only when something changes),
    then for real without --diff (``changed``; no diff)."""
    s, module, steps = lifecycle(name, request, tmp_path)
    for action, args, changed in steps:
        for diff in (False, True):
            mark = s.mark()
            res = run_module(module, args, check_mode=True, diff=diff)
            assert not res.get("failed"), (action, res)
            assert res["changed"] is changed, (action, diff, res)
            assert ("diff" in res) is (diff and changed), (action, diff, res)
            assert writes(s, mark) == [], (action, "check mode wrote")
        mark = s.mark()
        res = run_module(module, args, diff=False)
        assert not res.get("failed"), (action, res)
        assert res["changed"] is changed and "diff" not in res, (action, res)
        assert bool(writes(s, mark)) is changed, (action, s.calls(mark))


def test_diff_with_diff_mode_shows_before_and_after(models, dataset_id, run_module):
    s = models
    res = run_module("dify_app", app_args(s, dataset_id), diff=True)
    assert res["diff"]["before"] == {} and res["diff"]["after"]["name"] == "Assistant"
    res = run_module("dify_app", app_args(s, dataset_id, description="Helpdesk"), diff=True)
    assert res["diff"] == {"before": {"description": "", "icon": "\U0001F916", "icon_background": "#FFEAD5"},
                           "after": {"description": "Helpdesk", "icon": "\U0001F916", "icon_background": "#FFEAD5"}}
    res = run_module("dify_app", app_args(s, dataset_id, description="Helpdesk", state="absent"), diff=True)
    assert res["diff"] == {"before": {"name": "Assistant"}, "after": {}}


def test_plugin_version_change_reinstalls_a_package(standin, run_module, tmp_path):
    run_module("dify_setup", standin.args())
    a = dict(plugin_id="langgenius/openai_api_compatible", poll_interval=0.03)
    run_module("dify_plugin", standin.args(package_path=package(tmp_path, "0.0.63"), **a))
    mark = standin.mark()
    res = run_module("dify_plugin", standin.args(package_path=package(tmp_path, "0.0.64"), **a))
    assert res["changed"] and res["method"] == "reinstall" and res["version_change"] == "0.0.63 -> 0.0.64"
    assert res["plugin"]["version"] == "0.0.64" and res["diff"]["after"]["version"] == "0.0.64"
    calls = standin.calls(mark)
    assert calls[:5] == [LOGIN, ("GET", PL + "/list"), ("POST", PL + "/upload/pkg"), ("POST", PL + "/uninstall"),
                         ("POST", PL + "/install/pkg")]
    assert calls[-1] == ("GET", PL + "/list")


def test_api_key_check_mode_for_an_app_not_created_yet(models, run_module):
    s = models
    mark = s.mark()
    res = run_module("dify_api_key", s.args(app_name="Later"), check_mode=True)
    assert res["changed"] and res["token_source"] == "none" and "diff" not in res
    res = run_module("dify_api_key", s.args(app_name="Later", state="absent"), check_mode=True)
    assert not res["changed"]
    assert s.calls(mark) == [LOGIN, ("GET", C + "/apps")] * 2


def test_model_check_mode_before_its_plugin_is_installed(standin, run_module):
    run_module("dify_setup", standin.args())
    mark = standin.mark()
    res = run_module("dify_model", model_args(standin), check_mode=True)
    assert res["changed"] and res["credential_id"] == "" and "not installed yet" in res["msg"]
    assert standin.calls(mark) == [LOGIN, PROVIDERS]


# ------------------------------------------------------------- documentation matches the modules
def _doc_fragment():
    spec = importlib.util.spec_from_file_location("dify_doc_fragment", os.path.join(ROOT, "plugins", "doc_fragments",
                                                                                    "dify.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ModuleDocFragment


class _Spec(Exception):
    pass


@pytest.mark.parametrize("name", PATTERN_MODULES + ["dify_documents"])
def test_documentation_parses_and_names_every_option(name, monkeypatch):
    """What ansible-doc renders: the YAML parses, every option of the argument spec is documented (the
    fragments' included), and the modules on the resource pattern declare check and diff mode."""
    mod = load_module(name)
    doc = yaml.safe_load(mod.DOCUMENTATION)
    yaml.safe_load(mod.EXAMPLES)
    yaml.safe_load(mod.RETURN)
    fragment = _doc_fragment()
    options = set(doc.get("options") or {})
    for ref in doc["extends_documentation_fragment"]:
        assert ref.startswith("dify_gpu.dify.dify"), ref  # the collection's fragment, by FQCN
        part = yaml.safe_load(getattr(fragment, ref[len("dify_gpu.dify.dify."):].upper() or "DOCUMENTATION"))
        options |= set(part.get("options") or {})

    def capture(self, argument_spec=None, **kwargs):
        raise _Spec(argument_spec, kwargs)

    monkeypatch.setattr(basic.AnsibleModule, "__init__", capture)
    with pytest.raises(_Spec) as spec:
        mod.main()
    argument_spec, kwargs = spec.value.args
    assert set(argument_spec) == options
    if name in PATTERN_MODULES:
        assert kwargs["supports_check_mode"] and "dify_gpu.dify.dify.attributes" in doc["extends_documentation_fragment"]
        assert doc["attributes"]["check_mode"]["support"] == doc["attributes"]["diff_mode"]["support"] == "full"


# ------------------------------------------------ creating POSTs: repeated only after their lookup
def creating(name, request, tmp_path):
    """(stand-in, args, the creating POST's path, the lookup's path) of one module's create."""
    run = request.getfixturevalue("run_module")
    if name == "dify_setup":
        s = request.getfixturevalue("standin")
        return s, s.args(), C + "/setup", C + "/setup"
    if name == "dify_plugin":
        s = request.getfixturevalue("standin")
        run("dify_setup", s.args())
        return (s, s.args(plugin_id="langgenius/openai_api_compatible", poll_interval=0.03,
                          package_path=package(tmp_path, "0.0.63")), PL + "/install/pkg", PL + "/list")
    if name == "dify_model":
        s = request.getfixturevalue("ready")
        return s, model_args(s), MP + "/credentials", MP + "/credentials"
    s = request.getfixturevalue("models")
    if name == "dify_dataset":
        key = run("dify_api_key", s.args(kind="dataset"))["token"]
        return s, ds_args(s, key), "/v1/datasets", "/v1/datasets"
    if name == "dify_app":
        return s, app_args(s, request.getfixturevalue("dataset_id")), C + "/apps", C + "/apps"
    assert name == "dify_api_key"
    return s, s.args(kind="dataset"), C + "/datasets/api-keys", C + "/datasets/api-keys"


CREATORS = ["dify_setup", "dify_plugin", "dify_model", "dify_dataset", "dify_app", "dify_api_key"]


@pytest.mark.parametrize("name", CREATORS)
def test_a_create_that_did_not_land_is_sent_again_after_its_lookup(name, request, run_module, tmp_path):
    s, args, post, lookup = creating(name, request, tmp_path)
    s.state.inject_fault("POST", post, 503)  # answered without creating anything
    mark = s.mark()
    res = run_module(name, args)
    assert res["changed"] and not res.get("failed"), res
    calls = s.calls(mark)
    first = calls.index(("POST", post))
    lookups = [("GET", lookup)] + ([("GET", PL + "/tasks")] if name == "dify_plugin" else [])
    assert calls[first + 1:first + 2 + len(lookups)] == lookups + [("POST", post)], calls
    assert calls.count(("POST", post)) == 2


@pytest.mark.parametrize("name", CREATORS)
def test_a_create_whose_answer_was_lost_is_not_sent_twice(name, request, run_module, tmp_path, monkeypatch):
    from ansible.module_utils import dify_client
    s, args, post, lookup = creating(name, request, tmp_path)
    raw = dify_client.DifyClient.raw
    lost = []

    def lose_first_answer(self, method, path, *a, **kw):
        answer = raw(self, method, path, *a, **kw)
        if method == "POST" and path == post and not lost:
            lost.append(answer[0])  # Dify created it; the proxy answers 502
            return 502, {}, {"code": "bad_gateway", "message": "upstream went away"}
        return answer

    monkeypatch.setattr(dify_client.DifyClient, "raw", lose_first_answer)
    mark = s.mark()
    res = run_module(name, args)
    assert lost == [200] or lost == [201], lost
    assert res["changed"] and not res.get("failed"), res
    calls = s.calls(mark)
    assert calls.count(("POST", post)) == 1, calls
    first = calls.index(("POST", post))
    assert calls[first + 1] == ("GET", lookup)


@pytest.mark.parametrize("source", ["package", "marketplace"])
def test_plugin_install_whose_answer_was_lost_while_its_task_runs_waits_for_that_task(
        source, standin_factory, run_module, tmp_path, monkeypatch):
    """The install POST landed, its answer was lost (502), the task is still running, so the plugin is
    not listed yet: the module reads the list, then the install tasks, finds the running task of its
    package and polls it -- no second POST."""
    from ansible.module_utils import dify_client
    s = standin_factory(task_seconds=0.6)
    run_module("dify_setup", s.args())
    args = dict(plugin_id="langgenius/openai_api_compatible", poll_interval=0.03)
    if source == "package":
        args["package_path"] = package(tmp_path, "0.0.63")
    post = PL + "/install/" + ("pkg" if source == "package" else "marketplace")
    raw = dify_client.DifyClient.raw
    lost = []

    def lose_first_answer(self, method, path, *a, **kw):
        answer = raw(self, method, path, *a, **kw)
        if method == "POST" and path == post and not lost:
            lost.append(answer[2])
            return 502, {}, {"code": "bad_gateway", "message": "upstream went away"}
        return answer

    monkeypatch.setattr(dify_client.DifyClient, "raw", lose_first_answer)
    mark = s.mark()
    res = run_module("dify_plugin", s.args(**args))
    assert not res.get("failed") and res["changed"] and res["method"] == "install", res
    task = lost[0]["task_id"]
    assert task and res["task_id"] == task
    assert res["plugin"]["plugin_id"] == "langgenius/openai_api_compatible"
    calls = s.calls(mark)
    before = ([("POST", PL + "/upload/pkg")] if source == "package" else [("POST", PL + "/list/latest-versions")])
    assert calls[:5] == [LOGIN, ("GET", PL + "/list")] + before + [("POST", post), ("GET", PL + "/list")], calls
    assert calls[5] == ("GET", PL + "/tasks"), calls
    assert last(s, "GET", PL + "/tasks")["query"] == {"page": "1", "page_size": "256"}
    polls = calls[6:-1]
    assert len(polls) >= 2 and set(polls) == {("GET", PL + "/tasks/" + task)}, calls
    assert calls[-1] == ("GET", PL + "/list")
    assert calls.count(("POST", post)) == 1
    assert len(s.state.store.list("plugin_tasks")) == 1


def test_plugin_install_lost_answer_an_old_succeeded_task_is_not_taken_for_it(standin, run_module, tmp_path):
    """A task of the same package that succeeded earlier (the plugin since uninstalled) is not this
    install: the POST that did not land is sent again."""
    run_module("dify_setup", standin.args())
    args = standin.args(plugin_id="langgenius/openai_api_compatible", poll_interval=0.03,
                        package_path=package(tmp_path, "0.0.63"))
    run_module("dify_plugin", args)
    run_module("dify_plugin", dict(args, state="absent"))
    standin.state.inject_fault("POST", PL + "/install/pkg", 503)
    mark = standin.mark()
    res = run_module("dify_plugin", args)
    assert res["changed"] and not res.get("failed"), res
    calls = standin.calls(mark)
    first = calls.index(("POST", PL + "/install/pkg"))
    assert calls[first + 1:first + 5] == [("GET", PL + "/list"), ("GET", PL + "/tasks"), ("GET", PL + "/list"),
                                          ("POST", PL + "/install/pkg")], calls
