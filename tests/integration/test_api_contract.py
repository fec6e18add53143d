"""One contract, two backends: the Dify API stand-in (tests/dify_standin, which plays the api container in
the compose-stack Molecule scenarios) and real Dify 1.15.0 (a fresh api of the harness, its own database).

It walks what those scenarios rely on -- setup, login cookies and CSRF, token refresh, the workspace,
offline plugin install, provider schemas and model credentials, default models, dataset and app keys,
datasets, apps and their model config, the service API -- and asserts the same observable answers from
both. A difference found here is a bug of the stand-in (real Dify is the reference).
"""

import base64
import re
import threading
import time

import pytest

from ansible.module_utils.dify_client import DifyClient, DifyError
from conftest import OAC_ID

C = "/console/api"
P = OAC_ID + "/openai_api_compatible"
ADMIN = {"admin_email": "contract@example.com", "admin_password": "Contract-pw-1"}


@pytest.fixture(scope="module", params=["standin", "real"])
def backend(request, real_dify):
    """(url, kind, model endpoint credentials) of a fresh, not-set-up Dify."""
    emb = {e["model_type"]: e["credentials"] for e in real_dify.model_endpoints(path="openai")}
    if request.param == "real":
        port = real_dify.ports["api_contract"]
        url = real_dify.start_extra_api("contract", port, "http://127.0.0.1:%d" % port)
        yield url, "real", emb
        return
    from dify_standin.server import make_server

    srv = make_server(("127.0.0.1", 0), version="1.15.0", task_seconds=0.3, marketplace=False)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield "http://127.0.0.1:%d" % srv.server_address[1], "standin", emb
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def ctx(backend):
    return {}


def test_setup_and_init_status(backend):
    url = backend[0]
    anon = DifyClient(url)
    assert anon.setup_status() == "not_started"
    assert anon.request("GET", C + "/init", auth=False) == {"status": "finished"}  # no INIT_PASSWORD
    anon.request("POST", C + "/setup", auth=False, body={"email": ADMIN["admin_email"], "name": "Contract",
                                                         "password": ADMIN["admin_password"], "language": "en-US"})
    assert anon.setup_status() == "finished"
    with pytest.raises(DifyError) as err:
        anon.request("POST", C + "/setup", auth=False, body={"email": "x@example.com", "name": "X",
                                                             "password": "Other-pw-12"})
    # fastopenapi's shape: {"error": {"type": "authorization_error", "message": "Forbidden", "status": 403}}
    assert (err.value.status, err.value.code) == (403, "authorization_error")


def test_login_cookies_csrf_and_refresh(backend, ctx):
    url = backend[0]
    client = DifyClient(url, **ADMIN)
    client.login()
    assert {"access_token", "refresh_token", "csrf_token"} <= set(client.cookies)
    status, _, _ = client.raw("GET", C + "/account/profile")  # cookies without X-CSRF-Token
    assert status == 401
    assert client.request("GET", C + "/account/profile")["email"] == ADMIN["admin_email"]
    assert client.refresh() and client.cookies["access_token"]
    assert client.request("GET", C + "/account/profile")["email"] == ADMIN["admin_email"]
    bad = DifyClient(url, admin_email=ADMIN["admin_email"], admin_password="Wrong-pw-99")
    with pytest.raises(DifyError) as err:
        bad.login()
    assert (err.value.status, err.value.code) == (401, "authentication_failed")
    status, _, body = client.raw("POST", C + "/login", body={"email": ADMIN["admin_email"], "remember_me": True,
                                                            "password": base64.b64encode(
                                                                ADMIN["admin_password"].encode()).decode()})
    assert status == 200 and body["result"] == "success" and "data" not in body  # no token in the body
    ctx["client"] = client


def test_workspace_is_post_only(backend, ctx):
    client = ctx["client"]
    status, _, _ = client.raw("GET", C + "/workspaces/current", headers=client._auth_headers())
    assert status == 405
    ws = client.request("POST", C + "/workspaces/current", safe=True)
    assert re.match(r"^[0-9a-f-]{36}$", ws["id"])


def test_offline_plugin_install(backend, ctx, plugin_packages):
    client = ctx["client"]
    pkg = open(plugin_packages[OAC_ID], "rb").read()
    uploaded = client.upload(C + "/workspaces/current/plugin/upload/pkg", "pkg", "oac.difypkg", pkg)
    uid = uploaded["unique_identifier"]
    assert re.match(r"^langgenius/openai_api_compatible:0\.0\.63@[0-9a-f]{64}$", uid), uid
    answer = client.request("POST", C + "/workspaces/current/plugin/install/pkg",
                            body={"plugin_unique_identifiers": [uid]})
    assert set(answer) >= {"all_installed", "task_id"}
    deadline = time.time() + 300
    seen = set()
    while not answer["all_installed"]:
        task = client.request("GET", C + "/workspaces/current/plugin/tasks/%s" % answer["task_id"])["task"]
        seen.add(task["status"])
        assert task["plugins"][0]["plugin_unique_identifier"] == uid
        if task["status"] in ("success", "failed"):
            assert task["status"] == "success", task
            break
        assert time.time() < deadline
        time.sleep(0.5)
    assert seen <= {"running", "success"}, seen  # a task starts running, never pending
    plugins = client.request("GET", C + "/workspaces/current/plugin/list", query={"page": 1, "page_size": 256})
    (plugin,) = plugins["plugins"]
    assert (plugin["plugin_id"], plugin["version"], plugin["source"]) == (OAC_ID, "0.0.63", "package")
    assert plugin["plugin_unique_identifier"] == uid and plugin["installation_id"]
    assert plugins["total"] == 1


def test_provider_schema_and_model_credentials(backend, ctx):
    client, creds = ctx["client"], backend[2]
    providers = client.request("GET", C + "/workspaces/current/model-providers",
                               query={"model_type": "text-embedding"})["data"]
    (prov,) = [p for p in providers if p["provider"] == P]
    fields = {(f["variable"], tuple(c["value"] for c in f.get("show_on") or [])): f
              for f in prov["model_credential_schema"]["credential_form_schemas"]}
    assert fields[("max_chunks", ("text-embedding",))]["required"] is True
    assert fields[("context_size", ("rerank",))]["required"] is True
    assert fields[("api_key", ())]["type"] == "secret-input"
    path = C + "/workspaces/current/model-providers/%s/models/credentials" % P
    emb = dict(creds["text-embedding"], api_key="sk-contract-0123456789", invoke_timeout="60")
    client.request("POST", path, body={"model": "tiny-embed", "model_type": "text-embedding", "credentials": emb})
    got = client.request("GET", path, query={"model": "tiny-embed", "model_type": "text-embedding"})
    assert got["current_credential_id"]
    assert "invoke_timeout" not in got["credentials"]  # not in the schema: dropped
    assert got["credentials"]["api_key"] == "sk-con" + "*" * 12 + "89"  # obfuscated like Dify
    assert got["credentials"]["max_chunks"] == emb["max_chunks"]
    with pytest.raises(DifyError) as err:
        missing = dict(creds["rerank"])
        del missing["context_size"]
        client.request("POST", path, body={"model": "r", "model_type": "rerank", "credentials": missing})
    assert err.value.status == 400
    for mtype, name in (("llm", "tiny-chat"), ("rerank", "tiny-rerank")):
        client.request("POST", path, body={"model": name, "model_type": mtype, "credentials": creds[mtype]})
    dm = C + "/workspaces/current/default-model"
    client.request("POST", dm, body={"model_settings": [
        {"model_type": "llm", "provider": P, "model": "tiny-chat"},
        {"model_type": "text-embedding", "provider": P, "model": "tiny-embed"}]})
    data = client.request("GET", dm, query={"model_type": "text-embedding"})["data"]
    assert (data["provider"]["provider"], data["model"], data["model_type"]) == (P, "tiny-embed", "text-embedding")


def test_keys_datasets_apps_and_service_api(backend, ctx):
    client = ctx["client"]
    ds_key = client.request("POST", C + "/datasets/api-keys")
    assert ds_key["token"].startswith("dataset-")
    assert [k["id"] for k in client.request("GET", C + "/datasets/api-keys")["data"]] == [ds_key["id"]]
    body = {"name": "Contract KB", "indexing_technique": "high_quality", "embedding_model": "tiny-embed",
            "embedding_model_provider": P, "retrieval_model": {
                "search_method": "semantic_search", "reranking_enable": False, "top_k": 3,
                "score_threshold_enabled": False, "score_threshold": None}}
    ds = client.service_request("POST", "/v1/datasets", ds_key["token"], body=body)
    listed = client.service_request("GET", "/v1/datasets", ds_key["token"],
                                    query={"keyword": "Contract", "page": 1, "limit": 100})
    assert [d["id"] for d in listed["data"]] == [ds["id"]]
    got = listed["data"][0]
    assert (got["embedding_model"], got["embedding_model_provider"]) == ("tiny-embed", P)
    assert got["retrieval_model_dict"]["search_method"] == "semantic_search"
    with pytest.raises(DifyError) as err:
        client.service_request("POST", "/v1/datasets", ds_key["token"], body=body)
    assert (err.value.status, err.value.code) == (409, "dataset_name_duplicate")
    patched = client.service_request("PATCH", "/v1/datasets/%s" % ds["id"], ds_key["token"], body={
        "name": "Contract KB", "retrieval_model": dict(body["retrieval_model"], top_k=5)})
    assert patched["retrieval_model_dict"]["top_k"] == 5
    app = client.request("POST", C + "/apps", body={"name": "Contract app", "mode": "chat", "icon_type": "emoji",
                                                    "icon": "\U0001F916", "icon_background": "#FFEAD5"})
    client.request("POST", C + "/apps/%s/model-config" % app["id"], body={
        "pre_prompt": "Answer.", "model": {"provider": P, "name": "tiny-chat", "mode": "chat",
                                           "completion_params": {}},
        "dataset_configs": {"retrieval_model": "multiple", "top_k": 3, "reranking_enable": False,
                            "datasets": {"datasets": [{"dataset": {"enabled": True, "id": ds["id"]}}]}},
        "retriever_resource": {"enabled": True}, "agent_mode": {"enabled": False, "tools": []},
        "user_input_form": [], "opening_statement": "", "suggested_questions": []})
    detail = client.request("GET", C + "/apps/%s" % app["id"])
    assert detail["mode"] == "chat" and detail["site"]["access_token"]
    assert detail["model_config"]["model"]["name"] == "tiny-chat"
    ids = [d["dataset"]["id"] for d in detail["model_config"]["dataset_configs"]["datasets"]["datasets"]]
    assert ids == [ds["id"]]
    key = client.request("POST", C + "/apps/%s/api-keys" % app["id"])
    assert key["token"].startswith("app-")
    params = client.service_request("GET", "/v1/parameters", key["token"])
    assert "opening_statement" in params and "user_input_form" in params
    with pytest.raises(DifyError) as err:
        client.service_request("GET", "/v1/parameters", "app-not-a-key")
    assert err.value.status == 401
