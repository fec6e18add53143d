"""Rendering of the model_pool role without a host: its defaults read the GPU hosts' contracts, the plan
is the filter's, the nginx file prints it (real nginx checks it in molecule/multihost), and the tasks keep
to the file ownership and the order the docs promise."""

import re
from pathlib import Path

import pytest
import yaml

from role_render import RoleRender

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "model_pool"
PLAN_TASKS = yaml.safe_load((ROLE / "tasks" / "plan.yml").read_text())


def tei(addr, port, model="minilm", key=None):
    creds = {"server_url": "http://%s:%d" % (addr, port), "invoke_timeout": "300", "max_retries": "1"}
    if key:
        creds["api_key"] = key
    return {"name": "embedding", "kind": "embedding", "model_type": "text-embedding",
            "plugin_id": "langgenius/huggingface_tei", "provider": "langgenius/huggingface_tei/huggingface_tei",
            "model": model, "credentials": creds, "max_batch": 8}


def llm(addr, port, model="tiny-llama"):
    return {"name": "llm", "kind": "llm", "model_type": "llm", "plugin_id": "langgenius/openai_api_compatible",
            "provider": "langgenius/openai_api_compatible/openai_api_compatible", "model": model,
            "credentials": {"endpoint_url": "http://%s:%d/v1" % (addr, port), "endpoint_model_name": model,
                            "context_size": "256", "mode": "chat", "max_tokens_to_sample": "16"}, "max_batch": 2}


def contracts(**hosts):
    """hostvars where each GPU host ran model_servers in this run (model_servers_contract)."""
    return {h: {"model_servers_contract": {"dify_endpoints": eps}} for h, eps in hosts.items()}


def role(hostvars, docker0="", **extra):
    groups = {"gpu_model_servers": [h for h in hostvars if h != "dify1"], "dify_servers": ["dify1"]}
    r = RoleRender("model_pool", "debian13", groups=groups, hostvars=dict(hostvars, dify1={}),
                   __model_pool_docker0={"stdout": docker0}, **extra)
    r.templar.available_variables = dict(r.templar.available_variables, inventory_hostname="dify1")
    merge = next(t for t in PLAN_TASKS if t["name"] == "Merge the endpoints (model_pool_plan)")
    listen = r.expr(merge["vars"]["__model_pool_listen"].strip("{} "))
    plan = r.expr(merge["ansible.builtin.set_fact"]["__model_pool_plan"].strip().strip("{}").strip())
    host = "[%s]" % listen if ":" in listen else listen
    r.templar.available_variables = dict(r.templar.available_variables, __model_pool_plan=plan,
                                         __model_pool_listen=listen, __model_pool_listen_host=host)
    return r, plan


TWO = contracts(gpu1=[llm("10.0.0.11", 8081), tei("10.0.0.11", 8082)],
                gpu2=[llm("10.0.0.12", 8081), tei("10.0.0.12", 8082), tei("10.0.0.12", 8084, model="solo")])


def test_the_defaults_read_every_gpu_hosts_contract_in_inventory_order():
    r, plan = role(TWO)
    assert list(r.var("model_pool_host_endpoints")) == ["gpu1", "gpu2"]
    assert plan["problems"] == []
    assert [e["model"] for e in plan["endpoints"]] == ["tiny-llama", "minilm", "solo"]
    assert [p["model"] for p in plan["pools"]] == ["tiny-llama", "minilm"]


def test_the_contract_comes_from_the_local_fact_when_model_servers_did_not_run():
    hv = {"gpu1": {"ansible_local": {"model_servers": {"dify_endpoints": [tei("10.0.0.11", 8082)]}}},
          "gpu2": {"__site_preflight": {"declared": {"model_servers": {"dify_endpoints": [tei("10.0.0.12", 8082)]}}}}}
    _, plan = role(hv)
    assert plan["problems"] == [] and len(plan["pools"][0]["servers"]) == 2


def test_a_gpu_host_outside_the_run_stops_the_plan():
    _, plan = role({"gpu1": TWO["gpu1"], "gpu2": {}})
    assert len(plan["problems"]) == 1 and "no model_servers contract of gpu2" in plan["problems"][0]


@pytest.mark.parametrize("docker0, bind, want", [
    ("4: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0", "", "172.17.0.1"),
    ("", "", "127.0.0.1"),                                        # no docker0 (yet): loopback
    ("4: docker0    inet 172.17.0.1/16 scope global docker0", "10.0.0.21", "10.0.0.21"),
])
def test_the_listen_address_follows_the_model_servers_rule(docker0, bind, want):
    r, _ = role(TWO, docker0=docker0, model_pool_bind_address=bind)
    assert r.var("__model_pool_listen") == want


def test_the_dify_hosts_own_host_docker_internal_is_its_gateway():
    hv = contracts(dify1=[tei("host.docker.internal", 8082)], gpu2=[tei("10.0.0.12", 8082)])
    groups = {"gpu_model_servers": ["dify1", "gpu2"], "dify_servers": ["dify1"]}
    r = RoleRender("model_pool", "debian13", groups=groups, hostvars=hv,
                   __model_pool_docker0={"stdout": "4: docker0    inet 172.17.0.1/16 scope global docker0"})
    r.templar.available_variables = dict(r.templar.available_variables, inventory_hostname="dify1")
    merge = next(t for t in PLAN_TASKS if t["name"] == "Merge the endpoints (model_pool_plan)")
    plan = r.expr(merge["ansible.builtin.set_fact"]["__model_pool_plan"].strip().strip("{}").strip())
    assert [s["address"] for s in plan["pools"][0]["servers"]] == ["172.17.0.1:8082", "10.0.0.12:8082"]


def conf(r):
    return r.template("dify-model-pool.conf.j2")


def blocks(text, kind):
    return re.findall(r"^%s (\S+) \{\n(.*?)^\}" % kind, text, re.S | re.M)


def test_one_upstream_per_pooled_model_with_every_server_and_passive_health_checks():
    r, _ = role(TWO, docker0="4: docker0    inet 172.17.0.1/16 scope global docker0")
    text = conf(r)
    ups = dict(blocks(text, "upstream"))
    assert list(ups) == ["dify-model-pool-llm-tiny-llama", "dify-model-pool-text-embedding-minilm"]
    body = ups["dify-model-pool-llm-tiny-llama"]
    assert re.findall(r"^\s+server (\S+) max_fails=1 fail_timeout=10s;", body, re.M) == ["10.0.0.11:8081",
                                                                                         "10.0.0.12:8081"]
    lines = [line.split("#")[0].strip() for line in body.splitlines() if line.strip()]
    assert lines.index("least_conn;") < lines.index("keepalive 16;"), "a balancing method must come before keepalive"
    assert "solo" not in text, "a model one host serves is not pooled"


def test_the_server_listens_where_dify_reaches_it_and_retries_failed_requests():
    r, _ = role(TWO, docker0="4: docker0    inet 172.17.0.1/16 scope global docker0", model_pool_port=17990)
    text = conf(r)
    assert "    listen 172.17.0.1:17990;\n" in text
    for directive in ("proxy_http_version 1.1;", 'proxy_set_header Connection "";', "proxy_buffering off;",
                      "proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;",
                      "proxy_read_timeout 3600s;", "proxy_connect_timeout 5s;", "client_max_body_size 32m;",
                      "access_log /var/log/nginx/dify-model-pool.access.log dify_model_pool;"):
        assert "    %s\n" % directive in text, directive
    assert "proxy_request_buffering off" not in text, "a buffered request body can go to the next server"
    locations = re.findall(r"location (\S+) \{\n\s+proxy_pass (\S+);", text)
    assert locations == [("/llm/tiny-llama/", "http://dify-model-pool-llm-tiny-llama/"),
                         ("/text-embedding/minilm/", "http://dify-model-pool-text-embedding-minilm/")]
    assert "$upstream_addr" in text


def test_settings_reach_the_file():
    r, _ = role(TWO, model_pool_balance="round_robin", model_pool_max_fails=3, model_pool_fail_timeout_s=30,
                model_pool_keepalive=4, model_pool_bind_address="fd00::21")
    text = conf(r)
    assert "least_conn" not in text and "round_robin" not in text
    assert "max_fails=3 fail_timeout=30s;" in text and "keepalive 4;" in text
    assert "listen [fd00::21]:8090;" in text


def test_the_urls_dify_gets_are_paths_of_the_pool():
    r, plan = role(TWO, model_pool_port=17990)
    urls = [e["credentials"].get("endpoint_url") or e["credentials"]["server_url"] for e in plan["endpoints"]]
    assert urls == ["http://host.docker.internal:17990/llm/tiny-llama/v1",
                    "http://host.docker.internal:17990/text-embedding/minilm", "http://10.0.0.12:8084"]


def test_secrets_are_noticed_and_the_drop_in_only_for_a_non_loopback_pool():
    hv = contracts(gpu1=[tei("10.0.0.11", 8082, key="k")], gpu2=[tei("10.0.0.12", 8082, key="k")])
    r, _ = role(hv, docker0="4: docker0    inet 172.17.0.1/16 scope global docker0")
    assert r.var("__model_pool_secret") is True
    assert r.var("__model_pool_wants_drop_in") is True
    r, _ = role(TWO)   # no docker0: loopback
    assert r.var("__model_pool_secret") is False
    assert r.var("__model_pool_wants_drop_in") is False


def test_the_role_writes_only_its_own_files():
    owned = set()
    for path in (ROLE / "tasks").glob("*.yml"):
        for t in yaml.safe_load(path.read_text()) or []:
            for task in [t] + t.get("block", []) + t.get("rescue", []):
                for module in ("ansible.builtin.template", "ansible.builtin.copy", "ansible.builtin.file"):
                    if module in task:
                        owned.add(task[module].get("dest") or task[module].get("path"))
    assert owned == {"{{ model_pool_conf_path }}", "{{ __model_pool_validator }}", "{{ __model_pool_drop_in }}",
                     "{{ __model_pool_drop_in | dirname }}", "{{ __model_pool_fact }}",
                     "{{ __model_pool_fact | dirname }}", "/etc/nginx/sites-enabled/default"}
    # the nginx role never removes or rewrites conf.d files: it only includes them when it checks its site
    for path in (ROOT / "roles" / "nginx").rglob("*"):
        if path.is_file() and "conf.d" in path.read_text():
            assert path.name == "nginx-validate-site.sh.j2", path


def test_every_reload_is_checked_by_nginx_first():
    handlers = yaml.safe_load((ROLE / "handlers" / "main.yml").read_text())
    assert [h["listen"] for h in handlers] == ["model_pool reload nginx"] * 2
    assert handlers[0]["ansible.builtin.command"] == "nginx -t"
    assert handlers[1]["ansible.builtin.systemd_service"]["state"] == "reloaded"


def test_the_validator_checks_the_candidate_with_everything_but_the_live_pool():
    r, _ = role(TWO)
    text = r.template("dify-model-pool-validate.sh.j2")
    assert 'live="/etc/nginx/conf.d/dify-model-pool.conf"' in text
    assert '[ "$f" != "$live" ]' in text and "include $candidate;" in text and "sites-enabled" in text
    assert "nginx -t -q -c" in text
