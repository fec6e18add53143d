"""plugins/filter/site_rules.py: contracts between roles, the preflight's rules, the end-of-run report.

Table-driven; the last tests hold the playbooks and the roles to the filter's tables (which role runs
where, every contract input wired, every playbook that changes hosts starting with the preflight).
"""

import copy
import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("site_rules", ROOT / "plugins" / "filter" / "site_rules.py")
sr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sr)


def load(path):
    return yaml.safe_load((ROOT / path).read_text())


# ------------------------------------------------------------------------------------------ contracts
RUN = {"upload_file_size_limit_mb": 5, "public_url": "https://run"}
LOCAL = {"upload_file_size_limit_mb": 7, "public_url": "https://local", "backup_dir": "/b"}
DECLARED = {"upload_file_size_limit_mb": 9, "public_url": "https://declared", "install_dir": "/opt/dify"}


@pytest.mark.parametrize("hostvars, key, want", [
    ({"h": {"dify_contract": RUN, "ansible_local": {"dify": LOCAL}, "__site_preflight": {"declared": {"dify": DECLARED}}}},
     "upload_file_size_limit_mb", 5),                                      # this run's wins
    ({"h": {"ansible_local": {"dify": LOCAL}, "__site_preflight": {"declared": {"dify": DECLARED}}}},
     "upload_file_size_limit_mb", 7),                                      # else the local fact
    ({"h": {"__site_preflight": {"declared": {"dify": DECLARED}}}}, "upload_file_size_limit_mb", 9),  # else declared
    ({"h": {"dify_contract": RUN, "ansible_local": {"dify": LOCAL}}}, "backup_dir", "/b"),  # a key the first lacks
    ({"h": {"dify_contract": RUN, "__site_preflight": {"declared": {"dify": DECLARED}}}}, "install_dir", "/opt/dify"),
    ({"h": {"dify_contract": RUN}}, None, RUN),
    ({"h": {"ansible_local": {"other": LOCAL}}, "x": {"dify_contract": RUN}}, "public_url", "fallback"),
])
def test_contract_sources_in_order(hostvars, key, want):
    assert sr.site_contract("h", hostvars, "dify", key, "fallback") == want


def test_missing_contract_names_what_was_looked_for():
    with pytest.raises(sr.AnsibleFilterError) as err:
        sr.site_contract("dify1", {"dify1": {}}, "dify", "upload_file_size_limit_mb")
    msg = str(err.value)
    assert "dify" in msg and "dify1" in msg and "/etc/ansible/facts.d/dify.fact" in msg and "--limit" in msg
    with pytest.raises(sr.AnsibleFilterError):
        sr.site_contract("absent", {}, "dify")


def test_contracts_of_several_hosts_skip_those_without():
    hostvars = {"g1": {"model_servers_contract": {"knowledge_chunk_chars": 500}},
                "g2": {},
                "g3": {"ansible_local": {"model_servers": {"knowledge_chunk_chars": 250}}}}
    assert sr.site_contracts(["g1", "g2", "g3", "gone"], hostvars, "model_servers") == [
        {"knowledge_chunk_chars": 500}, {"knowledge_chunk_chars": 250}]
    assert sr.site_contracts(None, hostvars, "model_servers") == []


@pytest.mark.parametrize("host, groups, want", [
    ("one", {"dify_servers": ["one"], "edge": ["one"]}, "one"),
    ("edge1", {"dify_servers": ["d1", "d2"], "edge": ["edge1"]}, "d1"),
    ("d2", {"dify_servers": ["d1", "d2"], "edge": ["d2"]}, "d2"),
    ("edge1", {"edge": ["edge1"]}, ""),
])
def test_the_dify_host_an_edge_fronts(host, groups, want):
    assert sr.site_edge_dify_host(host, groups) == want


@pytest.mark.parametrize("groups, settings, want", [
    (["gpu_model_servers", "dify_servers", "edge"], {},
     ["nvidia_driver", "nvidia_container_toolkit", "docker", "model_servers", "dify", "model_pool", "dify_bootstrap", "nginx"]),
    (["gpu_model_servers"], {"tunnel": True, "knowledge": True},
     ["nvidia_driver", "nvidia_container_toolkit", "docker", "model_servers"]),
    (["dify_servers", "edge"], {"tunnel": True, "knowledge": True},
     ["docker", "dify", "model_pool", "dify_bootstrap", "nginx", "cloudflared", "dify_knowledge"]),
    (["edge"], {}, ["nginx"]),
    (["dify_kubernetes"], {}, ["dify_bootstrap", "dify_kubernetes"]),
    ([], {}, []),
])
def test_roles_of_a_host(groups, settings, want):
    assert sr.site_host_roles(groups, settings) == want


def test_argument_spec_of_every_role_loads_without_defaults_or_descriptions():
    for role_dir in sorted((ROOT / "roles").iterdir()):
        if not (role_dir / "meta" / "argument_specs.yml").exists():
            continue
        options = sr.site_argument_spec(role_dir.name)
        assert options, role_dir.name

        def walk(opts):
            for name, spec in opts.items():
                assert "default" not in spec and "description" not in spec, (role_dir.name, name)
                walk(spec.get("options") or {})
        walk(options)
    boot = sr.site_argument_spec("dify_bootstrap")
    assert boot["dify_bootstrap_model_endpoints"]["options"]["name"]["required"] is True  # the rest stays
    with pytest.raises(sr.AnsibleFilterError):
        sr.site_argument_spec("no_such_role")


def test_endpoint_summary_carries_no_credentials():
    eps = [{"name": "llm", "model_type": "llm", "model": "m", "provider": "a/b/c",
            "credentials": {"endpoint_url": "http://h:1/v1", "api_key": "sk-SECRET"}},
           {"name": "emb", "model_type": "text-embedding", "model": "e", "provider": "x/y/z",
            "credentials": {"server_url": "http://h:2", "api_key": "sk-SECRET"}}, "junk"]
    out = sr.site_endpoint_summary(eps)
    assert out == [{"name": "llm", "model_type": "llm", "model": "m", "provider": "a/b/c", "url": "http://h:1/v1"},
                   {"name": "emb", "model_type": "text-embedding", "model": "e", "provider": "x/y/z",
                    "url": "http://h:2"}]
    assert "SECRET" not in repr(out)


# -------------------------------------------------------------------------------------- preflight rules
EPS = [{"name": "llm", "model_type": "llm", "model": "qwen", "provider": "p/o/q"},
       {"name": "embedding", "model_type": "text-embedding", "model": "bge", "provider": "p/t/t"},
       {"name": "rerank", "model_type": "rerank", "model": "rr", "provider": "p/t/t"}]


def dify_record(**over):
    dify = {"public_url": "https://dify.example.com", "expose_http_port": 8080, "expose_http_address": "127.0.0.1",
            "upload_file_size_limit_mb": 100}
    dify.update(over.pop("dify", {}))
    boot = {"model_endpoints": EPS, "model_endpoints_set": False, "default_models": {},
            "datasets": [{"name": "Documents"}],
            "apps": [{"name": "Assistant", "datasets": ["Documents"]}]}
    boot.update(over.pop("boot", {}))
    rec = {"roles": ["docker", "dify", "dify_bootstrap"], "declared": {"dify": dify},
           "settings": {"dify_bootstrap": boot}}
    if "knowledge" in over:
        rec["settings"]["dify_knowledge"] = over.pop("knowledge")
    assert not over
    return rec


def edge_settings(nginx=None, tunnel=None):
    base = {"client_max_body_size_mb": 100, "upstream_host": "127.0.0.1", "upstream_port": 8080,
            "server_names": ["dify.example.com"], "default_server": True, "http_port": 80, "https_port": 443,
            "tls_mode": "selfsigned", "tls_cert_src": False, "tls_key_src": False, "acme_email": False,
            "tls_key_path": "/etc/nginx/tls/dify.key"}
    base.update(nginx or {})
    out = {"nginx": base}
    if tunnel is not None:
        t = {"enabled": True, "mode": "token", "plan_body_limit_mb": 100, "hostnames": [], "missing_credentials": [],
             "secret_path": "/etc/cloudflared/tunnel.env"}
        t.update(tunnel)
        out["cloudflared"] = t
    return out


def one_box(dify=None, boot=None, nginx=None, tunnel=None, knowledge=None):
    rec = dify_record(dify=dify or {}, boot=boot or {}, **({"knowledge": knowledge} if knowledge else {}))
    rec["roles"] += ["nginx"]
    rec["settings"].update(edge_settings(nginx, tunnel))
    hostvars = {"box": {"__site_preflight": rec}}
    groups = {"all": ["box"], "gpu_model_servers": ["box"], "dify_servers": ["box"], "edge": ["box"]}
    return hostvars, groups


def two_hosts(edge_nginx=None, dify=None):
    hostvars = {"dify1": {"__site_preflight": dify_record(dify=dify or {})},
                "edge1": {"__site_preflight": {"roles": ["nginx"], "declared": {}, "settings": edge_settings(edge_nginx)}}}
    groups = {"gpu_model_servers": ["gpu1"], "dify_servers": ["dify1"], "edge": ["edge1"]}
    return hostvars, groups


@pytest.mark.parametrize("case, site, wanted", [
    # consistent sites: nothing to say
    ("one box", one_box(), []),
    ("one box, test ports", one_box(dify={"public_url": "https://localhost:17543", "expose_http_port": 17590,
                                          "upload_file_size_limit_mb": 2},
                                    nginx={"https_port": 17543, "http_port": 17580, "upstream_port": 17590,
                                           "client_max_body_size_mb": 2, "server_names": ["localhost"]}), []),
    ("nginx larger than Dify", one_box(nginx={"client_max_body_size_mb": 200}), []),
    ("tunnel in token mode", one_box(tunnel={}), []),
    ("tunnel, local mode, its host name", one_box(tunnel={"mode": "local", "hostnames": ["dify.example.com"]}), []),
    ("name not listed but default server", one_box(nginx={"server_names": ["dify.example.internal"]}), []),
    ("no model hosts, no endpoints declared", (
        {"d": {"__site_preflight": dify_record(boot={"model_endpoints": []})}}, {"dify_servers": ["d"]}), []),
    ("reranking off", one_box(boot={"model_endpoints": EPS[:2],
                                    "datasets": [{"name": "Documents", "reranking_model": ""}]}), []),
    # body limits of every proxy
    ("tunnel plan smaller than the upload limit", one_box(dify={"upload_file_size_limit_mb": 150}, tunnel={}),
     ["dify_upload_file_size_limit_mb=150 on box is larger than cloudflared_plan_body_limit_mb=100 on box"]),
    ("nginx smaller than Dify", one_box(nginx={"client_max_body_size_mb": 10}),
     ["nginx_client_max_body_size_mb=10 on box is smaller than dify_upload_file_size_limit_mb=100 on box"]),
    ("knowledge requests larger than the upload limit",
     one_box(dify={"upload_file_size_limit_mb": 1}, knowledge={"max_request_kb": 2048, "base_max_request_kb": [None, 4096]}),
     ["dify_knowledge_max_request_kb=2048 on box is larger than dify_upload_file_size_limit_mb=1 (1024 KB)",
      "dify_knowledge_bases[1].max_request_kb=4096 on box"]),
    ("knowledge requests within", one_box(knowledge={"max_request_kb": 1024, "base_max_request_kb": [None]}), []),
    # the path to Dify
    ("upstream port set by hand", one_box(nginx={"upstream_port": 9000}),
     ["nginx_upstream_port=9000 on box differs from dify_expose_http_port=8080 on box"]),
    ("nginx on Dify's port", one_box(nginx={"https_port": 8080}, dify={"public_url": "https://dify.example.com:8080"}),
     ["nginx_https_port=8080 on box is dify_expose_http_port"]),
    ("edge elsewhere, loopback everywhere", two_hosts(),
     ["nginx_upstream_host=127.0.0.1 on edge1, but Dify runs on dify1",
      "dify_expose_http_address=127.0.0.1 on dify1: the edge host edge1 cannot reach Dify there"]),
    ("edge elsewhere, addresses set", two_hosts(edge_nginx={"upstream_host": "192.0.2.21"},
                                                dify={"expose_http_address": "192.0.2.21"}), []),
    ("edge without Dify", ({"e": {"__site_preflight": {"roles": ["nginx"], "settings": edge_settings()}}},
                           {"edge": ["e"], "dify_servers": []}),
     ["e is in the edge group, but dify_servers is empty"]),
    # the public URL
    ("URL on Dify's own port, past the host nginx", one_box(dify={"public_url": "http://dify.example.com:8080"}),
     ["dify_public_url=http://dify.example.com:8080 on box is not what the edge on box serves",
      "dify_public_url should be https://dify.example.com"]),
    ("URL on another https port", one_box(dify={"public_url": "https://dify.example.com:8443"}),
     ["serves https on port 443 (nginx_https_port)"]),
    ("nginx answers other names only", one_box(nginx={"server_names": ["other.example.com"], "default_server": False}),
     ["the host nginx answers for other.example.com only"]),
    ("tunnel ingress for another name", one_box(nginx={"server_names": ["other.example.com"], "default_server": False},
                                                tunnel={"mode": "local", "hostnames": ["other.example.com"]}),
     ["the tunnel's ingress serves other.example.com"]),
    ("not a URL", one_box(dify={"public_url": "dify.example.com"}), ["dify_public_url='dify.example.com' on box"]),
    # endpoints for the knowledge bases and apps
    ("no embedding endpoint", one_box(boot={"model_endpoints": [EPS[0]]}),
     ["dify_bootstrap_datasets[0] ('Documents').embedding_model needs a text-embedding model"]),
    ("no llm endpoint", one_box(boot={"model_endpoints": EPS[1:]}),
     ["dify_bootstrap_apps[0] ('Assistant').model needs a llm model"]),
    ("named model not served", one_box(boot={"datasets": [{"name": "Documents", "embedding_model": "e5"}]}),
     ["dify_bootstrap_datasets[0] ('Documents').embedding_model: embedding model 'e5' is not a text-embedding model"]),
    ("named rerank model not served", one_box(boot={"apps": [{"name": "A", "reranking_model": "bge-rr"}]}),
     ["dify_bootstrap_apps[0] ('A').reranking_model: reranking model 'bge-rr' is not a rerank model"]),
    ("default model not served", one_box(boot={"default_models": {"llm": "llama"}}),
     ["dify_bootstrap_default_models[llm]: the default 'llama' is not a llm model"]),
    ("app on an undeclared knowledge base", one_box(boot={"apps": [{"name": "A", "datasets": ["Manuals"]}]}),
     ["dify_bootstrap_apps[0] ('A').datasets names knowledge bases dify_bootstrap_datasets does not declare on box: Manuals"]),
    ("endpoints declared by hand and empty", (
        {"d": {"__site_preflight": dify_record(boot={"model_endpoints": [], "model_endpoints_set": True})}},
        {"dify_servers": ["d"]}), ["dify_bootstrap_model_endpoints on d have none"]),
    # the edge's own inputs
    ("provided TLS without files", one_box(nginx={"tls_mode": "provided"}),
     ["nginx_tls_mode=provided on box needs nginx_tls_cert_src and nginx_tls_key_src"]),
    ("acme without e-mail", one_box(nginx={"tls_mode": "acme"}), ["nginx_tls_mode=acme on box needs nginx_acme_email"]),
    ("local tunnel without credentials", one_box(tunnel={"mode": "local", "hostnames": ["dify.example.com"],
                                                         "missing_credentials": ["TunnelSecret"]}),
     ["cloudflared_mode=local on box needs cloudflared_tunnel_credentials with TunnelSecret"]),
])
def test_preflight_rules(case, site, wanted):
    hostvars, groups = site
    problems = sr.site_preflight_problems(hostvars, groups)
    if not wanted:
        assert problems == [], case
    for want in wanted:
        assert any(want in p for p in problems), (case, want, problems)
    assert len(problems) <= len(wanted) + 1, (case, problems)   # no unrelated noise


def test_hosts_outside_the_run_are_not_judged():
    hostvars, groups = one_box(dify={"upload_file_size_limit_mb": 150}, tunnel={})
    del hostvars["box"]["__site_preflight"]
    assert sr.site_preflight_problems(hostvars, groups) == []


# ------------------------------------------------------------------------------------------- the report
SECRETS = ["Adm1n-Passw0rd-XYZ", "app-KEYKEYKEY", "dataset-KEYKEYKEY", "sk-model-KEY", "tunnel-TOKEN-123",
           "db-Passw0rd-ABC"]


def report_site(check=False):
    endpoints = [{"name": "llm", "model_type": "llm", "model": "qwen", "provider": "langgenius/oac/oac",
                  "credentials": {"endpoint_url": "http://host.docker.internal:8081/v1", "api_key": "sk-model-KEY"}}]
    box = {
        "group_names": ["gpu_model_servers", "dify_servers", "edge"],
        "dify_contract": {"public_url": "https://dify.example.com", "secrets_file": "/opt/dify/secrets.yml",
                          "env_file": "/opt/dify/.env", "expose_http_port": 8080, "upload_file_size_limit_mb": 100},
        "model_servers_contract": {"dify_endpoints": endpoints, "knowledge_chunk_chars": 500,
                                   "health": [{"name": "llm", "health": "http://127.0.0.1:8081/health"}],
                                   "secret_files": ["/etc/model-servers/api-key.env"]},
        "__site_preflight": {"declared": {"dify_bootstrap": {"credentials_file": "/opt/dify/bootstrap-credentials.yml",
                                                             "admin_email": "admin@example.com"}},
                             "settings": {"nginx": {"tls_key_path": "/etc/nginx/tls/dify.key"},
                                          "cloudflared": {"enabled": True, "mode": "token",
                                                          "secret_path": "/etc/cloudflared/tunnel.env"},
                                          "dify_knowledge": {"bases": [{"dataset": "Handbook"}]}}},
        # secrets that live in memory during a run: the report must not print them
        "dify_bootstrap_admin_password": "Adm1n-Passw0rd-XYZ",
        "dify_bootstrap_app_api_keys": {"Assistant": "app-KEYKEYKEY"},
        "dify_bootstrap_dataset_api_key": "dataset-KEYKEYKEY",
        "cloudflared_tunnel_token": "tunnel-TOKEN-123",
        "dify_secret_overrides": {"db_password": "db-Passw0rd-ABC"},
        "__site_report_probe": {"results": [{"item": {"name": "llm", "health": "http://127.0.0.1:8081/health"},
                                             "status": -1 if check else 200, "msg": "Connection refused"}]},
    }
    if not check:
        box["dify_bootstrap_app_urls"] = {"Assistant": "https://dify.example.com/chat/AbCd1234"}
        box["dify_knowledge_results"] = {"Handbook": {"added": 2, "updated": 1, "removed": 1, "unchanged": 10,
                                                      "failed": 0, "skipped": 3}}
    groups = {"gpu_model_servers": ["box"], "dify_servers": ["box"], "edge": ["box"]}
    return {"box": box}, groups


def test_report_says_where_everything_is_and_no_secret():
    hostvars, groups = report_site()
    lines = sr.site_report(hostvars, groups, {"inventory": [str(ROOT / "inventories/example/hosts.yml")]})
    text = "\n".join(lines)
    for want in ["Open Dify: https://dify.example.com",
                 "Chatbot 'Assistant' (shareable): https://dify.example.com/chat/AbCd1234",
                 "box: /opt/dify/secrets.yml", "box: /opt/dify/.env", "box: /opt/dify/bootstrap-credentials.yml",
                 "box: /etc/model-servers/api-key.env", "box: /etc/nginx/tls/dify.key", "box: /etc/cloudflared/tunnel.env",
                 "llm qwen (langgenius/oac/oac): http://host.docker.internal:8081/v1",
                 "health llm http://127.0.0.1:8081/health: healthy",
                 "Handbook: 13 documents (2 added, 1 updated, 1 removed, 0 failed, 3 files skipped)",
                 "ansible-playbook -i inventories/example/hosts.yml playbooks/backup.yml",
                 "playbooks/upgrade.yml"]:
        assert want in text, (want, text)
    for secret in SECRETS:
        assert secret not in text


def test_report_in_check_mode_says_what_a_run_would_give():
    hostvars, groups = report_site(check=True)
    text = "\n".join(sr.site_report(hostvars, groups, {"check_mode": True, "inventory": "inventories/local/hosts.yml"}))
    assert "check mode" in text
    assert "Chatbots: created by the bootstrap on a real run" in text
    assert "health llm http://127.0.0.1:8081/health: not checked (check mode)" in text
    del hostvars["box"]["__site_report_probe"]   # the report play does not probe in check mode
    text = "\n".join(sr.site_report(hostvars, groups, {"check_mode": True}))
    assert "health llm http://127.0.0.1:8081/health: not checked (check mode)" in text
    assert "Handbook (document counts: after a real run of playbooks/ingest.yml)" in text
    assert "apply:" in text
    for secret in SECRETS:
        assert secret not in text


def test_report_run_alone_shows_the_chatbots_from_the_bootstraps_local_fact():
    # playbooks/report.yml alone: no bootstrap ran in this run, its contract is dify_bootstrap.fact
    hostvars, groups = report_site()
    del hostvars["box"]["dify_bootstrap_app_urls"]
    hostvars["box"]["ansible_local"] = {"dify_bootstrap": {
        "admin_email": "ops@example.com", "credentials_file": "/srv/dify/bootstrap-credentials.yml",
        "app_urls": {"Assistant": "https://dify.example.com/chat/FromTheFact1"}}}
    text = "\n".join(sr.site_report(hostvars, groups))
    assert "Chatbot 'Assistant' (shareable): https://dify.example.com/chat/FromTheFact1" in text
    assert "the admin account: ops@example.com" in text and "box: /srv/dify/bootstrap-credentials.yml" in text
    del hostvars["box"]["ansible_local"]   # never run: the preflight's declared values, no chatbot yet
    text = "\n".join(sr.site_report(hostvars, groups))
    assert "Chatbots: none published" in text and "the admin account: admin@example.com" in text


def test_report_names_an_unhealthy_server():
    hostvars, groups = report_site()
    hostvars["box"]["__site_report_probe"]["results"][0].update(status=503)
    text = "\n".join(sr.site_report(hostvars, groups))
    assert "health llm http://127.0.0.1:8081/health: NOT healthy (HTTP 503)" in text


# ---------------------------------------------------- the playbooks and the roles against these tables
def _plays():
    for path in sorted((ROOT / "playbooks").glob("*.yml")):
        for play in load(path.relative_to(ROOT)) or []:
            yield path.name, play


def _roles_of(play):
    for r in play.get("roles") or []:
        yield (r["role"] if isinstance(r, dict) else r), (r.get("vars") or {}) if isinstance(r, dict) else {}
    for task in play.get("tasks") or []:
        for key in ("ansible.builtin.include_role", "ansible.builtin.import_role"):
            if key in task:
                yield task[key]["name"], task.get("vars") or {}


def test_the_role_table_matches_the_playbooks():
    table = {role: set(groups) for role, groups, _ in sr.HOST_ROLES}
    seen = {}
    for name, play in _plays():
        if "hosts" not in play or name in ("preflight.yml", "report.yml"):
            continue
        for role, _ in _roles_of(play):
            seen.setdefault(role, set()).update(play["hosts"].split(":"))
    assert set(seen) == set(table), (seen, table)
    for role, groups in seen.items():
        assert groups <= table[role], (role, groups, table[role])


def test_every_contract_input_is_wired_where_the_role_runs():
    # contract inputs: <role>_dify_*, <role>_bootstrap_* of the consumer roles, the docker role's contributions
    inputs = {}
    for role in ("docker", "nginx", "cloudflared", "dify_knowledge"):
        defaults = load("roles/%s/defaults/main.yml" % role)
        inputs[role] = {v for v in defaults if v.startswith((role + "_dify_", role + "_bootstrap_", "docker_contributed_"))
                        and v != "dify_knowledge_dify_version"}   # a setting of its own (the API's version)
        assert inputs[role], role
    for name, play in _plays():
        if name == "preflight.yml":
            continue   # imports the roles for their defaults only
        for role, wired in _roles_of(play):
            if role in inputs:
                assert inputs[role] <= set(wired), (name, role, inputs[role] - set(wired))
                for var in inputs[role]:
                    assert "site_contract" in str(wired[var]), (name, var, wired[var])


def test_every_playbook_that_changes_hosts_starts_with_the_preflight():
    for path in sorted((ROOT / "playbooks").glob("*.yml")):
        if path.name == "preflight.yml":
            continue
        first = load(path.relative_to(ROOT))[0]
        assert first.get("ansible.builtin.import_playbook") == "preflight.yml", path.name
    site = load("site.yml")
    assert site[0]["ansible.builtin.import_playbook"] == "playbooks/preflight.yml"
    assert site[-1]["ansible.builtin.import_playbook"] == "playbooks/report.yml"


def _task(tasks, name):
    return next(t for t in tasks if t.get("name") == name)


def test_the_preflight_declares_the_contracts_the_roles_publish():
    tasks = load("playbooks/preflight.yml")[0]["tasks"]
    declared = _task(tasks, "Record the dify contract this inventory declares")["ansible.builtin.set_fact"]
    contract = load("roles/dify/tasks/contract.yml")[0]["ansible.builtin.set_fact"]["dify_contract"]
    text = declared["__site_preflight"]
    for key in contract:
        assert "'%s':" % key in text, key
    assert text.count("': ") == len(contract) + 2   # 'declared', 'dify' and one per key, no other
    ms = _task(tasks, "Record the model_servers contract this inventory declares")["ansible.builtin.set_fact"]
    ms_contract = load("roles/model_servers/tasks/contract.yml")[0]["ansible.builtin.set_fact"]["model_servers_contract"]
    for key in ("dify_endpoints", "knowledge_chunk_chars"):
        assert key in ms_contract and "'%s':" % key in ms["__site_preflight"]


def test_the_preflight_validates_the_roles_the_table_names():
    tasks = load("playbooks/preflight.yml")[0]["tasks"]
    imported = [t["ansible.builtin.import_role"]["name"] for t in tasks if "ansible.builtin.import_role" in t]
    assert imported == [role for role, _, _ in sr.HOST_ROLES]
    for t in tasks:
        if "ansible.builtin.import_role" in t:
            assert t["when"] is False and t["ansible.builtin.import_role"]["rolespec_validate"] is False
            assert (ROOT / "roles" / t["ansible.builtin.import_role"]["name"] / "tasks"
                    / t["ansible.builtin.import_role"]["tasks_from"]).exists()
