"""Rendering of the model_servers role without a host: the filters the tasks call, the templates that print
their output, and the wiring of tasks/normalize.yml -- per preset. This replaces the former render-only
deploy mode: the container runtime's compose document, the fronts' configurations, the systemd units
and the endpoints handed to Dify are built here exactly as the role builds them (molecule/model_servers
also validates the compose document with a real compose v2 binary).
"""

import hashlib
import json
import sys
from pathlib import Path

import pytest
import yaml
from ansible.template import trust_as_template

from role_render import RoleRender

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "filter"))
sys.path.insert(0, str(ROOT / "roles" / "model_servers" / "files"))

import dify_bootstrap  # noqa: E402
import gpu_compat  # noqa: E402
import model_servers as ms  # noqa: E402
import tei_front  # noqa: E402

ROLE = ROOT / "roles" / "model_servers"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
NORMALIZE = yaml.safe_load((ROLE / "tasks" / "normalize.yml").read_text())
IMAGES = DEFAULTS["model_servers_images"]
REFS = gpu_compat.model_servers_image_refs(IMAGES)
UNIT_SETTINGS = {"user": "model-servers", "group": "model-servers", "home": "/var/lib/model-servers",
                 "install_dir": "/opt/model-servers", "config_dir": "/etc/model-servers", "python": "/usr/bin/python3",
                 "api_key": False, "hardening": True, "threads": 0, "llama_bin": ""}
EXTRA_SERVERS = [  # what the former render host added to the ja preset
    {"name": "llm-vllm", "kind": "llm", "backend": "vllm", "model": {"hf": "Qwen/Qwen2.5-7B-Instruct-AWQ"},
     "port": 17211, "gpus": ["1"], "context_size": 8192, "parallel": 8, "gpu_memory_utilization": 0.5},
    {"name": "llm-ollama", "kind": "llm", "backend": "ollama", "model": {"ollama": "llama3.1:8b"}, "port": 17212,
     "gpus": ["1"]},
    {"name": "tei-embedding", "kind": "embedding", "backend": "tei", "model": {"hf": "BAAI/bge-base-en-v1.5"},
     "port": 17213, "gpus": ["2", "3"], "tei_arch": "ada", "batch_size": 64, "model_max_tokens": 512},
    {"name": "tei-rerank-cpu", "kind": "rerank", "backend": "tei", "model": {"hf": "BAAI/bge-reranker-base"},
     "port": 17214, "model_max_tokens": 512},
]


def role(platform="debian13", **extra):
    """The role's variables as a play sees them, plus what normalize.yml's first tasks register."""
    extra.setdefault("__model_servers_nvidiactl", {"stat": {"exists": True}})
    extra.setdefault("__model_servers_docker0", {"stdout": "4: docker0    inet 172.17.0.1/16 scope global docker0"})
    return RoleRender("model_servers", platform, **extra)


def task(name):
    return next(t for t in NORMALIZE if t["name"] == name)


def resolved(**extra):
    """tasks/normalize.yml's "Resolve the server list", templated with the role's own variables."""
    inputs = task("Resolve the server list")["vars"]["__model_servers_inputs"]
    r = role(__model_servers_inputs=inputs, **extra)
    return r, r.expr("__model_servers_inputs | model_servers_plan")


def by_name(servers):
    return {s["name"]: s for s in servers}


# ------------------------------------------------------------------------------------- normalize.yml wiring
def test_normalize_hands_every_input_the_filter_reads():
    assert set(task("Resolve the server list")["vars"]["__model_servers_inputs"]) == set(ms.PLAN_INPUTS)


@pytest.mark.parametrize("preset", ["ja", "en", "cpu-tiny"])
def test_the_role_resolves_every_preset_through_its_own_variables(preset):
    _, plan = resolved(model_servers_preset=preset)
    assert plan["problems"] == []
    assert plan["bind_address"] == "172.17.0.1"
    assert [s["name"] for s in plan["servers"]] == ["llm", "embedding", "rerank"]


def test_without_docker0_the_role_binds_loopback():
    # issue 13: `make check` on a fresh host -- Docker (and docker0) not installed yet
    for docker0 in ({"stdout": ""}, {"rc": 1, "stdout": "", "stderr": 'Device "docker0" does not exist.'}):
        _, plan = resolved(__model_servers_docker0=docker0, model_servers_preset="cpu-tiny")
        assert plan["bind_address"] == "127.0.0.1"
    _, plan = resolved(__model_servers_docker0={"skipped": True}, model_servers_bind_address="10.0.0.5")
    assert plan["bind_address"] == "10.0.0.5"


def test_runtime_auto_without_an_nvidia_device_is_native():
    _, plan = resolved(__model_servers_nvidiactl={"stat": {"exists": False}}, model_servers_preset="cpu-tiny")
    assert {s["runtime"] for s in plan["servers"]} == {"native"}


# ------------------------------------------------------------------------------------- endpoints
def endpoints(preset, nvidia=True, **settings):
    _, plan = resolved(model_servers_preset=preset,
                       __model_servers_nvidiactl={"stat": {"exists": nvidia}})
    return by_name(ms.model_servers_endpoints(plan["servers"], settings))


@pytest.mark.parametrize("preset, nvidia", [("ja", True), ("en", True), ("cpu-tiny", False)])
@pytest.mark.parametrize("key", ["", "sk-test"])
def test_endpoints_match_the_provider_schemas_dify_enforces(preset, nvidia, key):
    eps = endpoints(preset, nvidia, api_key=key)
    assert dify_bootstrap.dify_endpoint_problems(list(eps.values())) == []
    assert all(("api_key" in e["credentials"]) is bool(key) for e in eps.values())


@pytest.mark.parametrize("preset, nvidia, timeout, retries", [("ja", True, "120", "3"), ("cpu-tiny", False, "300", "1")])
def test_embedding_and_rerank_go_through_huggingface_tei(preset, nvidia, timeout, retries):
    eps = endpoints(preset, nvidia)
    assert eps["llm"]["plugin_id"] == "langgenius/openai_api_compatible"
    assert eps["llm"]["credentials"]["context_size"] == ("8192" if preset == "ja" else "4096")
    for name, port in (("embedding", 8082), ("rerank", 8083)):
        e = eps[name]
        assert e["plugin_id"] == "langgenius/huggingface_tei"
        assert e["provider"] == "langgenius/huggingface_tei/huggingface_tei"
        # no trailing slash and no /v1: the plugin appends /info, /v1/embeddings, /rerank itself
        assert e["credentials"] == {"server_url": "http://host.docker.internal:%d" % port,
                                    "invoke_timeout": timeout, "max_retries": retries}
    assert eps["embedding"]["max_batch"] == (32 if preset == "ja" else 16)
    assert eps["rerank"]["max_batch"] == 64


def test_tei_servers_go_through_huggingface_tei_directly():
    eps = endpoints("en")
    assert eps["embedding"]["credentials"]["server_url"] == "http://host.docker.internal:8082"
    assert eps["rerank"]["plugin_id"] == "langgenius/huggingface_tei" and eps["rerank"]["max_batch"] == 64


def test_a_server_without_front_keeps_openai_api_compatible_with_its_prefixes():
    _, plan = resolved(model_servers_server_overrides={"embedding": {"front": False}})
    eps = by_name(ms.model_servers_endpoints(plan["servers"], {}))
    creds = eps["embedding"]["credentials"]
    assert eps["embedding"]["plugin_id"] == "langgenius/openai_api_compatible"
    assert creds == {"endpoint_url": "http://host.docker.internal:8082/v1", "endpoint_model_name": "ruri-large",
                     "context_size": "512", "max_chunks": "32", "query_prefix": "クエリ: ", "document_prefix": "文章: "}
    assert dify_bootstrap.dify_endpoint_problems(list(eps.values())) == []


def test_endpoint_urls_use_the_dify_host_and_scheme():
    eps = endpoints("cpu-tiny", False, dify_host="192.0.2.11", scheme="https")
    assert eps["llm"]["credentials"]["endpoint_url"] == "https://192.0.2.11:8081/v1"
    assert eps["embedding"]["credentials"]["server_url"] == "https://192.0.2.11:8082"


# ------------------------------------------------------------------------------------- front configurations
@pytest.mark.parametrize("preset, nvidia", [("ja", True), ("cpu-tiny", False)])
def test_front_configs_are_what_tei_front_accepts(preset, nvidia):
    _, plan = resolved(model_servers_preset=preset, __model_servers_nvidiactl={"stat": {"exists": nvidia}})
    servers = by_name(plan["servers"])
    for name in ("embedding", "rerank"):
        cfg = ms.model_servers_front_config(servers[name], {"chunk_chars": 500})
        loaded = tei_front.load_config(cfg)   # refuses unknown keys and bad values
        assert loaded["host"] == "172.17.0.1" and loaded["port"] == servers[name]["port"]
        assert loaded["auto_truncate"] is True
    emb = ms.model_servers_front_config(servers["embedding"], {"chunk_chars": 500})
    rr = ms.model_servers_front_config(servers["rerank"], {"chunk_chars": 500})
    assert rr["max_client_batch_size"] == 64   # Dify's rerank call: every candidate at once
    assert emb["info_max_input_length"] == 2000 and "info_max_input_length" not in rr
    if preset == "ja":
        assert emb["backend_url"] == "http://127.0.0.1:9082/v1" and emb["api_key_env"] == "INFINITY_API_KEY"
        assert emb["default_prompt"] == "文章: "
        assert (emb["max_input_length"], emb["max_client_batch_size"]) == (512, 32)
        assert rr["max_input_length"] == 512
    else:
        assert emb["backend_url"] == "http://127.0.0.1:9082" and emb["api_key_env"] == "LLAMA_API_KEY"
        assert "default_prompt" not in emb
        assert (emb["max_input_length"], emb["max_client_batch_size"]) == (503, 16)
        assert rr["max_input_length"] == 756
        assert (emb["backend_timeout"], rr["backend_timeout"]) == (300, 300)


def test_front_template_prints_the_filter_output():
    r, plan = resolved(model_servers_preset="cpu-tiny", __model_servers_nvidiactl={"stat": {"exists": False}})
    emb = by_name(plan["servers"])["embedding"]
    r2 = role(item=emb, model_servers_preset="cpu-tiny")
    assert json.loads(r2.template("tei-front.json.j2")) == ms.model_servers_front_config(emb, {"chunk_chars": 500})


# ------------------------------------------------------------------------------------- llama.cpp and units
def cpu_tiny():
    _, plan = resolved(model_servers_preset="cpu-tiny", __model_servers_nvidiactl={"stat": {"exists": False}})
    return by_name(plan["servers"])


def test_llamacpp_config_has_the_context_arithmetic_once():
    servers = cpu_tiny()
    cfg = ms.model_servers_llamacpp_config(servers["embedding"], {"threads": 2})
    assert cfg == {"model": "/var/lib/model-servers/models/embedding/bge-small-en-v1.5-q8_0.gguf",
                   "host": "127.0.0.1", "port": 9082, "alias": "bge-small-en-v1.5", "mode": "embedding",
                   "ctx_size": 8048, "batch_size": 2048, "ubatch_size": 2048, "parallel": 16, "threads": 2,
                   "n_gpu_layers": 0, "extra": {}}
    llm = ms.model_servers_llamacpp_config(servers["llm"])
    assert (llm["host"], llm["port"], llm["ctx_size"], llm["parallel"], llm["ubatch_size"], llm["batch_size"]) \
        == ("172.17.0.1", 8081, 8192, 2, 512, 2048)
    r = role(item=servers["rerank"], model_servers_threads=1)
    assert json.loads(r.template("llamacpp.json.j2")) == ms.model_servers_llamacpp_config(servers["rerank"], {"threads": 1})


def unit_text(u, **extra):
    return role(item=u, **extra).template("model-server.service.j2")


def test_units_of_backends_and_fronts():
    units = {u["id"]: u for u in ms.model_servers_units(list(cpu_tiny().values()), UNIT_SETTINGS)}
    assert list(units) == ["llm", "embedding", "embedding-tei", "rerank", "rerank-tei"]
    emb = unit_text(units["embedding"])
    assert ("ExecStart=/opt/model-servers/venvs/llamacpp/bin/python /opt/model-servers/bin/llamacpp_server.py "
            "/etc/model-servers/embedding.json\n") in emb
    front = unit_text(units["embedding-tei"])
    assert "ExecStart=/usr/bin/python3 /opt/model-servers/bin/tei_front.py /etc/model-servers/embedding-tei.json\n" in front
    assert "After=network-online.target model-server-embedding.service\n" in front
    assert "User=model-servers\n" in front and "NoNewPrivileges=true\n" in front and "WantedBy=multi-user.target" in front
    assert "EnvironmentFile" not in front
    keyed = {u["id"]: u for u in ms.model_servers_units(list(cpu_tiny().values()), dict(UNIT_SETTINGS, api_key=True))}
    assert "EnvironmentFile=/etc/model-servers/api-key.env\n" in unit_text(keyed["rerank-tei"])


def test_llama_server_binary_gets_the_same_numbers_on_loopback():
    units = {u["id"]: u for u in ms.model_servers_units(
        list(cpu_tiny().values()), dict(UNIT_SETTINGS, llama_bin="/usr/bin/llama-server", threads=2))}
    text = unit_text(units["rerank"])
    assert ("ExecStart=/usr/bin/llama-server --model /var/lib/model-servers/models/rerank/bge-reranker-v2-m3-Q4_K_M.gguf "
            "--host 127.0.0.1 --port 9083 --alias bge-reranker-v2-m3 --ctx-size 12096 --parallel 16 --ubatch-size 2048 "
            "--batch-size 2048 --n-gpu-layers 0 --threads 2 --reranking\n") in text


def test_units_quote_what_systemd_would_expand():
    s = dict(cpu_tiny()["embedding"], front=None, served_name="a b", env={"X": "50%", "Y": 'say "hi"'},
             extra_args=["--flag=$HOME"])
    (u,) = ms.model_servers_units([s], dict(UNIT_SETTINGS, llama_bin="/usr/bin/llama-server"))
    text = unit_text(u)
    assert '--alias "a b"' in text and '"--flag=$$HOME"' in text
    assert 'Environment="X=50%%"\n' in text and 'Environment="Y=say \\"hi\\""\n' in text


def test_infinity_units_listen_on_loopback_behind_their_front():
    _, plan = resolved(model_servers_preset="ja", model_servers_runtime="native",
                       model_servers_server_overrides={"llm": {"gpus": []}})
    units = {u["id"]: u for u in ms.model_servers_units(plan["servers"], UNIT_SETTINGS)}
    text = unit_text(units["embedding"])
    assert ("ExecStart=/opt/model-servers/venvs/infinity/bin/infinity_emb v2 --model-id /var/lib/model-servers/models/embedding "
            "--served-model-name ruri-large --host 127.0.0.1 --port 9082 --batch-size 32 --url-prefix /v1 --device cuda "
            "--engine torch\n") in text
    assert "CUDA_VISIBLE_DEVICES=0" in text


def test_container_fronts_are_host_units_after_docker():
    _, plan = resolved()   # ja, containers
    units = ms.model_servers_units(plan["servers"], UNIT_SETTINGS)
    assert [u["id"] for u in units] == ["embedding-tei", "rerank-tei"]
    assert "After=network-online.target docker.service\n" in unit_text(units[0])


# ------------------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose():
    _, plan = resolved(model_servers_preset="ja", model_servers_extra_servers=EXTRA_SERVERS,
                       model_servers_bind_address="172.17.0.1")
    assert plan["problems"] == []
    servers = plan["servers"]
    tei = ms.model_servers_tei_arch(servers, "auto", [], {}, list(IMAGES["tei"]))
    assert tei == {"arch": {"tei-embedding": "ada", "tei-rerank-cpu": "cpu"}, "problems": []}
    doc = ms.model_servers_compose(servers, {"project": "model-servers", "compose_dir": "/opt/model-servers/compose",
                                             "restart": "unless-stopped", "image_refs": REFS,
                                             "tei_arch": tei["arch"]})
    return doc


def test_compose_has_every_server(compose):
    assert compose["name"] == "model-servers"
    assert list(compose["services"]) == ["llm", "embedding", "rerank", "llm-vllm", "llm-ollama", "tei-embedding",
                                         "tei-rerank-cpu"]
    assert compose["volumes"] == {"hf-cache": {}, "ollama": {}}


def test_compose_gpu_reservations_by_device_id(compose):
    want = {"llm": ["0"], "embedding": ["0"], "rerank": ["0"], "llm-vllm": ["1"], "llm-ollama": ["1"],
            "tei-embedding": ["2", "3"]}
    for name, svc in compose["services"].items():
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if name in want:
            assert devices == [{"driver": "nvidia", "device_ids": want[name], "capabilities": ["gpu"]}], name
        else:
            assert devices == [], name


def test_compose_images_pinned_by_digest_per_backend_and_architecture(compose):
    def ref(entry):
        return entry["image"] + ("@" + entry["digest"] if entry["digest"] else "")
    svc = compose["services"]
    assert svc["llm"]["image"] == ref(IMAGES["llamacpp_cuda"])
    assert svc["llm-vllm"]["image"] == ref(IMAGES["vllm"])
    assert svc["llm-ollama"]["image"] == ref(IMAGES["ollama"]) == IMAGES["ollama"]["image"]   # no digest: the tag
    assert svc["tei-embedding"]["image"] == ref(IMAGES["tei"]["ada"])
    assert svc["tei-rerank-cpu"]["image"] == ref(IMAGES["tei"]["cpu"])
    # ruri needs MeCab: Infinity is built locally FROM the pinned image
    assert svc["embedding"]["image"] == "model-servers/embedding:local"
    assert svc["embedding"]["build"] == {"context": "/opt/model-servers/compose/build/embedding"}


def test_compose_ports_fronted_servers_publish_on_loopback(compose):
    svc = compose["services"]
    assert svc["llm"]["ports"] == ["172.17.0.1:8081:8080"]
    assert svc["embedding"]["ports"] == ["127.0.0.1:9082:7997"]     # its front takes 172.17.0.1:8082
    assert svc["rerank"]["ports"] == ["127.0.0.1:9083:7997"]
    assert svc["tei-embedding"]["ports"] == ["172.17.0.1:17213:80"]
    for name, s in svc.items():
        assert s["restart"] == "unless-stopped" and s["healthcheck"]["test"], name
        assert s["env_file"] == ["/opt/model-servers/compose/secrets.env"]
        if name != "llm-ollama":
            assert "/var/lib/model-servers/models/%s:/models/%s:ro" % (name, name) in s["volumes"], name


def test_compose_commands_carry_the_plan(compose):
    svc = compose["services"]
    llm = svc["llm"]["command"]
    assert llm[llm.index("--ctx-size") + 1] == "16384" and llm[llm.index("--parallel") + 1] == "2"
    assert llm[llm.index("--n-gpu-layers") + 1] == "999"
    emb = svc["tei-embedding"]["command"]
    assert emb[emb.index("--max-client-batch-size") + 1] == "64" and "--auto-truncate" in emb
    assert emb[emb.index("--max-batch-tokens") + 1] == str(512 * 64)
    rr = svc["tei-rerank-cpu"]["command"]
    assert rr[rr.index("--max-client-batch-size") + 1] == "64"   # every rerank candidate in one call
    inf = svc["embedding"]["command"]
    assert inf[:2] == ["v2", "--model-id"] and inf[inf.index("--device") + 1] == "cuda"
    assert svc["llm-vllm"]["ipc"] == "host"
    assert svc["llm-ollama"]["environment"]["OLLAMA_NUM_PARALLEL"] == "1"


def test_compose_template_prints_the_document_and_no_secret(compose):
    r = role(__model_servers_compose_doc=compose, model_servers_api_key="k-not-in-compose")
    text = r.template("compose.yml.j2")
    assert yaml.safe_load(text) == compose
    assert "k-not-in-compose" not in text and "HF_TOKEN" not in text


def test_secrets_only_in_the_env_file():
    r = role(model_servers_api_key="render-test-key", model_servers_hf_token="hf_render_token")
    env = r.template("secrets.env.j2")
    for line in ("HF_TOKEN=hf_render_token", "VLLM_API_KEY=render-test-key", "LLAMA_API_KEY=render-test-key",
                 "INFINITY_API_KEY=render-test-key"):
        assert line in env.splitlines()
    tasks = yaml.safe_load((ROLE / "tasks" / "container.yml").read_text())
    secrets = next(t for t in tasks if "secrets.env" in json.dumps(t))
    assert secrets["ansible.builtin.template"]["mode"] == "0600" and secrets["no_log"] is True


def test_unknown_tei_architecture_is_refused_naming_the_variables():
    servers = ms.model_servers_plan({"servers": [EXTRA_SERVERS[2] | {"tei_arch": None}], "nvidia_device": True,
                                     "chunk_chars": 500, "rerank_query_chars": 250, "rerank_max_documents": 64,
                                     "front_port_offset": 1000})["servers"]
    got = ms.model_servers_tei_arch(servers, "auto", ["2, 7.0"], {"8.9": "ada"}, list(IMAGES["tei"]))
    assert got["arch"] == {"tei-embedding": "unknown"}
    assert "Set model_servers_tei_arch (or tei_arch on the server)" in got["problems"][0]
    assert ms.model_servers_tei_arch(servers, "auto", ["2, 8.9"], {"8.9": "ada"}, list(IMAGES["tei"]))["arch"] \
        == {"tei-embedding": "ada"}


# ------------------------------------------------------------------------------------- checks
def test_checks_cover_backends_and_fronts():
    checks = by_name(ms.model_servers_checks(list(cpu_tiny().values())))
    assert checks["embedding"] == {"name": "embedding", "served_name": "bge-small-en-v1.5",
                                   "health": "http://127.0.0.1:9082/health", "models": "http://127.0.0.1:9082/v1/models"}
    assert checks["rerank-tei"] == {"name": "rerank-tei", "served_name": "bge-reranker-v2-m3",
                                    "health": "http://172.17.0.1:8083/health", "models": None,
                                    "info": "http://172.17.0.1:8083/info", "model_type": "reranker",
                                    "max_client_batch_size": 64}
    assert checks["llm"]["health"] == "http://172.17.0.1:8081/health"


@pytest.mark.parametrize("archives, want", [
    ([], IMAGES["infinity"]["image"] + "@" + IMAGES["infinity"]["digest"]),   # pinned by digest
    (["/srv/images.tar"], IMAGES["infinity"]["image"]),                        # archives: loaded images carry no digest
])
def test_infinity_recipe_is_built_from_the_pinned_image(archives, want):
    tasks = yaml.safe_load((ROLE / "tasks" / "container.yml").read_text())
    refs_task = yaml.safe_load((ROLE / "tasks" / "gpu_compat.yml").read_text())[0]
    recipe = next(t for t in tasks if t["name"].startswith("Write the image recipes"))
    _, plan = resolved()
    embedding = by_name(plan["servers"])["embedding"]
    r = role(item=embedding, model_servers_image_archives=archives,
             __model_servers_image_refs=refs_task["ansible.builtin.set_fact"]["__model_servers_image_refs"])
    text = r.templar.template(trust_as_template(recipe["ansible.builtin.copy"]["content"]))
    assert "FROM %s\n" % want in text
    assert "RUN pip install --no-cache-dir fugashi unidic-lite sentencepiece" in text


def test_templated_inputs_with_filters_resolve_inside_the_plan():
    # inventory values are lazy templates; one that uses a filter must render inside the plan's filter
    # (molecule/model_servers' URL checksum does: a deep copy of a lazy value broke its filters)
    _, plan = resolved(model_servers_preset="cpu-tiny", model_servers_source_overrides={"llm": {
        "url": "http://127.0.0.1:17240/tiny.gguf",
        "checksum": "sha256:{{ (['x tiny', 'y'] | select('search', 'tiny') | first) | hash('sha256') }}"}})
    assert plan["problems"] == []
    llm = by_name(plan["servers"])["llm"]
    assert llm["model"]["checksum"] == "sha256:" + hashlib.sha256(b"x tiny").hexdigest()
    assert llm["file"] == "tiny.gguf"
