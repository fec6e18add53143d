"""plugins/filter/model_pool.py: the merge of every GPU host's endpoints into the ones Dify registers.

Table-driven: each case names the hosts' endpoints (built in the model_servers_dify_endpoints shape,
docs/model-servers.md) and what Dify and nginx must get. The last tests feed the filter what the
model_servers role really publishes (model_servers_plan + model_servers_endpoints).
"""

import copy
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("model_pool", ROOT / "plugins" / "filter" / "model_pool.py")
mp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mp)

SETTINGS = {"dify_host": "host.docker.internal", "port": 8090, "local_host": "dify1", "local_address": "172.17.0.1"}
OAC = ("langgenius/openai_api_compatible", "langgenius/openai_api_compatible/openai_api_compatible")
TEI = ("langgenius/huggingface_tei", "langgenius/huggingface_tei/huggingface_tei")


def _h(addr):
    return "[%s]" % addr if ":" in addr else addr


def llm(addr, port=8081, model="tiny-llama", name="llm", **creds):
    c = {"endpoint_url": "http://%s:%d/v1" % (_h(addr), port), "endpoint_model_name": model,
         "context_size": "4096", "mode": "chat", "max_tokens_to_sample": "1024"}
    c.update(creds)
    return {"name": name, "kind": "llm", "model_type": "llm", "plugin_id": OAC[0], "provider": OAC[1],
            "model": model, "credentials": c, "max_batch": 2}


def tei(addr, port=8082, model="bge-small", kind="embedding", name=None, **creds):
    c = {"server_url": "http://%s:%d" % (_h(addr), port), "invoke_timeout": "120", "max_retries": "3"}
    c.update(creds)
    return {"name": name or kind, "kind": kind, "model_type": "text-embedding" if kind == "embedding" else "rerank",
            "plugin_id": TEI[0], "provider": TEI[1], "model": model, "credentials": c, "max_batch": 16}


def preset(addr):
    return [llm(addr), tei(addr), tei(addr, 8083, "bge-reranker", "rerank")]


def url(ep):
    c = ep["credentials"]
    return c.get("server_url") or c.get("endpoint_url")


def plan(hosts, **settings):
    return mp.model_pool_plan(hosts, dict(SETTINGS, **settings))


# ------------------------------------------------------------------------------------------ merges
MERGES = [
    # (id, hosts, [(model_type, model, URL Dify gets)], {pool location: [servers]})
    ("two hosts, same preset: one model each, on the pool",
     {"gpu1": preset("10.0.0.11"), "gpu2": preset("10.0.0.12")},
     [("llm", "tiny-llama", "http://host.docker.internal:8090/llm/tiny-llama/v1"),
      ("text-embedding", "bge-small", "http://host.docker.internal:8090/text-embedding/bge-small"),
      ("rerank", "bge-reranker", "http://host.docker.internal:8090/rerank/bge-reranker")],
     {"/llm/tiny-llama/": ["10.0.0.11:8081", "10.0.0.12:8081"],
      "/text-embedding/bge-small/": ["10.0.0.11:8082", "10.0.0.12:8082"],
      "/rerank/bge-reranker/": ["10.0.0.11:8083", "10.0.0.12:8083"]}),
    ("different models on different hosts: passed through as published, no pool",
     {"gpu1": [llm("10.0.0.11", model="big-llm")], "gpu2": [llm("10.0.0.12", model="small-llm"), tei("10.0.0.12")]},
     [("llm", "big-llm", "http://10.0.0.11:8081/v1"), ("llm", "small-llm", "http://10.0.0.12:8081/v1"),
      ("text-embedding", "bge-small", "http://10.0.0.12:8082")],
     {}),
    ("a shared embedding model pooled, an LLM only one host has passed through, first-seen order kept",
     {"gpu1": [llm("10.0.0.11", model="only-here"), tei("10.0.0.11")], "gpu2": [tei("10.0.0.12", 9082)]},
     [("llm", "only-here", "http://10.0.0.11:8081/v1"),
      ("text-embedding", "bge-small", "http://host.docker.internal:8090/text-embedding/bge-small")],
     {"/text-embedding/bge-small/": ["10.0.0.11:8082", "10.0.0.12:9082"]}),
    ("the same name as llm and as embedding: two models (keyed by type and name)",
     {"gpu1": [llm("10.0.0.11", model="m"), tei("10.0.0.11", model="m")], "gpu2": [llm("10.0.0.12", model="m")]},
     [("llm", "m", "http://host.docker.internal:8090/llm/m/v1"), ("text-embedding", "m", "http://10.0.0.11:8082")],
     {"/llm/m/": ["10.0.0.11:8081", "10.0.0.12:8081"]}),
    ("one host serving a model twice (two GPUs): a pool of its two servers",
     {"gpu1": [llm("10.0.0.11", 8081, name="llm-a"), llm("10.0.0.11", 8091, name="llm-b")]},
     [("llm", "tiny-llama", "http://host.docker.internal:8090/llm/tiny-llama/v1")],
     {"/llm/tiny-llama/": ["10.0.0.11:8081", "10.0.0.11:8091"]}),
    ("one machine under two inventory names: its address once",
     {"gpu1": [llm("10.0.0.11")], "gpu1-alias": [llm("10.0.0.11")], "gpu2": [llm("10.0.0.12")]},
     [("llm", "tiny-llama", "http://host.docker.internal:8090/llm/tiny-llama/v1")],
     {"/llm/tiny-llama/": ["10.0.0.11:8081", "10.0.0.12:8081"]}),
    ("the Dify host is a GPU host too: its host.docker.internal is the gateway nginx reaches",
     {"dify1": [tei("host.docker.internal")], "gpu2": [tei("10.0.0.12")]},
     [("text-embedding", "bge-small", "http://host.docker.internal:8090/text-embedding/bge-small")],
     {"/text-embedding/bge-small/": ["172.17.0.1:8082", "10.0.0.12:8082"]}),
    ("loopback on the Dify host itself is reachable by its nginx",
     {"dify1": [tei("127.0.0.1")], "gpu2": [tei("10.0.0.12")]},
     [("text-embedding", "bge-small", "http://host.docker.internal:8090/text-embedding/bge-small")],
     {"/text-embedding/bge-small/": ["127.0.0.1:8082", "10.0.0.12:8082"]}),
    ("server names may differ (Dify does not store them)",
     {"gpu1": [llm("10.0.0.11", name="llm")], "gpu2": [llm("10.0.0.12", name="chat")]},
     [("llm", "tiny-llama", "http://host.docker.internal:8090/llm/tiny-llama/v1")],
     {"/llm/tiny-llama/": ["10.0.0.11:8081", "10.0.0.12:8081"]}),
    ("model names with a slash and capitals: a path-safe slug",
     {"gpu1": [llm("10.0.0.11", model="Qwen/Qwen2.5-7B-Instruct-AWQ")],
      "gpu2": [llm("10.0.0.12", model="Qwen/Qwen2.5-7B-Instruct-AWQ")]},
     [("llm", "Qwen/Qwen2.5-7B-Instruct-AWQ", "http://host.docker.internal:8090/llm/Qwen-Qwen2.5-7B-Instruct-AWQ/v1")],
     {"/llm/Qwen-Qwen2.5-7B-Instruct-AWQ/": ["10.0.0.11:8081", "10.0.0.12:8081"]}),
    ("IPv6 servers are bracketed",
     {"gpu1": [tei("fd00::11")], "gpu2": [tei("fd00::12")]},
     [("text-embedding", "bge-small", "http://host.docker.internal:8090/text-embedding/bge-small")],
     {"/text-embedding/bge-small/": ["[fd00::11]:8082", "[fd00::12]:8082"]}),
    ("a host without endpoints adds nothing",
     {"gpu1": [llm("10.0.0.11")], "gpu2": []},
     [("llm", "tiny-llama", "http://10.0.0.11:8081/v1")], {}),
    ("no hosts: nothing to register, no pool", {}, [], {}),
]


@pytest.mark.parametrize("case, hosts, want, pools", MERGES, ids=[m[0] for m in MERGES])
def test_merge(case, hosts, want, pools):
    before = copy.deepcopy(hosts)
    out = plan(hosts)
    assert out["problems"] == []
    assert [(e["model_type"], e["model"], url(e)) for e in out["endpoints"]] == want
    assert {p["location"]: [s["address"] for s in p["servers"]] for p in out["pools"]} == pools
    assert hosts == before, "the inputs are not changed"


def test_a_model_on_one_host_is_exactly_what_the_host_published():
    hosts = {"gpu1": [llm("10.0.0.11", model="a", api_key="k")], "gpu2": [tei("10.0.0.12")]}
    out = plan(hosts)
    assert out["endpoints"] == [hosts["gpu1"][0], hosts["gpu2"][0]]


def test_a_pooled_endpoint_is_the_first_hosts_but_for_its_url():
    hosts = {"gpu1": [llm("10.0.0.11", api_key="k")], "gpu2": [llm("10.0.0.12", api_key="k")]}
    ep = plan(hosts)["endpoints"][0]
    want = copy.deepcopy(hosts["gpu1"][0])
    want["credentials"]["endpoint_url"] = "http://host.docker.internal:8090/llm/tiny-llama/v1"
    assert ep == want


def test_the_pool_describes_its_upstream():
    pool = plan({"gpu1": preset("10.0.0.11"), "gpu2": preset("10.0.0.12")})["pools"][0]
    assert pool == {
        "model_type": "llm", "model": "tiny-llama", "kind": "llm", "location": "/llm/tiny-llama/",
        "upstream": "dify-model-pool-llm-tiny-llama", "scheme": "http",
        "url": "http://host.docker.internal:8090/llm/tiny-llama/v1", "probe": "/llm/tiny-llama/health",
        "servers": [{"address": "10.0.0.11:8081", "host": "gpu1", "name": "llm", "who": "gpu1"},
                    {"address": "10.0.0.12:8081", "host": "gpu2", "name": "llm", "who": "gpu2"}],
        "hosts": ["gpu1", "gpu2"]}


def test_adding_or_removing_a_host_changes_only_the_upstream_servers():
    two = plan({"gpu1": preset("10.0.0.11"), "gpu2": preset("10.0.0.12")})
    three = plan({"gpu1": preset("10.0.0.11"), "gpu2": preset("10.0.0.12"), "gpu3": preset("10.0.0.13")})
    assert three["endpoints"] == two["endpoints"], "Dify's registrations stay the same"
    strip = [{k: v for k, v in p.items() if k not in ("servers", "hosts")} for p in two["pools"]]
    assert strip == [{k: v for k, v in p.items() if k not in ("servers", "hosts")} for p in three["pools"]]
    assert [len(p["servers"]) for p in three["pools"]] == [3, 3, 3]


def test_the_pool_url_follows_the_settings():
    out = plan({"gpu1": [tei("10.0.0.11")], "gpu2": [tei("10.0.0.12")]}, dify_host="fd00::1", port=17990)
    assert url(out["endpoints"][0]) == "http://[fd00::1]:17990/text-embedding/bge-small"


def test_a_list_of_hosts_is_read_like_the_mapping():
    hosts = {"gpu1": preset("10.0.0.11"), "gpu2": preset("10.0.0.12")}
    listed = [{"host": h, "endpoints": e} for h, e in hosts.items()]
    assert plan(listed) == plan(hosts)


# ------------------------------------------------------------------------------------------ refusals
PROBLEMS = [
    # (id, hosts, settings, fragments every problem text must hold, number of problems)
    ("hosts disagree on a credential: the hosts and the field, with the values",
     {"gpu1": [tei("10.0.0.11")], "gpu2": [tei("10.0.0.12", max_retries="1")]}, {},
     ["the text-embedding model 'bge-small'", "gpu1, gpu2", "credentials.max_retries",
      "gpu1: '3'; gpu2: '1'", "model_servers_server_overrides"], 1),
    ("three hosts, one differs: grouped by value",
     {"gpu1": [tei("10.0.0.11")], "gpu2": [tei("10.0.0.12", invoke_timeout="300")], "gpu3": [tei("10.0.0.13")]}, {},
     ["credentials.invoke_timeout", "gpu1, gpu3: '120'; gpu2: '300'"], 1),
    ("hosts disagree on the client batch (max_batch: huggingface_tei reads /info from any host)",
     {"gpu1": [tei("10.0.0.11")], "gpu2": [dict(tei("10.0.0.12"), max_batch=32)]}, {},
     ["max_batch", "gpu1: 16; gpu2: 32"], 1),
    ("hosts disagree on the API key: named, never shown",
     {"gpu1": [llm("10.0.0.11", api_key="s3cret-one")], "gpu2": [llm("10.0.0.12", api_key="s3cret-two")]}, {},
     ["credentials.api_key", "values not shown"], 1),
    ("one host with a key, one without: named, not shown",
     {"gpu1": [llm("10.0.0.11", api_key="s3cret-one")], "gpu2": [llm("10.0.0.12")]}, {},
     ["credentials.api_key", "gpu1; gpu2 (values not shown"], 1),
    ("one host's server without its TEI front: provider, plugin and credentials differ",
     {"gpu1": [tei("10.0.0.11")],
      "gpu2": [dict(llm("10.0.0.12", 8082, model="bge-small"), kind="embedding", model_type="text-embedding")]}, {},
     ["the text-embedding model 'bge-small'", "gpu1, gpu2"], 2),
    ("the servers' URLs have different paths",
     {"gpu1": [llm("10.0.0.11")], "gpu2": [dict(llm("10.0.0.12"), credentials=dict(
         llm("10.0.0.12")["credentials"], endpoint_url="http://10.0.0.12:8081/openai/v1"))]}, {},
     ["credentials.endpoint_url (path)", "'/v1'", "'/openai/v1'"], 1),
    ("the servers' URLs have different schemes",
     {"gpu1": [tei("10.0.0.11")], "gpu2": [dict(tei("10.0.0.12"), credentials=dict(
         tei("10.0.0.12")["credentials"], server_url="https://10.0.0.12:8082"))]}, {},
     ["credentials.server_url (scheme)", "'http'", "'https'"], 1),
    ("a remote host hands out host.docker.internal: the pool cannot reach it",
     {"gpu1": [tei("host.docker.internal")], "gpu2": [tei("10.0.0.12")]}, {},
     ["gpu1 hands Dify http://host.docker.internal:8082", "model_servers_dify_host", "on gpu1", "pool on dify1"], 1),
    ("a remote host hands out a loopback address",
     {"gpu1": [tei("10.0.0.11")], "gpu2": [tei("127.0.0.1")]}, {},
     ["gpu2 hands Dify http://127.0.0.1:8082", "model_servers_bind_address"], 1),
    ("two model names with one path: refused, naming both",
     {"gpu1": [llm("10.0.0.11", model="a/b"), llm("10.0.0.11", 8091, model="a-b")],
      "gpu2": [llm("10.0.0.12", model="a/b"), llm("10.0.0.12", 8091, model="a-b")]}, {},
     ["the llm model 'a/b' and the llm model 'a-b'", "/llm/a-b/"], 1),
    ("an endpoint without a URL",
     {"gpu1": [dict(tei("10.0.0.11"), credentials={"invoke_timeout": "1"})]}, {},
     ["gpu1's model_servers_dify_endpoints[0]", "no http(s) URL"], 1),
    ("an endpoint that is not one",
     {"gpu1": ["llm"], "gpu2": "not a list"}, {},
     ["model_servers_dify_endpoints"], 2),
    ("no port for the pool", {}, {"port": "x"}, ["model_pool_port"], 1),
    ("a GPU host without a contract (outside --limit): stop rather than drop its servers",
     {"gpu1": preset("10.0.0.11"), "gpu2": None}, {},
     ["no model_servers contract of gpu2", "outside --limit", "drop gpu2's servers"], 1),
]


@pytest.mark.parametrize("case, hosts, settings, fragments, count", PROBLEMS, ids=[p[0] for p in PROBLEMS])
def test_refused(case, hosts, settings, fragments, count):
    out = plan(hosts, **settings)
    assert out["problems"], out
    if count is not None:
        assert len(out["problems"]) == count, out["problems"]
    text = " | ".join(out["problems"])
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert "s3cret" not in text


def test_a_refused_model_is_neither_registered_nor_pooled_and_the_others_still_are():
    hosts = {"gpu1": preset("10.0.0.11"), "gpu2": [llm("10.0.0.12"), tei("10.0.0.12", max_retries="1"),
                                                   tei("10.0.0.12", 8083, "bge-reranker", "rerank")]}
    out = plan(hosts)
    assert len(out["problems"]) == 1
    assert [e["model"] for e in out["endpoints"]] == ["tiny-llama", "bge-reranker"]
    assert [p["model"] for p in out["pools"]] == ["tiny-llama", "bge-reranker"]


def test_another_provider_is_named_alone_not_every_field_that_follows_from_it():
    out = plan(PROBLEMS[5][1])
    fields = [p.split("disagree on ", 1)[1].split(" (", 1)[0] for p in out["problems"]]
    assert fields == ["plugin_id", "provider"]


def test_a_setting_whose_name_mentions_tokens_is_not_a_secret():
    out = plan({"gpu1": [llm("10.0.0.11")], "gpu2": [llm("10.0.0.12", max_tokens_to_sample="16")]})
    assert "(gpu1: '1024'; gpu2: '16')" in out["problems"][0]


def test_a_remote_alias_that_passes_through_is_only_warned_about():
    out = plan({"gpu1": [tei("host.docker.internal")]})
    assert out["problems"] == [] and url(out["endpoints"][0]) == "http://host.docker.internal:8082"
    assert "only a Dify on gpu1 itself reaches" in out["warnings"][0]


def test_upstream_names_are_host_names():
    pools = plan({"gpu1": [tei("10.0.0.11", model="bge_small.en v1.5")],
                  "gpu2": [tei("10.0.0.12", model="bge_small.en v1.5")]})["pools"]
    assert pools[0]["upstream"] == "dify-model-pool-text-embedding-bge-small.en-v1.5"
    assert pools[0]["location"] == "/text-embedding/bge_small.en-v1.5/"


def test_host_endpoints_must_be_a_mapping_or_a_list():
    with pytest.raises(Exception, match="mapping"):
        mp.model_pool_plan("gpu1", SETTINGS)


# ------------------------------------------------------------------ what model_servers really publishes
def _published(servers, address, api_key=""):
    """model_servers_dify_endpoints as tasks/normalize.yml computes them on a host (bind and Dify host ADDRESS)."""
    import yaml
    from role_render import RoleRender

    tasks = yaml.safe_load((ROOT / "roles" / "model_servers" / "tasks" / "normalize.yml").read_text())
    resolve = next(t for t in tasks if t["name"] == "Resolve the server list")
    publish = next(t for t in tasks if t["name"] == "Publish the endpoints Dify registers (model_servers_dify_endpoints)")
    r = RoleRender("model_servers", "debian13", model_servers_servers=servers, model_servers_runtime="native",
                   model_servers_bind_address=address, model_servers_dify_host=address,
                   model_servers_api_key=api_key, __model_servers_inputs=resolve["vars"]["__model_servers_inputs"],
                   __model_servers_nvidiactl={"stat": {"exists": False}}, __model_servers_docker0={"stdout": ""})
    planned = r.expr("__model_servers_inputs | model_servers_plan")
    assert planned["problems"] == []
    r.templar.available_variables = dict(r.templar.available_variables, __model_servers_list=planned["servers"])
    expression = publish["ansible.builtin.set_fact"]["model_servers_dify_endpoints"].strip()
    return r.templar.template(__import__("ansible.template", fromlist=["x"]).trust_as_template(expression))


SERVERS = [
    {"name": "llm", "kind": "llm", "backend": "llamacpp", "model": {"src": "/t/tiny-llama.gguf"},
     "served_name": "tiny-llama", "port": 17911, "context_size": 256, "parallel": 2, "max_tokens": 16},
    {"name": "embedding", "kind": "embedding", "backend": "llamacpp", "model": {"src": "/t/minilm.gguf"},
     "served_name": "all-minilm-l6-v2", "port": 17912, "context_size": 256, "batch_size": 8},
]


def test_the_model_servers_endpoints_of_two_hosts_merge_into_one_model_each():
    gpu1 = _published(SERVERS, "10.0.0.11", api_key="pool-key")
    gpu2 = _published([dict(s, port=s["port"] + 10) for s in SERVERS], "10.0.0.12", api_key="pool-key")
    out = plan({"gpu1": gpu1, "gpu2": gpu2})
    assert out["problems"] == []
    assert [url(e) for e in out["endpoints"]] == ["http://host.docker.internal:8090/llm/tiny-llama/v1",
                                                  "http://host.docker.internal:8090/text-embedding/all-minilm-l6-v2"]
    assert [[s["address"] for s in p["servers"]] for p in out["pools"]] == [
        ["10.0.0.11:17911", "10.0.0.12:17921"], ["10.0.0.11:17912", "10.0.0.12:17922"]]
    assert all(e["credentials"]["api_key"] == "pool-key" for e in out["endpoints"])


def test_a_different_batch_on_one_host_is_refused_with_the_field():
    gpu1 = _published(SERVERS, "10.0.0.11")
    gpu2 = _published([SERVERS[0], dict(SERVERS[1], batch_size=16)], "10.0.0.12")
    problems = plan({"gpu1": gpu1, "gpu2": gpu2})["problems"]
    assert len(problems) == 1 and "disagree on max_batch (gpu1: 8; gpu2: 16)" in problems[0], problems


# ------------------------------------------------------------------ the shipped pool inventory
def _published_preset(address, preset, runtime):
    """Like _published, for a host that only names a preset (model_servers_servers empty)."""
    import yaml
    from role_render import RoleRender

    tasks = yaml.safe_load((ROOT / "roles" / "model_servers" / "tasks" / "normalize.yml").read_text())
    resolve = next(t for t in tasks if t["name"] == "Resolve the server list")
    publish = next(t for t in tasks if t["name"] == "Publish the endpoints Dify registers (model_servers_dify_endpoints)")
    r = RoleRender("model_servers", "debian13", model_servers_preset=preset, model_servers_runtime=runtime,
                   model_servers_bind_address=address, model_servers_dify_host=address,
                   __model_servers_inputs=resolve["vars"]["__model_servers_inputs"],
                   __model_servers_nvidiactl={"stat": {"exists": True}}, __model_servers_docker0={"stdout": ""})
    planned = r.expr("__model_servers_inputs | model_servers_plan")
    assert planned["problems"] == []
    r.templar.available_variables = dict(r.templar.available_variables, __model_servers_list=planned["servers"])
    expression = publish["ansible.builtin.set_fact"]["model_servers_dify_endpoints"].strip()
    return r.templar.template(__import__("ansible.template", fromlist=["x"]).trust_as_template(expression))


def test_the_example_pool_inventory_pools_every_model_of_its_preset_over_every_gpu_host():
    """inventories/example-pool (docs/scaling.md, stage 1): the GPU hosts share one preset and publish their
    ansible_host; the Dify host gets ONE model per model, each spread over all three hosts."""
    import yaml

    inv = ROOT / "inventories" / "example-pool"
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())["all"]["children"]["gpu_model_servers"]["hosts"]
    gv = yaml.safe_load((inv / "group_vars" / "gpu_model_servers.yml").read_text())
    assert gv["model_servers_bind_address"] == gv["model_servers_dify_host"] == "{{ ansible_host }}"
    published = {h: _published_preset(v["ansible_host"], gv["model_servers_preset"], "container")
                 for h, v in hosts.items()}
    single = published[next(iter(hosts))]
    out = plan(published)
    assert out["problems"] == [] and out["warnings"] == []
    assert [(e["model_type"], e["model"]) for e in out["endpoints"]] == [(e["model_type"], e["model"]) for e in single]
    assert all(url(e).startswith("http://host.docker.internal:8090/") for e in out["endpoints"])
    assert [p["hosts"] for p in out["pools"]] == [list(hosts)] * len(single)
