"""plugins/modules/dify_*: exact HTTP calls and `changed` for create / no change / update / delete,
check mode, and input validation before any call. Runs against the Dify API stand-in (a test double).
"""

import io
import zipfile

import pytest

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
