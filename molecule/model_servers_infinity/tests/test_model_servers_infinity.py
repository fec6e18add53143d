"""Verify the model_servers role's native Infinity backend (testinfra, run by `molecule verify`).

Two Infinity servers really run under systemd on the Debian 12 test host and answer over HTTP on
the machine's loopback (test hosts share the machine's network): the real all-MiniLM-L6-v2
(embeddings) and a tiny random cross-encoder (rerank), each behind its TEI-compatible front.
Requests go to the URLs the role hands to Dify (model_servers_dify_endpoints, written to a file by
converge.yml), the way Dify's huggingface_tei plugin sends them.
"""

import json
import math
import os
import sys

import pytest
import testinfra

sys.path.insert(0, os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "molecule", "shared"))
from model_http import cosine, get, metric, post  # noqa: E402 - shared with the other model server scenario

INVENTORY_FILE = os.environ["MOLECULE_INVENTORY_FILE"]
HOST = testinfra.get_host(f"ansible://msi-debian12?ansible_inventory={INVENTORY_FILE}")
PORTS = {"embedding": 17261, "rerank": 17262}           # the fronts
BACKEND_PORTS = {"embedding": 18261, "rerank": 18262}   # Infinity behind them, port + 1000


@pytest.fixture(scope="module")
def endpoints():
    data = json.loads(HOST.file("/var/tmp/msi-endpoints.json").content_string)
    return {e["name"]: e for e in data}


@pytest.mark.parametrize("name", ["embedding", "rerank"])
def test_units_run_enabled_under_the_service_user(name):
    for unit in (f"model-server-{name}", f"model-server-{name}-tei"):
        svc = HOST.service(unit)
        assert svc.is_running, unit
        assert svc.is_enabled, unit
        pid = HOST.check_output(f"systemctl show -p MainPID --value {unit}").strip()
        assert pid != "0"
        assert HOST.check_output(f"ps -o user= -p {pid}").strip() == "model-servers"
    unit = HOST.file(f"/etc/systemd/system/model-server-{name}.service").content_string
    assert "/opt/model-servers/venvs/infinity/bin/infinity_emb v2" in unit
    assert f"--host 127.0.0.1 --port {BACKEND_PORTS[name]}" in unit


@pytest.mark.parametrize("name", ["embedding", "rerank"])
def test_bound_to_loopback_only(name):
    for port in (PORTS[name], BACKEND_PORTS[name]):
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
    for e, port in ((emb, 17261), (rerank, 17262)):
        assert e["plugin_id"] == "langgenius/huggingface_tei"
        assert e["credentials"] == {"server_url": "http://127.0.0.1:%d" % port, "invoke_timeout": "300", "max_retries": "1"}
    assert (emb["model"], rerank["model"]) == ("all-minilm-l6-v2", "tiny-reranker")
    assert (emb["max_batch"], rerank["max_batch"]) == (8, 64)


def test_info_answers_what_huggingface_tei_reads(endpoints):
    emb = get(endpoints["embedding"]["credentials"]["server_url"] + "/info")
    rr = get(endpoints["rerank"]["credentials"]["server_url"] + "/info")
    assert (emb["model_id"], list(emb["model_type"]), emb["max_client_batch_size"]) == ("all-minilm-l6-v2", ["embedding"], 8)
    assert (rr["model_id"], list(rr["model_type"]), rr["max_client_batch_size"]) == ("tiny-reranker", ["reranker"], 64)
    assert emb["max_input_length"] == 1000     # 4 x the 250-character chunks: huggingface_tei never cuts one


def test_embeddings_have_the_model_dimension_and_meaning(endpoints):
    url = endpoints["embedding"]["credentials"]["server_url"]
    texts = [
        "A cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "The stock market fell sharply today.",
        "Interest rates were raised by the central bank.",
    ]
    out = post(url + "/v1/embeddings", {"input": texts})
    vecs = [d["embedding"] for d in sorted(out["data"], key=lambda d: d["index"])]
    assert len(vecs) == 4
    assert all(len(v) == 384 for v in vecs)  # all-MiniLM-L6-v2's dimension
    related_pets = cosine(vecs[0], vecs[1])
    related_money = cosine(vecs[2], vecs[3])
    unrelated = max(cosine(vecs[0], vecs[2]), cosine(vecs[1], vecs[3]))
    assert related_pets > unrelated + 0.2, (related_pets, unrelated)
    assert related_money > unrelated, (related_money, unrelated)


def test_64_texts_are_ceil_64_over_batch_backend_requests(endpoints):
    url = endpoints["embedding"]["credentials"]["server_url"]
    batch = get(url + "/info")["max_client_batch_size"]
    before = metric(url + "/metrics", 'tei_front_backend_requests{path="/v1/embeddings"}')
    got = 0
    for i in range(0, 64, batch):   # Dify's loop over max_chunks
        got += len(post(url + "/v1/embeddings", {"input": ["text %d" % j for j in range(i, min(i + batch, 64))]})["data"])
    after = metric(url + "/metrics", 'tei_front_backend_requests{path="/v1/embeddings"}')
    assert got == 64 and after - before == math.ceil(64 / batch) == 8


def test_rerank_scores_every_document_in_0_1(endpoints):
    url = endpoints["rerank"]["credentials"]["server_url"]
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "The Eiffel Tower is in Paris.",
            "Rust is a programming language."]
    before = metric(url + "/metrics", 'tei_front_backend_requests{path="/v1/rerank"}')
    out = post(url + "/rerank", {"query": "What is the capital of France?", "texts": docs, "return_text": True})
    assert sorted(r["index"] for r in out) == list(range(len(docs)))
    assert all(0.0 < r["score"] < 1.0 for r in out), out
    assert [r["score"] for r in out] == sorted((r["score"] for r in out), reverse=True)
    assert all(r["text"] == docs[r["index"]] for r in out)
    assert len(post(url + "/rerank", {"query": "q", "texts": ["doc %d" % i for i in range(64)]})) == 64
    assert metric(url + "/metrics", 'tei_front_backend_requests{path="/v1/rerank"}') - before == 2
    # Infinity itself, behind the front, on loopback
    direct = post("http://127.0.0.1:%d/v1/rerank" % BACKEND_PORTS["rerank"],
                  {"model": "tiny-reranker", "query": "q", "documents": ["a", "b"], "return_documents": False})
    assert len(direct["results"]) == 2
