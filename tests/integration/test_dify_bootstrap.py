"""The dify_bootstrap role against the Dify API stand-in (a test double), via ansible-runner."""

import base64
import os
import stat

import pytest

P = "langgenius/openai_api_compatible/openai_api_compatible"


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_converge_then_idempotent_then_check(standin, run_role, tmp_path):
    first = run_role(standin.url, verbose=True)
    assert first.rc == 0, first.failures()
    assert first.changed.get("localhost", 0) > 0
    st = standin.state.store
    assert standin.state.is_setup()
    assert [p["plugin_id"] for p in st.list("plugins")] == ["langgenius/openai_api_compatible"]
    models = sorted((m["model_type"], m["model"]) for m in st.list("model_credentials"))
    assert models == [("llm", "tiny-chat"), ("rerank", "tiny-rerank"), ("text-embedding", "tiny-embed")]
    embed = [m for m in st.list("model_credentials") if m["model"] == "tiny-embed"][0]
    assert embed["credentials"] == {"endpoint_url": "http://host.docker.internal:17202/v1",
                                    "endpoint_model_name": "tiny-embed", "context_size": "512", "max_chunks": "32"}
    assert [m for m in st.list("model_credentials") if m["model"] == "tiny-rerank"][0]["credentials"]["api_key"] \
        == "sk-local-rerank-1"
    assert {t: st.get("default_models", t)["model"] for t in ("llm", "text-embedding", "rerank")} == {
        "llm": "tiny-chat", "text-embedding": "tiny-embed", "rerank": "tiny-rerank"}
    (ds,) = st.list("datasets")
    assert ds["name"] == "Documents" and ds["indexing_technique"] == "high_quality"
    assert (ds["embedding_model"], ds["embedding_model_provider"]) == ("tiny-embed", P)
    assert ds["retrieval_model_dict"]["reranking_model"] == {"reranking_provider_name": P,
                                                             "reranking_model_name": "tiny-rerank"}
    (app,) = st.list("apps")
    assert app["name"] == "Assistant" and app["model_config"]["model"]["name"] == "tiny-chat"
    assert app["model_config"]["dataset_configs"]["datasets"]["datasets"][0]["dataset"]["id"] == ds["id"]
    (app_key,) = st.list("app_keys")
    (ds_key,) = st.list("dataset_keys")
    creds = tmp_path / "creds"
    assert mode_of(creds) == 0o700
    files = sorted(os.listdir(creds))
    assert files == ["admin_password", "app_api_key_Assistant", "dataset_api_key"]
    assert all(mode_of(creds / f) == 0o600 for f in files)
    assert (creds / "app_api_key_Assistant").read_text() == app_key["token"]
    assert (creds / "dataset_api_key").read_text() == ds_key["token"]
    password = (creds / "admin_password").read_text()
    assert len(password) == 28
    login = [r for r in standin.state.requests if r["path"] == "/console/api/login"][-1]
    assert base64.b64decode(login["json"]["password"]).decode() == password
    # no secret in the (verbose) output
    for secret in (password, app_key["token"], ds_key["token"], "sk-local-rerank-1"):
        assert secret not in first.stdout
    assert "https://dify.example.test/chat/" in first.stdout  # the web app URL is reported

    mark = len(standin.state.requests)
    second = run_role(standin.url)
    assert second.rc == 0, second.failures()
    assert second.changed == {}, second.changed_tasks()
    assert standin.mutations(mark) == []
    assert [k["token"] for k in st.list("app_keys")] == [app_key["token"]]  # no new key minted

    mark = len(standin.state.requests)
    check = run_role(standin.url, check=True)
    assert check.rc == 0, check.failures()
    assert check.changed == {}, check.changed_tasks()
    assert standin.mutations(mark) == []


def test_check_mode_on_fresh_dify_changes_nothing(standin, run_role, tmp_path):
    run = run_role(standin.url, check=True)
    assert run.rc == 0, run.failures()
    assert run.changed.get("localhost", 0) > 0  # it reports what it would do
    assert not standin.state.is_setup()
    assert standin.mutations() == []
    assert not (tmp_path / "creds").exists()


def test_check_mode_with_dify_not_answering(run_role):
    run = run_role("http://127.0.0.1:1", check=True)
    assert run.rc == 0, run.failures()


@pytest.mark.parametrize("extravars,needle", [
    ({"dify_bootstrap_admin_email": "admin-at-example"}, "dify_bootstrap_admin_email"),
    ({"dify_bootstrap_admin_password": "weakpass"}, "dify_bootstrap_admin_password"),
    ("unknown-model-type", "model_type must be one of"),
    ({"dify_bootstrap_datasets": [{"name": "N" * 41}]}, "dify_bootstrap_datasets"),
], ids=["bad-email", "weak-password", "unknown-model-type", "dataset-name-41"])
def test_invalid_input_fails_before_any_http(standin, run_role, endpoints, extravars, needle):
    if extravars == "unknown-model-type":
        endpoints[0]["model_type"] = "chat"
        extravars = {"model_servers_dify_endpoints": endpoints}
    run = run_role(standin.url, extravars)
    assert run.rc != 0
    failures = run.failures()
    assert failures, run.stats
    assert needle in failures[0][1], failures
    assert standin.state.requests == []
