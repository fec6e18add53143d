"""The dify_bootstrap role against REAL Dify 1.15.0 (tests/real_dify), via ansible-runner.

In file order (one Dify for the session): check mode on a fresh Dify, the first converge, a no-op
re-run, check mode on the converged Dify, a document indexed by the real worker through the real
embedding path and answered by the chat app, then behaviours that change state (lockout, plugin
version change) last.
"""

import base64
import json
import os
import stat
import time
import urllib.request

import pytest

from ansible.module_utils.dify_client import DifyClient, DifyError, DifyLoginLocked
from conftest import ADMIN_EMAIL, OAC_ID, TEI_ID, build_package, module_playbook, stored_credentials

P = "langgenius/openai_api_compatible/openai_api_compatible"
TEI = "langgenius/huggingface_tei/huggingface_tei"
C = "/console/api"
# model -> (type, provider): the LLM straight through openai_api_compatible, embedding and rerank
# through their TEI-compatible fronts and huggingface_tei (the model_servers role's default path)
MODELS = {"tiny-chat": ("llm", P), "tiny-embed": ("text-embedding", TEI), "tiny-rerank": ("rerank", TEI)}


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def console(real_dify, creds_file):
    password = stored_credentials(creds_file)["admin_password"]
    return DifyClient(real_dify.url, admin_email=ADMIN_EMAIL, admin_password=password, retry_delay=0.2)


def snapshot(client):
    """What the bootstrap manages, as Dify reports it (to prove a run wrote nothing)."""
    apps = client.request("GET", C + "/apps", query={"page": 1, "limit": 100})["data"]
    out = {
        "plugins": sorted((p["plugin_id"], p["version"]) for p in client.request(
            "GET", C + "/workspaces/current/plugin/list", query={"page": 1, "page_size": 256})["plugins"]),
        "apps": sorted((a["id"], a["name"], a.get("updated_at")) for a in apps),
        "app_keys": sorted(k["id"] for a in apps for k in client.request(
            "GET", C + "/apps/%s/api-keys" % a["id"])["data"]),
        "dataset_keys": sorted(k["id"] for k in client.request("GET", C + "/datasets/api-keys")["data"]),
        "defaults": [client.request("GET", C + "/workspaces/current/default-model",
                                    query={"model_type": t}).get("data") for t in ("llm", "text-embedding", "rerank")],
    }
    for name, (mtype, provider) in MODELS.items():
        out[name] = model_credentials(client, name)
    return out


def model_credentials(client, name):
    mtype, provider = MODELS[name]
    cred = client.request("GET", C + "/workspaces/current/model-providers/%s/models/credentials" % provider,
                          query={"model": name, "model_type": mtype})
    return cred.get("current_credential_id"), cred.get("credentials")


@pytest.fixture(scope="module")
def state():
    return {}


def test_check_mode_on_a_fresh_dify_changes_nothing(real_dify, run_bootstrap, bootstrap_vars):
    run = run_bootstrap(check=True)
    assert run.rc == 0, run.failures()
    assert run.changed.get("localhost", 0) > 0  # it reports what it would do
    assert DifyClient(real_dify.url).setup_status() == "not_started"
    assert not os.path.exists(bootstrap_vars["dify_bootstrap_credentials_file"])
    assert not os.path.exists(bootstrap_vars["dify_bootstrap_facts_dir"])


def test_first_run_converges(real_dify, run_bootstrap, bootstrap_vars, state):
    run = run_bootstrap(verbose=True)
    assert run.rc == 0, run.failures()
    assert run.changed.get("localhost", 0) > 0
    creds = bootstrap_vars["dify_bootstrap_credentials_file"]
    client = console(real_dify, creds)
    state["client"] = client
    plugins = client.request("GET", C + "/workspaces/current/plugin/list", query={"page": 1, "page_size": 256})
    assert sorted((p["plugin_id"], p["version"], p["source"]) for p in plugins["plugins"]) == [
        (TEI_ID, "0.1.10", "package"), (OAC_ID, "0.0.63", "package")]
    cred_id, creds_llm = model_credentials(client, "tiny-chat")
    assert cred_id and creds_llm["endpoint_url"] == "http://127.0.0.1:%d/v1" % real_dify.ports["llm"]
    cred_id, creds_emb = model_credentials(client, "tiny-embed")
    assert cred_id and creds_emb["server_url"] == "http://127.0.0.1:%d" % real_dify.ports["embedding_tei"]
    # Dify keeps what huggingface_tei read from the front's /info: the batch size it embeds with
    assert (creds_emb.get("max_chunks"), creds_emb.get("context_size")) == (8, 512), creds_emb
    assert model_credentials(client, "tiny-rerank")[0]
    defaults = {t: client.request("GET", C + "/workspaces/current/default-model", query={"model_type": t})["data"]
                for t in ("llm", "text-embedding", "rerank")}
    assert {t: (d["provider"]["provider"], d["model"]) for t, d in defaults.items()} == {
        "llm": (P, "tiny-chat"), "text-embedding": (TEI, "tiny-embed"), "rerank": (TEI, "tiny-rerank")}
    # one file on the Dify host (here: this machine), 0600, beside the stack's secrets
    stored = stored_credentials(creds)
    assert mode_of(creds) == 0o600
    assert sorted(stored) == ["admin_email", "admin_password", "app_api_keys", "dataset_api_key"]
    ds_key, app_key = stored["dataset_api_key"], stored["app_api_keys"]["Assistant"]
    assert ds_key.startswith("dataset-") and app_key.startswith("app-") and list(stored["app_api_keys"]) == ["Assistant"]
    datasets = client.service_request("GET", "/v1/datasets", ds_key, query={"page": 1, "limit": 100})["data"]
    (ds,) = datasets
    assert ds["name"] == "Documents" and ds["indexing_technique"] == "high_quality"
    assert (ds["embedding_model"], ds["embedding_model_provider"]) == ("tiny-embed", TEI)
    rm = ds["retrieval_model_dict"]
    assert rm["reranking_enable"] and rm["reranking_model"] == {"reranking_provider_name": TEI,
                                                                "reranking_model_name": "tiny-rerank"}
    apps = client.request("GET", C + "/apps", query={"page": 1, "limit": 100})["data"]
    (app,) = apps
    detail = client.request("GET", C + "/apps/%s" % app["id"])
    assert detail["model_config"]["model"]["name"] == "tiny-chat"
    assert [d["dataset"]["id"] for d in detail["model_config"]["dataset_configs"]["datasets"]["datasets"]] == [ds["id"]]
    password = stored["admin_password"]
    for secret in (password, ds_key, app_key, base64.b64encode(password.encode()).decode()):
        assert secret not in run.stdout
    assert real_dify.public_url + "/chat/" in run.stdout  # the web app URL is reported
    # the contract (dify_bootstrap.fact) the report and ingest.yml read later: URLs and paths, no secret
    fact_file = os.path.join(bootstrap_vars["dify_bootstrap_facts_dir"], "dify_bootstrap.fact")
    with open(fact_file) as fh:
        fact = json.load(fh)
    assert mode_of(fact_file) == 0o644
    assert fact == {"url": real_dify.url, "public_url": real_dify.public_url, "admin_email": stored["admin_email"],
                    "credentials_file": creds, "app_urls": {"Assistant": fact["app_urls"]["Assistant"]}}
    assert fact["app_urls"]["Assistant"].startswith(real_dify.public_url + "/chat/")
    for secret in (password, ds_key, app_key):
        assert secret not in json.dumps(fact)
    # https public URLs: Dify names its cookies __Host-*, which the client sends itself over plain http
    assert "__Host-access_token" in client.cookies
    state.update(ds=ds, app=app, ds_key=ds_key, app_key=app_key, snapshot=snapshot(client))


def test_second_run_changes_nothing(real_dify, run_bootstrap, state):
    run = run_bootstrap()
    assert run.rc == 0, run.failures()
    assert run.changed == {}, run.changed_tasks()
    assert snapshot(state["client"]) == state["snapshot"]


def test_check_mode_on_the_converged_dify_changes_nothing(real_dify, run_bootstrap, state):
    run = run_bootstrap(check=True)
    assert run.rc == 0, run.failures()
    assert run.changed == {}, run.changed_tasks()
    assert snapshot(state["client"]) == state["snapshot"]


def wait_indexed(client, key, dataset_id, batch, timeout=300):
    deadline = time.time() + timeout
    while True:
        data = client.service_request("GET", "/v1/datasets/%s/documents/%s/indexing-status" % (dataset_id, batch),
                                      key)["data"]
        if all(d["indexing_status"] in ("completed", "error") for d in data):
            return data
        assert time.time() < deadline, data
        time.sleep(1)


FACT = ("The Zorblax telescope in Patagonia observes the Lyra constellation every night. "
        "Its mirror is eleven meters wide and was polished in Osaka.")


def test_document_is_indexed_retrieved_and_answered(real_dify, state):
    client, key, ds = state["client"], state["ds_key"], state["ds"]
    created = client.service_request("POST", "/v1/datasets/%s/document/create-by-text" % ds["id"], key, body={
        "name": "zorblax.md", "text": FACT, "indexing_technique": "high_quality",
        "process_rule": {"mode": "automatic"}, "doc_form": "text_model"})
    (status,) = wait_indexed(client, key, ds["id"], created["batch"])
    assert status["indexing_status"] == "completed", status
    assert status["completed_segments"] == status["total_segments"] >= 1
    hits = client.service_request("POST", "/v1/datasets/%s/retrieve" % ds["id"], key,
                                  body={"query": "Which constellation does the Zorblax telescope observe?"},
                                  safe=True)["records"]
    assert hits and hits[0]["segment"]["document"]["name"] == "zorblax.md", hits
    answer = client.service_request("POST", "/v1/chat-messages", state["app_key"], body={
        "inputs": {}, "query": "Which constellation does the Zorblax telescope observe?",
        "response_mode": "blocking", "user": "integration-test"})
    assert answer["answer"]  # the tiny LLM answers gibberish; retrieval is what is checked
    resources = answer["metadata"]["retriever_resources"]
    assert "zorblax.md" in [r["document_name"] for r in resources], resources


WORDS = ("telescope mirror observatory constellation nebula galaxy spectrum photon detector calibration "
         "aperture focal length wavelength infrared ultraviolet astronomer satellite orbit gravity comet "
         "asteroid planet eclipse horizon latitude longitude azimuth altitude refraction diffraction").split()


def test_a_chunk_longer_than_the_embedding_context_indexes_and_reranks(real_dify, state):
    """Issue 12 item 5: one chunk of ~700 BERT tokens (the embedding and rerank models take 512) goes
    through the real plugin path: the TEI-compatible fronts truncate instead of the server refusing it."""
    client, key, ds = state["client"], state["ds_key"], state["ds"]
    # under the 4000-character chunk size (one chunk), well over 512 BERT tokens (words and numbers)
    text = "The quasar beacon kfx_longchunk " + " ".join("%s %d" % (WORDS[(i * 7) % len(WORDS)], i)
                                                       for i in range(300)) + "."
    created = client.service_request("POST", "/v1/datasets/%s/document/create-by-text" % ds["id"], key, body={
        "name": "long-chunk.md", "text": text, "indexing_technique": "high_quality", "doc_form": "text_model",
        "process_rule": {"mode": "custom", "rules": {"pre_processing_rules": [],
                                                     "segmentation": {"separator": "\n\n\n", "max_tokens": 4000,
                                                                      "chunk_overlap": 0}}}})
    (status,) = wait_indexed(client, key, ds["id"], created["batch"])
    assert status["indexing_status"] == "completed", status
    assert status["total_segments"] == 1  # one chunk: longer than the models' context
    hits = client.service_request("POST", "/v1/datasets/%s/retrieve" % ds["id"], key,
                                  body={"query": "quasar beacon telescope mirror"}, safe=True)["records"]
    assert "long-chunk.md" in [h["segment"]["document"]["name"] for h in hits], hits  # reranked, not refused
    # and the chunk really is longer than the models' 512 tokens (llama.cpp's own tokenizer)
    req = urllib.request.Request("http://127.0.0.1:%d/tokenize" % real_dify.ports["embedding"],
                                 json.dumps({"content": text}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert len(json.load(resp)["tokens"]) > 600


def test_expired_access_token_mid_run_is_refreshed(real_dify, state):
    client = state["client"]
    client.request("GET", C + "/account/profile")
    name = "__Host-access_token" if "__Host-access_token" in client.cookies else "access_token"
    client.cookies[name] = real_dify.expired_access_token(client.cookies[name])
    mark = len(client.calls)
    profile = client.request("GET", C + "/account/profile")
    assert profile["email"] == ADMIN_EMAIL
    assert client.calls[mark:] == [("GET", C + "/account/profile", 401), ("POST", C + "/refresh-token", 200),
                                   ("GET", C + "/account/profile", 200)]


def test_unknown_credential_field_fails_before_any_write(real_dify, ansible_run, bootstrap_vars, state):
    """Real Dify drops fields the schema lacks (so a naive module would re-PUT on every run)."""
    args = {"url": real_dify.url, "admin_email": ADMIN_EMAIL,
            "admin_password": state["client"].password, "provider": P, "model": "tiny-chat", "model_type": "llm",
            "credentials": dict(real_dify.model_endpoints()[0]["credentials"], invoke_timeout="60")}
    run = ansible_run(module_playbook("dify_model", args))
    assert run.rc != 0
    ((_task, msg),) = run.failures()
    assert "invoke_timeout not in the schema (Dify would drop them)" in msg
    assert snapshot(state["client"]) == state["snapshot"]
    # what Dify itself does with such a field: accepts the write and drops it
    path = C + "/workspaces/current/model-providers/%s/models/credentials" % P
    creds = dict(real_dify.model_endpoints()[0]["credentials"], invoke_timeout="60")
    state["client"].request("POST", path, body={"model": "tiny-extra", "model_type": "llm", "credentials": creds})
    kept = state["client"].request("GET", path, query={"model": "tiny-extra", "model_type": "llm"})["credentials"]
    assert "invoke_timeout" not in kept and kept["endpoint_url"] == creds["endpoint_url"]
    state["client"].request("DELETE", C + "/workspaces/current/model-providers/%s/models" % P,
                            body={"model": "tiny-extra", "model_type": "llm"})


def test_missing_required_field_fails_before_any_http(run_bootstrap, real_dify):
    endpoints = real_dify.model_endpoints(path="openai")
    del endpoints[1]["credentials"]["max_chunks"]
    run = run_bootstrap({"model_servers_dify_endpoints": endpoints, "dify_bootstrap_url": "http://127.0.0.1:1"})
    assert run.rc != 0
    ((task, msg),) = run.failures()
    assert "dify_bootstrap_model_endpoints" in msg and "max_chunks required" in msg, msg


def test_login_lockout_after_more_than_five_failures(real_dify, state):
    """Dify 1.15.0 counts failures in Redis and refuses once the count is above 5."""
    wrong = DifyClient(real_dify.url, admin_email=ADMIN_EMAIL, admin_password="Wrong-pass-1", retry_delay=0.1)
    key = "login_error_rate_limit:%s" % ADMIN_EMAIL
    try:
        for attempt in range(6):
            with pytest.raises(DifyError) as err:
                wrong.login()
            assert err.value.status == 401, (attempt, err.value.msg)
            assert "more than 5 attempts failed" in err.value.msg
        right = DifyClient(real_dify.url, admin_email=ADMIN_EMAIL, admin_password=state["client"].password)
        with pytest.raises(DifyLoginLocked) as err:
            right.login()
        assert err.value.status == 429 and key in err.value.msg
    finally:
        real_dify.redis("DEL", key)
    DifyClient(real_dify.url, admin_email=ADMIN_EMAIL, admin_password=state["client"].password).login()


def test_plugin_version_change(real_dify, run_bootstrap, plugin_packages, state):
    """A new package version of an installed plugin: Dify 1.15.0 cannot upgrade a package install in
    place, so dify_plugin reinstalls it the way Dify's UI does; the models are registered again."""
    newer = build_package(os.path.join(plugin_packages["_models"], "openai_api_compatible"),
                          plugin_packages["_dir"], version="0.0.64")
    run = run_bootstrap({"dify_bootstrap_plugin_packages": {OAC_ID: newer}})
    assert run.rc == 0, run.failures()
    by_id = {r["item"]: r for r in run.results("Install the provider plugins")}
    assert not by_id[TEI_ID]["changed"]
    res = by_id[OAC_ID]
    assert res["changed"] and res["method"] == "reinstall" and res["version_change"] == "0.0.63 -> 0.0.64"
    after = snapshot(state["client"])
    assert after["plugins"] == [(TEI_ID, "0.1.10"), (OAC_ID, "0.0.64")]
    for name in MODELS:
        assert after[name][0], name  # every model is still (or again) registered
    again = run_bootstrap({"dify_bootstrap_plugin_packages": {OAC_ID: newer}})
    assert again.rc == 0 and again.changed == {}, again.changed_tasks()
    # retrieval still works through the reinstalled plugin
    hits = state["client"].service_request("POST", "/v1/datasets/%s/retrieve" % state["ds"]["id"], state["ds_key"],
                                           body={"query": "Zorblax telescope"}, safe=True)["records"]
    assert hits
