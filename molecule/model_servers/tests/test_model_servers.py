"""Verify the model_servers role (testinfra, run by `molecule verify`).

Native host: the servers really run (llama.cpp through xllamacpp) and answer over HTTP on the
machine's loopback (test hosts share the machine's network). Render host: the compose project
of the container runtime, validated by a real compose v2 binary.
"""

import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest
import testinfra
import testinfra.utils.ansible_runner
import yaml

sys.path.insert(0, os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "molecule", "shared"))
from model_http import cosine, post  # noqa: E402 - shared with the other model server scenario

INVENTORY_FILE = os.environ["MOLECULE_INVENTORY_FILE"]
INVENTORY = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY_FILE)
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
NATIVE_HOSTS = INVENTORY.get_hosts("native_hosts")
RENDER_HOSTS = INVENTORY.get_hosts("render_hosts")
DEFAULTS = yaml.safe_load((PROJECT / "roles/model_servers/defaults/main.yml").read_text())

LLM = "http://127.0.0.1:17201"
EMB = "http://127.0.0.1:17202"
RERANK = "http://127.0.0.2:17203"


def get_host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY_FILE}")


def endpoints(host):
    return json.loads(host.file("/var/tmp/ms-endpoints.json").content_string)


# ------------------------------------------------------------------ native host
@pytest.fixture(scope="module", params=NATIVE_HOSTS)
def native(request):
    return get_host(request.param)


@pytest.mark.parametrize("name", ["llm", "embedding", "rerank"])
def test_units_run_enabled_under_the_service_user(native, name):
    svc = native.service(f"model-server-{name}")
    assert svc.is_running
    assert svc.is_enabled
    pid = native.check_output(f"systemctl show -p MainPID --value model-server-{name}")
    assert native.check_output(f"ps -o user= -p {pid}").strip() == "model-servers"
    user = native.user("model-servers")
    assert user.shell == "/usr/sbin/nologin"


def test_bound_addresses_as_configured(native):
    assert native.socket("tcp://127.0.0.1:17201").is_listening
    assert native.socket("tcp://127.0.0.1:17202").is_listening
    assert native.socket("tcp://127.0.0.2:17203").is_listening
    for port in (17201, 17202, 17203):
        assert not native.socket(f"tcp://0.0.0.0:{port}").is_listening
    # the reranker is bound to 127.0.0.2 only
    assert not native.socket("tcp://127.0.0.1:17203").is_listening


def test_config_files_and_secrets_modes(native):
    for name in ("llm", "embedding", "rerank"):
        cfg = native.file(f"/etc/model-servers/{name}.json")
        assert cfg.user == "root" and cfg.group == "model-servers" and cfg.mode == 0o640
    assert native.file("/etc/model-servers").mode == 0o750
    emb = json.loads(native.file("/etc/model-servers/embedding.json").content_string)
    assert emb["host"] == "127.0.0.1" and emb["port"] == 17202 and emb["mode"] == "embedding"
    assert emb["parallel"] == 8  # batch_size = parallel sequences


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
    out = post(EMB + "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": texts})
    vecs = [d["embedding"] for d in sorted(out["data"], key=lambda d: d["index"])]
    assert len(vecs) == 4
    assert all(len(v) == 384 for v in vecs)  # all-MiniLM-L6-v2's dimension
    related_pets, related_money = cosine(vecs[0], vecs[1]), cosine(vecs[2], vecs[3])
    unrelated = max(cosine(vecs[0], vecs[2]), cosine(vecs[0], vecs[3]), cosine(vecs[1], vecs[2]), cosine(vecs[1], vecs[3]))
    assert related_pets > unrelated + 0.2, (related_pets, unrelated)
    assert related_money > unrelated + 0.2, (related_money, unrelated)


def test_rerank_returns_every_document_ranked(native):
    docs = ["Cats are small mammals.", "Paris is in France.", "Tea is a drink.", "Rust is a language.", "Snow is cold."]
    out = post(RERANK + "/v1/rerank", {"model": "tiny-reranker", "query": "what is a cat?", "documents": docs})
    results = out["results"]
    assert sorted(r["index"] for r in results) == list(range(len(docs)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_dify_endpoints_contract_and_they_work(native):
    eps = {e["name"]: e for e in endpoints(native)}
    assert set(eps) == {"llm", "embedding", "rerank"}
    for e in eps.values():
        assert set(e) == {"name", "kind", "model_type", "plugin_id", "provider", "model", "credentials", "max_batch"}
        assert e["plugin_id"] == "langgenius/openai_api_compatible"
        assert e["provider"] == "langgenius/openai_api_compatible/openai_api_compatible"
        assert e["credentials"]["endpoint_url"].startswith("http://host.docker.internal:")
        assert e["credentials"]["endpoint_model_name"] == e["model"]
    assert eps["llm"]["model_type"] == "llm" and eps["llm"]["credentials"]["mode"] == "chat"
    assert eps["embedding"]["model_type"] == "text-embedding"
    assert eps["embedding"]["credentials"]["max_chunks"] == "8" and eps["embedding"]["max_batch"] == 8
    assert eps["rerank"]["model_type"] == "rerank" and eps["rerank"]["max_batch"] == 4  # after side_effect
    # call them the way Dify's openai_api_compatible plugin does (host.docker.internal -> loopback here)
    def url(e, path):
        return e["credentials"]["endpoint_url"].replace("host.docker.internal", "127.0.0.1") + path
    emb = eps["embedding"]
    texts = ["chunk %d" % i for i in range(int(emb["credentials"]["max_chunks"]))]
    out = post(url(emb, "/embeddings"), {"model": emb["model"], "input": texts})
    assert len(out["data"]) == len(texts)
    rr = eps["rerank"]
    docs = ["doc %d" % i for i in range(rr["max_batch"])]
    out = post(url(rr, "/rerank").replace("127.0.0.1", "127.0.0.2"), {"model": rr["model"], "query": "q", "documents": docs, "top_n": rr["max_batch"]})
    assert len(out["results"]) == len(docs)


def test_drift_restored_and_config_change_restarted(native):
    before = json.loads(native.file("/var/tmp/ms-pids-before.json").content_string)
    unit = native.file("/etc/systemd/system/model-server-llm.service").content_string
    assert "DRIFTED_BY_HAND" not in unit
    assert "DRIFTED_BY_HAND" not in native.check_output("systemctl show -p Environment model-server-llm")
    assert json.loads(native.file("/etc/model-servers/rerank.json").content_string)["parallel"] == 4
    for name in ("llm", "embedding", "rerank"):
        now = native.check_output(f"systemctl show -p MainPID --value model-server-{name}")
        assert now != "0" and now != before[name], name
    # and they answer again
    assert post(RERANK + "/v1/rerank", {"model": "tiny-reranker", "query": "q", "documents": ["a", "b"]})["results"]


# ------------------------------------------------------------------ render host
@pytest.fixture(scope="module", params=RENDER_HOSTS)
def render(request):
    return get_host(request.param)


@pytest.fixture(scope="module")
def compose(render):
    out = render.check_output("/usr/local/bin/docker-compose -f /opt/model-servers/compose/compose.yml config --format json")
    return json.loads(out)


def test_compose_project_validates_with_all_servers(compose):
    assert compose["name"] == "model-servers"
    assert set(compose["services"]) == {
        "llm", "embedding", "rerank", "llm-vllm", "llm-ollama", "embedding-tei", "rerank-tei-cpu"}


def test_gpu_reservations_by_device_id(compose):
    def devices(name):
        res = compose["services"][name].get("deploy", {}).get("resources", {}).get("reservations", {})
        return res.get("devices", [])
    for name, ids in {"llm": ["0"], "embedding": ["0"], "rerank": ["0"], "llm-vllm": ["1"],
                      "llm-ollama": ["1"], "embedding-tei": ["2", "3"]}.items():
        (dev,) = devices(name)
        assert dev["driver"] == "nvidia" and dev["device_ids"] == ids and dev["capabilities"] == ["gpu"], name
    assert devices("rerank-tei-cpu") == []


def test_images_pinned_per_backend_and_gpu_architecture(compose):
    images = DEFAULTS["model_servers_images"]
    svc = compose["services"]
    assert svc["llm"]["image"] == images["llamacpp_cuda"]
    assert svc["llm-vllm"]["image"] == images["vllm"]
    assert svc["llm-ollama"]["image"] == images["ollama"]
    assert svc["embedding-tei"]["image"] == images["tei"]["ada"]
    assert svc["rerank-tei-cpu"]["image"] == images["tei"]["cpu"]
    # ruri needs MeCab: Infinity is built locally FROM the pinned image
    assert svc["embedding"]["image"] == "model-servers/embedding:local"
    assert "build" in svc["embedding"]
    for s in svc.values():
        name, _, tag = s["image"].rpartition(":")
        assert name and tag and tag != "latest", s["image"]


def test_infinity_recipe_adds_mecab(render):
    recipe = render.file("/opt/model-servers/compose/build/embedding/Dockerfile").content_string
    assert "FROM " + DEFAULTS["model_servers_images"]["infinity"] in recipe
    assert "fugashi" in recipe and "unidic-lite" in recipe


def test_services_restart_health_ports_and_models(compose):
    for name, s in compose["services"].items():
        assert s["restart"] == "unless-stopped", name
        assert s["healthcheck"]["test"], name
        (port,) = s["ports"]
        assert port["host_ip"] == "172.17.0.1", name  # the Docker host gateway, never 0.0.0.0
        if name != "llm-ollama":
            assert any(v["target"] == f"/models/{name}" and v.get("read_only") for v in s["volumes"]), name
    assert "--max-client-batch-size" in compose["services"]["embedding-tei"]["command"]
    cmd = compose["services"]["embedding-tei"]["command"]
    assert cmd[cmd.index("--max-client-batch-size") + 1] == "64"


def test_secrets_only_in_the_0600_env_file(render):
    env = render.file("/opt/model-servers/compose/secrets.env")
    assert env.mode == 0o600 and env.user == "root"
    assert "HF_TOKEN=hf_render_test_token_not_secret" in env.content_string
    assert "render-test-key-not-secret" not in render.file("/opt/model-servers/compose/compose.yml").content_string
    assert "hf_render_test_token_not_secret" not in render.file("/opt/model-servers/compose/compose.yml").content_string


def test_render_mode_started_nothing(render):
    assert not render.file("/etc/systemd/system/model-server-llm.service").exists
    assert not render.file("/var/lib/model-servers/models/llm/.model-servers-source.json").exists


def test_render_endpoints(render):
    eps = {e["name"]: e for e in endpoints(render)}
    assert eps["embedding"]["credentials"]["max_chunks"] == "32"
    assert eps["embedding"]["credentials"]["query_prefix"] == "クエリ: "
    assert eps["embedding"]["credentials"]["endpoint_url"] == "http://host.docker.internal:8082/v1"
    assert eps["llm"]["credentials"]["api_key"] == "render-test-key-not-secret"
    tei = eps["embedding-tei"]
    assert tei["plugin_id"] == "langgenius/huggingface_tei"
    assert tei["credentials"]["server_url"] == "http://host.docker.internal:17213"
    assert tei["max_batch"] == 64
