"""The model_servers role's server plan (plugins/filter/model_servers.py), table-driven.

Resolution (presets, explicit lists, extras, server/source overrides, defaults, runtime, bind address),
validation messages (each names the variable and the server), the context arithmetic per preset,
the TEI-compatible fronts (ports, units), the chunk-size checks and the restart rule.
"""

import copy
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "filter"))

import model_servers as ms  # noqa: E402

ROLE = ROOT / "roles" / "model_servers"
VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
PRESETS = VARS["__model_servers_presets"]


def inputs(**over):
    """What tasks/normalize.yml hands the filter, with the role's defaults."""
    base = {
        "servers": [], "preset": DEFAULTS["model_servers_preset"], "presets": PRESETS, "extra_servers": [],
        "server_overrides": {}, "source_overrides": {}, "server_defaults": VARS["__model_servers_server_defaults"],
        "runtime": "auto", "nvidia_device": True, "bind_address": "", "docker0": None,
        "allow_public_bind": False, "unit_prefix": DEFAULTS["model_servers_unit_prefix"],
        "models_dir": DEFAULTS["model_servers_models_dir"], "config_dir": DEFAULTS["model_servers_config_dir"],
        "chunk_chars": DEFAULTS["model_servers_chunk_chars"],
        "rerank_query_chars": DEFAULTS["model_servers_rerank_query_chars"],
        "rerank_max_documents": DEFAULTS["model_servers_rerank_max_documents"],
        "fronts": DEFAULTS["model_servers_tei_fronts"], "front_port_offset": DEFAULTS["model_servers_front_port_offset"],
    }
    base.update(over)
    return base


def plan(**over):
    return ms.model_servers_plan(inputs(**over))


def ok(**over):
    p = plan(**over)
    assert p["problems"] == [], p["problems"]
    return {s["name"]: s for s in p["servers"]}


def llama(name="emb", kind="embedding", port=9100, **extra):
    s = {"name": name, "kind": kind, "backend": "llamacpp", "port": port, "model": {"src": "/srv/%s.gguf" % name}}
    s.update(extra)
    return s


# ------------------------------------------------------------------------------------- bind address
@pytest.mark.parametrize("bind, docker0, want", [
    ("", None, "127.0.0.1"),                                    # docker0 unknown: before Docker is installed
    ("", "", "127.0.0.1"),                                      # `ip` failed: no docker0
    ("", 'Device "docker0" does not exist.', "127.0.0.1"),
    ("", "4: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\ valid_lft forever", "172.17.0.1"),
    ("", "5: docker0    inet 10.200.0.1/24 scope global docker0", "10.200.0.1"),
    ("192.0.2.11", "4: docker0    inet 172.17.0.1/16 scope global docker0", "192.0.2.11"),
    ("127.0.0.1", None, "127.0.0.1"),
])
def test_default_bind_address(bind, docker0, want):
    assert ms.model_servers_bind_default(bind, docker0) == want


def test_bind_address_on_a_host_without_docker0_is_defined_before_docker_is_installed():
    servers = ok(docker0=None)          # the command did not run / had no output
    assert {s["bind_address"] for s in servers.values()} == {"127.0.0.1"}
    servers = ok(docker0="4: docker0    inet 172.17.0.1/16 scope global docker0")
    assert servers["llm"]["bind_address"] == "172.17.0.1"


# ------------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("over, name, key, want", [
    ({}, "llm", "runtime", "container"),                                       # auto + /dev/nvidiactl
    ({"nvidia_device": False, "preset": "cpu-tiny"}, "llm", "runtime", "native"),
    ({"runtime": "native", "preset": "cpu-tiny"}, "embedding", "runtime", "native"),
    ({"server_overrides": {"llm": {"port": 9001, "gpus": ["1"]}}}, "llm", "port", 9001),
    ({"server_overrides": {"llm": {"port": 9001, "gpus": ["1"]}}}, "llm", "gpus", ["1"]),
    ({"server_overrides": {"llm": {"model": {"revision": "v2"}}}}, "llm", "model",
     dict(PRESETS["ja"][0]["model"], revision="v2")),                          # recursive merge
    ({"source_overrides": {"llm": {"src": "/srv/elyza.gguf"}}}, "llm", "model", {"src": "/srv/elyza.gguf"}),
    ({"source_overrides": {"llm": {"src": "/srv/elyza.gguf"}}}, "llm", "file", "elyza.gguf"),
    ({}, "llm", "file", "Llama-3-ELYZA-JP-8B-q4_k_m.gguf"),
    ({}, "embedding", "served_name", "ruri-large"),
    ({}, "llm", "unit", "model-server-llm"),
    ({"unit_prefix": "ms-"}, "llm", "unit", "ms-llm"),
    ({}, "rerank", "model_dir", "/var/lib/model-servers/models/rerank"),
    ({"bind_address": "192.0.2.11"}, "embedding", "bind_address", "192.0.2.11"),
    ({"bind_address": "::1", "preset": "cpu-tiny"}, "llm", "url_host", "[::1]"),
    ({}, "llm", "max_tokens", 2048),
    ({}, "embedding", "parallel", 1),                                          # from the server defaults
])
def test_resolution(over, name, key, want):
    assert ok(**over)[name][key] == want


def test_explicit_list_replaces_the_preset_and_extras_are_appended():
    servers = ok(servers=[llama("a", "llm", 9101, model={"src": "/srv/a.gguf"})],
                 extra_servers=[llama("b", "embedding", 9102)])
    assert list(servers) == ["a", "b"]
    servers = ok(extra_servers=[{"name": "vllm2", "kind": "llm", "backend": "vllm", "port": 9103,
                                 "model": {"hf": "Qwen/Qwen2.5-7B-Instruct-AWQ"}}])
    assert list(servers) == ["llm", "embedding", "rerank", "vllm2"]


def test_served_name_of_an_ollama_model_is_its_name():
    servers = ok(preset="none", extra_servers=[{"name": "o", "kind": "llm", "backend": "ollama", "port": 9104,
                                                "model": {"ollama": "llama3.1:8b"}}])
    assert servers["o"]["served_name"] == "llama3.1:8b"


def test_url_source_file_is_the_url_basename():
    src = {"url": "https://example.org/m/tiny.gguf?x=1", "checksum": "sha256:" + "a" * 64}
    assert ok(preset="none", extra_servers=[llama("u", "llm", 9105, model=src)])["u"]["file"] == "tiny.gguf"


# ------------------------------------------------------------------------------------- validation
BAD = [
    ({"preset": "fr"}, "model_servers_preset=fr is not a preset; choose one of"),
    ({"servers": ["x"]}, "model_servers_servers[0]: a server entry must be a mapping"),
    ({"servers": [llama("Bad_Name")]}, "model_servers_servers[0]: name must be lowercase"),
    ({"servers": [llama(kind="chat")]}, "model_servers_servers[0] (server emb): kind must be one of llm|embedding|rerank"),
    ({"servers": [dict(llama(), backend="tgi")]}, "(server emb): backend must be one of"),
    ({"servers": [dict(llama(), backend="vllm")]}, "(server emb): backend vllm does not serve embedding"),
    ({"servers": [llama(port=0)]}, "(server emb): port must be 1-65535, got 0"),
    ({"servers": [llama(port="80x")]}, "(server emb): port must be 1-65535"),
    ({"servers": [llama(model={"hf": "a/b", "src": "/x"})]}, "(server emb): the model source needs exactly one of"),
    ({"servers": [llama(model={"url": "http://x/m.gguf"})]}, "(server emb): a url model source needs checksum"),
    ({"servers": [llama(model={"ollama": "m"})]}, "(server emb): an ollama model source needs backend ollama"),
    ({"servers": [{"name": "o", "kind": "llm", "backend": "ollama", "port": 1, "model": {"hf": "a/b"}}]},
     "(server o): backend ollama needs an ollama model source"),
    ({"servers": [llama(model={"hf": "a/b"})]}, "(server emb): llama.cpp needs model.file"),
    ({"servers": [llama(gpus="0")]}, "(server emb): gpus must be a list"),
    ({"servers": [llama(extra_args="--foo")]}, "(server emb): extra_args must be a list"),
    ({"servers": [llama(batch_size=0)]}, "(server emb): batch_size must be a positive integer"),
    ({"servers": [llama(context_sise=512)]}, "(server emb): unknown key(s) context_sise"),
    ({"servers": [llama(pooling="max")]}, "(server emb): pooling must be one of"),
    ({"servers": [llama(front="no")]}, "(server emb): front must be true or false"),
    ({"servers": [dict(llama(), backend="tei", model={"hf": "a/b"}, runtime="native")]},
     "(server emb): the native runtime serves only infinity, llamacpp; tei needs runtime: container"),
    ({"servers": [llama(runtime="k8s")]}, "(server emb): runtime must be native or container"),
    ({"servers": [llama(bind_address="0.0.0.0")]}, "(server emb): binding to 0.0.0.0 (every interface) needs "
                                                   "model_servers_allow_public_bind: true"),
    ({"servers": [llama(model_max_tokens=512, context_size=1024)]},
     "(server emb): context_size 1024 is larger than the model's trained maximum model_max_tokens=512"),
    ({"servers": [llama(ubatch_size=256, context_size=512)]}, "(server emb): ubatch_size 256 is smaller than the context"),
    ({"servers": [llama("a", port=9100), llama("b", port=9100)]}, "use the same port"),
    ({"servers": [llama("a", port=9100), llama("b", "rerank", port=8100)]},
     "(server b) (backend port 9100) and model_servers_servers[0] (server a) (port 9100) use the same port"),
    ({"servers": [llama("a"), llama("a", port=9101)]}, "two servers are named a"),
    ({"servers": [llama("x"), llama("x-tei", "rerank", 9101)]}, "would both run the systemd unit model-server-x-tei"),
    ({"servers": [llama(port=65000)]}, "the backend port 66000 (port + model_servers_front_port_offset) is above 65535"),
    ({"server_overrides": {"lm": {"port": 1}}}, "model_servers_server_overrides.lm: there is no server named lm"),
    ({"source_overrides": {"lm": {"src": "/x"}}}, "model_servers_source_overrides.lm: there is no server named lm"),
    ({"server_overrides": {"llm": {"port": -1}}}, "model_servers_preset=ja, server llm: port must be 1-65535, got -1"),
    ({"chunk_chars": 10}, "model_servers_chunk_chars must be 50 to 4000"),
    ({"chunk_chars": "many"}, "model_servers_chunk_chars must be a positive integer"),
    ({"runtime": "vm"}, "model_servers_runtime must be auto, native or container"),
]


@pytest.mark.parametrize("over, message", BAD, ids=[m[:48] for _, m in BAD])
def test_invalid_input_is_refused_naming_the_variable_and_the_server(over, message):
    problems = plan(**over)["problems"]
    assert any(message in p for p in problems), problems


def test_the_backend_port_of_a_front_collides_with_another_server():
    problems = plan(servers=[llama("a", port=9100), llama("b", "llm", port=10100)])["problems"]
    assert any("(server b) (port 10100) and model_servers_servers[0] (server a) (backend port 10100)" in p
               for p in problems), problems


def test_every_preset_resolves_without_problems():
    for preset in PRESETS:
        for nvidia in (True, False):
            p = plan(preset=preset, nvidia_device=nvidia)
            if preset == "en" and not nvidia:   # vLLM and TEI only run in containers
                assert len(p["problems"]) == 3 and all("needs runtime: container" in x for x in p["problems"])
                continue
            assert p["problems"] == [], (preset, p["problems"])


# ------------------------------------------------------------------------------------- contexts per preset
# (preset, server) -> context per slot, slots, n_ctx, ubatch, batch, client batch -- with the defaults:
# chunks of 500 characters, queries of 250, rerank calls of up to 64 documents.
CONTEXTS = {
    ("ja", "llm"): (8192, 2, 16384, 512, 2048, 2),
    ("ja", "embedding"): (512, 32, 16384, 2048, 2048, 32),      # Infinity: ruri-large's 512 (chunk needs 507)
    ("ja", "rerank"): (512, 32, 16384, 2048, 2048, 64),         # capped at ruri-reranker-large's 512
    ("en", "llm"): (8192, 8, 65536, 512, 2048, 8),
    ("en", "embedding"): (512, 32, 16384, 2048, 2048, 32),      # TEI: bge-base-en-v1.5's 512 (chunk needs 503)
    ("en", "rerank"): (512, 32, 16384, 2048, 2048, 64),         # TEI: bge-reranker-base's 512
    ("cpu-tiny", "llm"): (4096, 2, 8192, 512, 2048, 2),
    ("cpu-tiny", "embedding"): (503, 16, 8048, 2048, 2048, 16),   # 500 + 3 <= bge-small-en-v1.5's 512
    ("cpu-tiny", "rerank"): (756, 16, 12096, 2048, 2048, 64),     # 500 + 250 + 6 <= bge-reranker-v2-m3's 8192
}


@pytest.mark.parametrize("preset, name", sorted(CONTEXTS))
def test_contexts_per_preset(preset, name):
    s = ok(preset=preset, nvidia_device=preset != "cpu-tiny")[name]
    assert (s["context_size"], s["slots"], s["n_ctx"], s["ubatch"], s["batch"], s["client_batch"]) \
        == CONTEXTS[(preset, name)]
    if s["kind"] != "llm":
        assert s["context_size"] <= s["model_max_tokens"]


@pytest.mark.parametrize("chunk, query, emb, rerank", [
    (200, 100, 203, 306),
    (500, 250, 503, 756),
    (509, 0, 512, 515),          # the largest chunk bge-small-en-v1.5 takes whole
    (2000, 250, 512, 2256),      # embedding capped at the model (the chunk check then fails, below)
    (4000, 250, 512, 4256),
])
def test_llamacpp_contexts_follow_the_chunk_size_capped_at_the_model(chunk, query, emb, rerank):
    s = ok(preset="cpu-tiny", nvidia_device=False, chunk_chars=chunk, rerank_query_chars=query)
    assert s["embedding"]["context_size"] == emb
    assert s["rerank"]["context_size"] == rerank
    assert s["embedding"]["n_ctx"] == emb * 16 and s["rerank"]["n_ctx"] == rerank * 16
    assert s["embedding"]["ubatch"] >= emb and s["rerank"]["ubatch"] >= rerank


@pytest.mark.parametrize("entry, want", [
    ({"context_size": 300}, (300, 8, 2400, 2048, 2048)),
    ({"context_size": 300, "ctx_total": 1200}, (300, 8, 1200, 1200, 1200)),
    ({"context_size": 300, "ubatch_size": 512}, (300, 8, 2400, 512, 512)),
    ({"context_size": 4096, "batch_size": 2}, (4096, 2, 8192, 4096, 4096)),
    ({}, (253, 8, 2024, 2024, 2024)),       # chunk 250 + 3
])
def test_embedding_context_arithmetic(entry, want):
    s = ok(servers=[llama(**dict({"batch_size": 8}, **entry))], chunk_chars=250)["emb"]
    assert (s["context_size"], s["slots"], s["n_ctx"], s["ubatch"], s["batch"]) == want


@pytest.mark.parametrize("entry, want", [
    ({"context_size": 256, "parallel": 2}, (256, 2, 512, 512, 512)),
    ({"context_size": 8192, "parallel": 4}, (8192, 4, 32768, 512, 2048)),
    ({"context_size": 8192, "parallel": 4, "batch_tokens": 4096, "ubatch_size": 1024}, (8192, 4, 32768, 1024, 4096)),
    ({"parallel": 1}, (4096, 1, 4096, 512, 2048)),
])
def test_llm_context_arithmetic(entry, want):
    s = ok(servers=[llama("llm", "llm", **entry)])["llm"]
    assert (s["context_size"], s["slots"], s["n_ctx"], s["ubatch"], s["batch"]) == want


def test_a_rerank_context_below_chunk_plus_query_is_a_warning_not_a_failure():
    p = plan(preset="ja")
    assert p["problems"] == []
    assert any("server rerank" in w and "needs 756 tokens, the rerank context is 512 (the model's maximum)" in w
               for w in p["warnings"]), p["warnings"]


# ------------------------------------------------------------------------------------- fronts
@pytest.mark.parametrize("preset, fronted", [
    ("ja", {"embedding", "rerank"}),        # Infinity
    ("cpu-tiny", {"embedding", "rerank"}),  # llama.cpp
    ("en", set()),                          # TEI itself speaks TEI's API
])
def test_every_llamacpp_and_infinity_embedding_or_rerank_server_gets_a_front(preset, fronted):
    servers = ok(preset=preset, nvidia_device=preset != "cpu-tiny")
    assert {n for n, s in servers.items() if s["front"]} == fronted
    for name in fronted:
        s = servers[name]
        assert s["backend_host"] == "127.0.0.1" and s["backend_port"] == s["port"] + 1000
        assert s["front"] == {"unit": "model-server-%s-tei" % name, "config": "/etc/model-servers/%s-tei.json" % name}
    for name in set(servers) - fronted:
        assert servers[name]["backend_port"] == servers[name]["port"]


@pytest.mark.parametrize("over, entry, fronted, backend_port", [
    ({"fronts": False}, {}, False, 9100),
    ({}, {"front": False}, False, 9100),
    ({"front_port_offset": 7}, {}, True, 9107),
    ({}, {"backend_port": 19999}, True, 19999),
])
def test_front_switches_and_backend_ports(over, entry, fronted, backend_port):
    s = ok(servers=[llama(**entry)], **over)["emb"]
    assert bool(s["front"]) is fronted and s["backend_port"] == backend_port


# ------------------------------------------------------------------------------------- chunk checks
def check(servers, chunk=500, declared=None):
    return ms.model_servers_chunk_check(servers, chunk, declared)


def test_the_default_chunk_fits_every_preset():
    for preset in ("ja", "en", "cpu-tiny"):
        servers = plan(preset=preset)["servers"]
        assert check(servers) == {"problems": [], "warnings": []}, preset


@pytest.mark.parametrize("preset, chunk, fits", [
    ("cpu-tiny", 509, True), ("cpu-tiny", 510, False),     # bge-small-en-v1.5: 512 - 3
    ("ja", 505, True), ("ja", 506, False),                 # ruri-large: 512 - 3 - len("文章: ")
    ("en", 509, True), ("en", 800, False),                 # the former 800-character default
])
def test_chunk_size_against_the_model_maximum(preset, chunk, fits):
    servers = plan(preset=preset, chunk_chars=chunk)["servers"]
    problems = check(servers, chunk)["problems"]
    assert (problems == []) is fits, problems
    if not fits:
        assert "model_servers_chunk_chars=%d" % chunk in problems[0]
        assert "the model's trained maximum (model_max_tokens=512)" in problems[0]
        assert "Lower model_servers_chunk_chars to" in problems[0]


def test_an_explicit_context_too_small_for_the_chunk_names_both():
    servers = plan(servers=[llama(context_size=256)])["servers"]
    (problem,) = check(servers, 500)["problems"]
    assert "model_servers_chunk_chars=500" in problem and "its context_size (256)" in problem
    assert "or raise its context_size" in problem


@pytest.mark.parametrize("declared, message", [
    ({"var": "dify_knowledge_chunking.max_tokens", "chars": 800},
     "dify_knowledge_chunking.max_tokens=800 (host dify1) is larger than the 500 characters"),
    ({"var": "dify_knowledge_bases[1].chunking.max_tokens", "chars": 600},
     "Lower dify_knowledge_bases[1].chunking.max_tokens, or raise model_servers_chunk_chars to 600"),
    ({"var": "dify_knowledge_chunking.max_tokens", "chars": 2000},
     "(the model's trained maximum, model_max_tokens=8192, allows 8189)"),
])
def test_declared_knowledge_chunks_larger_than_the_servers_fail_naming_both(declared, message):
    servers = plan(preset="none", extra_servers=[llama(model_max_tokens=8192)])["servers"]
    declared = dict(declared, host="dify1", embedding_model=None)
    problems = check(servers, 497, [declared])["problems"]
    assert any(message in p and "model_servers_chunk_chars=497" in p for p in problems), problems


def test_declared_chunks_are_checked_against_the_embedding_model_they_use():
    servers = plan(servers=[llama("small", context_size=300), llama("big", port=9101, context_size=3000)])["servers"]
    declared = [{"host": "d", "var": "dify_knowledge_bases[0].chunking.max_tokens", "chars": 1000, "embedding_model": "big"}]
    assert check(servers, 200, declared)["problems"] == []
    declared[0]["embedding_model"] = None     # the workspace default: every embedding server here
    assert len(check(servers, 200, declared)["problems"]) == 1
    declared[0]["embedding_model"] = "elsewhere"
    assert check(servers, 200, declared)["problems"] == []


class HostVars(dict):
    """hostvars as the filter sees it: host -> mapping with get()."""


@pytest.mark.parametrize("hv, want", [
    ({}, []),
    ({"dify_knowledge_bases": [{"dataset": "Docs", "sources": []}]}, []),      # sizes left to the derived default
    ({"dify_knowledge_chunking": {"mode": "custom", "max_tokens": 800}},
     [("dify_knowledge_chunking.max_tokens", 800, None)]),
    ({"dify_knowledge_chunking": {"mode": "automatic"}}, [("dify_knowledge_chunking.mode", 500, None)]),
    ({"dify_knowledge_bases": [{"dataset": "A"}, {"dataset": "Code", "chunking": {"max_tokens": "700"}}],
      "dify_bootstrap_datasets": [{"name": "Code", "embedding_model": "bge-m3"}]},
     [("dify_knowledge_bases[1].chunking.max_tokens", 700, "bge-m3")]),
    ({"dify_knowledge_bases": [{"dataset": "A", "chunking": {"mode": "hierarchical", "max_tokens": 2000}}],
      "dify_bootstrap_default_models": {"text-embedding": "ruri-large"}},
     [("dify_knowledge_bases[0].chunking.subchunk_max_tokens", 256, "ruri-large")]),   # children are embedded
    ({"dify_knowledge_bases": [{"dataset": "A", "chunking": {"chunk_overlap": 10}}]}, []),
])
def test_knowledge_chunks_the_inventory_declares(hv, want):
    got = ms.model_servers_knowledge_chunks(HostVars({"dify1": hv}), ["dify1", "not-in-hostvars"])
    assert [(d["var"], d["chars"], d["embedding_model"]) for d in got] == want
    assert all(d["host"] == "dify1" for d in got)


# ------------------------------------------------------------------------------------- restarts
UNITS = [
    {"id": "llm", "server": "llm", "role": "backend", "backend": "llamacpp"},
    {"id": "embedding", "server": "embedding", "role": "backend", "backend": "llamacpp"},
    {"id": "embedding-tei", "server": "embedding", "role": "front", "backend": "llamacpp"},
    {"id": "rerank", "server": "rerank", "role": "backend", "backend": "infinity"},
    {"id": "rerank-tei", "server": "rerank", "role": "front", "backend": "infinity"},
]


@pytest.mark.parametrize("changes, restarted", [
    ({}, []),
    ({"configs": ["embedding-tei"]}, ["embedding-tei"]),            # a front's config: only that front
    ({"units": ["rerank-tei"]}, ["rerank-tei"]),
    ({"configs": ["embedding"]}, ["embedding"]),                    # a backend's config: not its front
    ({"models": ["embedding"]}, ["embedding"]),
    ({"llamacpp": True}, ["llm", "embedding"]),
    ({"infinity": True}, ["rerank"]),
    ({"front": True}, ["embedding-tei", "rerank-tei"]),             # tei_front.py itself
    ({"api_key": True}, ["llm", "embedding", "embedding-tei", "rerank", "rerank-tei"]),
])
def test_only_what_changed_restarts(changes, restarted):
    assert ms.model_servers_restarts(UNITS, changes) == restarted


def test_plan_does_not_mutate_its_inputs():
    inp = inputs(server_overrides={"llm": {"model": {"revision": "x"}}})
    before = copy.deepcopy(inp)
    ms.model_servers_plan(inp)
    assert inp == before
