"""Verify the model_servers role's native Infinity backend (testinfra, run by `molecule verify`).

Two Infinity servers really run under systemd on the Debian 12 test host and answer over HTTP on
the machine's loopback (test hosts share the machine's network): the real all-MiniLM-L6-v2
(embeddings) and a tiny random cross-encoder (rerank). Requests go to the URLs the role hands
to Dify (model_servers_dify_endpoints, written to a file by converge.yml).
"""

import json
import os
import sys

import pytest
import testinfra

sys.path.insert(0, os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "molecule", "shared"))
from model_http import cosine, post  # noqa: E402 - shared with the other model server scenario

INVENTORY_FILE = os.environ["MOLECULE_INVENTORY_FILE"]
HOST = testinfra.get_host(f"ansible://msi-debian12?ansible_inventory={INVENTORY_FILE}")
PORTS = {"embedding": 17261, "rerank": 17262}


@pytest.fixture(scope="module")
def endpoints():
    data = json.loads(HOST.file("/var/tmp/msi-endpoints.json").content_string)
    return {e["name"]: e for e in data}


@pytest.mark.parametrize("name", ["embedding", "rerank"])
def test_units_run_enabled_under_the_service_user(name):
    svc = HOST.service(f"model-server-{name}")
    assert svc.is_running
    assert svc.is_enabled
    pid = HOST.check_output(f"systemctl show -p MainPID --value model-server-{name}").strip()
    assert pid != "0"
    assert HOST.check_output(f"ps -o user= -p {pid}").strip() == "model-servers"
    unit = HOST.file(f"/etc/systemd/system/model-server-{name}.service").content_string
    assert "/opt/model-servers/venvs/infinity/bin/infinity_emb v2" in unit


@pytest.mark.parametrize("name", ["embedding", "rerank"])
def test_bound_to_loopback_only(name):
    port = PORTS[name]
    assert HOST.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not HOST.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not HOST.socket(f"tcp://:::{port}").is_listening


def test_cpu_torch_from_the_local_wheel():
    out = HOST.check_output(
        "/opt/model-servers/venvs/infinity/bin/python -c 'import torch; print(torch.__version__)'")
    assert out.strip() == "2.13.0+cpu"


def test_endpoints_for_dify(endpoints):
    emb, rerank = endpoints["embedding"], endpoints["rerank"]
    assert emb["model_type"] == "text-embedding" and rerank["model_type"] == "rerank"
    assert emb["credentials"]["endpoint_url"] == "http://127.0.0.1:17261/v1"
    assert rerank["credentials"]["endpoint_url"] == "http://127.0.0.1:17262/v1"
    assert emb["credentials"]["endpoint_model_name"] == "all-minilm-l6-v2"
    assert rerank["credentials"]["endpoint_model_name"] == "tiny-reranker"


def test_embeddings_have_the_model_dimension_and_meaning(endpoints):
    cred = endpoints["embedding"]["credentials"]
    texts = [
        "A cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "The stock market fell sharply today.",
        "Interest rates were raised by the central bank.",
    ]
    out = post(cred["endpoint_url"] + "/embeddings", {"model": cred["endpoint_model_name"], "input": texts})
    vecs = [d["embedding"] for d in sorted(out["data"], key=lambda d: d["index"])]
    assert len(vecs) == 4
    assert all(len(v) == 384 for v in vecs)  # all-MiniLM-L6-v2's dimension
    related_pets = cosine(vecs[0], vecs[1])
    related_money = cosine(vecs[2], vecs[3])
    unrelated = max(cosine(vecs[0], vecs[2]), cosine(vecs[1], vecs[3]))
    assert related_pets > unrelated + 0.2, (related_pets, unrelated)
    assert related_money > unrelated, (related_money, unrelated)


def test_rerank_scores_every_document(endpoints):
    cred = endpoints["rerank"]["credentials"]
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "The Eiffel Tower is in Paris.",
            "Rust is a programming language."]
    out = post(cred["endpoint_url"] + "/rerank", {
        "model": cred["endpoint_model_name"], "query": "What is the capital of France?",
        "documents": docs, "return_documents": False})
    results = out["results"]
    assert sorted(r["index"] for r in results) == list(range(len(docs)))
    assert all(0.0 <= r["relevance_score"] <= 1.0 for r in results), results

