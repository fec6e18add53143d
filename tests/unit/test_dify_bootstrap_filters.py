"""plugins/filter/dify_bootstrap.py: endpoint checks, and its schema table against the plugins' YAML."""

import os
import tarfile

import pytest
import yaml

from conftest import ROOT, load_filter
from real_dify.upstream import SHARED_UPSTREAM  # ../shared/upstream, or REAL_DIFY_UPSTREAM_DIR

f = load_filter("dify_bootstrap")
OAC = "langgenius/openai_api_compatible/openai_api_compatible"
TEI = "langgenius/huggingface_tei/huggingface_tei"
PLUGINS_ARCHIVE = os.path.join(SHARED_UPSTREAM, "dify-official-plugins-7af22831-models.tar.gz")


def ep(provider, model_type, **creds):
    return {"provider": provider, "model_type": model_type, "model": "m", "credentials": creds}


@pytest.mark.parametrize("endpoint,problem", [
    (ep(OAC, "llm", endpoint_url="http://h/v1", context_size="4096"), None),
    (ep(OAC, "llm", endpoint_url="http://h/v1"), "llm m (%s): context_size required" % OAC),
    (ep(OAC, "text-embedding", endpoint_url="http://h/v1", context_size="512"), "max_chunks required"),
    (ep(OAC, "rerank", endpoint_url="http://h/v1", context_size="512", max_chunks="8"),
     "max_chunks not in the provider's schema (Dify would drop them)"),
    (ep(TEI, "text-embedding", server_url="http://h", invoke_timeout="60", max_retries="3"), None),
    (ep(TEI, "text-embedding", server_url="http://h"), "invoke_timeout, max_retries required"),
    (ep(TEI, "llm", server_url="http://h"), "the provider serves rerank, text-embedding, not llm"),
    (ep(OAC, "chat"), "model_type must be one of"),
    (ep("someone/other/provider", "llm", anything="x"), None),  # left to dify_model's live check
], ids=["ok", "llm-context", "embed-max-chunks", "rerank-unknown", "tei-ok", "tei-missing", "tei-llm",
        "bad-type", "unknown-provider"])
def test_endpoint_problems(endpoint, problem):
    problems = f.dify_endpoint_problems([endpoint])
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.skipif(not os.path.isfile(PLUGINS_ARCHIVE), reason="upstream plugin archive not beside the project")
def test_table_matches_the_plugins_own_schemas():
    names = {OAC: "openai_api_compatible", TEI: "huggingface_tei"}
    with tarfile.open(PLUGINS_ARCHIVE) as tar:
        for provider, name in names.items():
            member = "dify-official-plugins-7af22831/models/%s/provider/%s.yaml" % (name, name)
            forms = yaml.safe_load(tar.extractfile(member))["model_credential_schema"]["credential_form_schemas"]
            for model_type, (required, optional) in f.PROVIDER_FIELDS[provider].items():
                applies = [x for x in forms if all(c["value"] == model_type for c in x.get("show_on") or []
                                                   if c["variable"] == "__model_type")]
                assert sorted(x["variable"] for x in applies if x.get("required")) == sorted(required), model_type
                assert sorted(set(x["variable"] for x in applies)) == sorted(set(required) | set(optional)), model_type


LLM = {"model_type": "llm", "model": "chat", "provider": OAC, "plugin_id": "langgenius/openai_api_compatible"}
EMB = {"model_type": "text-embedding", "model": "emb", "provider": TEI, "plugin_id": "langgenius/huggingface_tei"}
EMB2 = dict(EMB, model="emb2")
RR = {"model_type": "rerank", "model": "rr", "provider": TEI, "plugin_id": "langgenius/huggingface_tei"}


@pytest.mark.parametrize("endpoints,plugins,defaults,want_plugins,want_defaults", [
    ([LLM, EMB, RR], ["langgenius/openai_api_compatible"], {},
     ["langgenius/openai_api_compatible", "langgenius/huggingface_tei"],
     [("llm", "chat"), ("text-embedding", "emb"), ("rerank", "rr")]),
    ([EMB, EMB2], [], {"text-embedding": "emb2"}, ["langgenius/huggingface_tei"], [("text-embedding", "emb2")]),
    ([EMB, EMB2], [], {"text-embedding": "nope"}, ["langgenius/huggingface_tei"], []),
    ([], ["x/y"], {}, ["x/y"], []),
], ids=["first-of-each-type", "named-default", "unknown-default", "no-endpoints"])
def test_plan_plugins_and_defaults(endpoints, plugins, defaults, want_plugins, want_defaults):
    plan = f.dify_bootstrap_plan(endpoints, plugins, defaults, [], [])
    assert plan["plugins"] == want_plugins
    assert [(d["model_type"], d["model"]) for d in plan["default_models"]] == want_defaults


@pytest.mark.parametrize("entry,want", [
    ({"name": "KB"}, ("emb", TEI, "rr", TEI)),
    ({"name": "KB", "embedding_model": "emb2"}, ("emb2", TEI, "rr", TEI)),
    ({"name": "KB", "reranking_model": ""}, ("emb", TEI, "", "")),
    ({"name": "KB", "reranking_model": "other"}, ("emb", TEI, "other", "")),
    ({"name": "KB", "embedding_model": "missing"}, ("missing", "", "rr", TEI)),
], ids=["defaults", "own-embedding", "rerank-off", "unknown-reranker", "unknown-embedding"])
def test_plan_datasets(entry, want):
    (ds,) = f.dify_bootstrap_plan([LLM, EMB, EMB2, RR], [], {}, [entry], [])["datasets"]
    assert (ds["embedding_model"], ds["embedding_provider"], ds["reranking_model"], ds["reranking_provider"]) == want
    assert ds["name"] == "KB"


@pytest.mark.parametrize("entry,want", [
    ({"name": "A"}, ("chat", OAC, "rr", [], True)),
    ({"name": "A", "model": "other", "datasets": ["KB"], "api_key": False}, ("other", "", "rr", ["KB"], False)),
    ({"name": "A", "reranking_model": ""}, ("chat", OAC, "", [], True)),
], ids=["defaults", "own-model-no-key", "rerank-off"])
def test_plan_apps(entry, want):
    (app,) = f.dify_bootstrap_plan([LLM, EMB, RR], [], {}, [], [entry])["apps"]
    assert (app["model"], app["provider"], app["reranking_model"], app["datasets"], app["api_key"]) == want


def test_plan_without_a_reranker_turns_reranking_off():
    plan = f.dify_bootstrap_plan([LLM, EMB], [], {}, [{"name": "KB"}], [{"name": "A"}])
    assert plan["datasets"][0]["reranking_model"] == "" and plan["apps"][0]["reranking_model"] == ""


@pytest.mark.parametrize("names,contents,want", [
    (["admin_password", "dataset_api_key", "app_api_key_A"], ["pw1\n", "dataset-k", "app-x"],
     {"admin_password": "pw1", "dataset_api_key": "dataset-k"}),
    (["admin_password"], ["  \n"], {}),
    ([], [], {}),
], ids=["imports-two", "blank-ignored", "nothing"])
def test_legacy_credentials(names, contents, want):
    assert f.dify_bootstrap_legacy_credentials(names, contents) == want
