"""Site-wide logic of the playbooks: the contracts between roles, the preflight's rules, the end-of-run report.

Pure functions (no I/O but reading the roles' own meta/argument_specs.yml); the playbooks call them, their
tasks only record data and print what these return. Unit tests: tests/unit/test_site_rules.py.

Contracts (docs/architecture.md, "Contracts between roles"): a producer role publishes ONE dict, in memory as
the fact ``<role>_contract`` and on its host as the local fact /etc/ansible/facts.d/<role>.fact
(``ansible_local[<role>]``). Before a producer ever ran, the preflight's record of what it will publish
(``__site_preflight.declared[<role>]``, from the inventory and the role's defaults) is the answer.

- site_contract(host, hostvars, role, key=None, default=<fail>) -> that host's contract (or one key of it):
  in memory if the producer ran in this run, else the local fact, else the preflight's declared values
- site_contracts(hosts, hostvars, role) -> the contracts of those hosts that have one (in host order)
- site_edge_dify_host(host, groups) -> the Dify host an edge host fronts: itself when it is one, else the
  first of dify_servers, else ''
- site_host_roles(group_names, settings) -> the roles site.yml's playbooks run on a host, in order
- site_argument_spec(role, roles_dir=None) -> the options of roles/<role>/meta/argument_specs.yml (entry main)
  without defaults: the preflight validates the values a host has, its role defaults being in scope
- site_endpoint_summary(endpoints) -> [{name, model_type, model, provider}] (no credentials)
- site_preflight_problems(hostvars, groups) -> the cross-host rules' problems, each naming the variables
- site_report(hostvars, groups, context) -> the end-of-run report's lines (paths and URLs, never a value of
  a secret)
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import yaml

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - unit tests without Ansible
    class AnsibleFilterError(Exception):
        pass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_MISSING = object()
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")

# Which roles run where: the host patterns and conditions of site.yml's playbooks (playbooks/*.yml), in run
# order. tests/unit/test_site_rules.py holds this table to the playbooks.
HOST_ROLES = (
    ("nvidia_driver", ("gpu_model_servers",), None),
    ("nvidia_container_toolkit", ("gpu_model_servers",), None),
    ("docker", ("dify_servers", "gpu_model_servers"), None),
    ("model_servers", ("gpu_model_servers",), None),
    ("dify", ("dify_servers",), None),
    ("model_pool", ("dify_servers",), None),
    ("dify_bootstrap", ("dify_servers", "dify_kubernetes"), None),
    ("nginx", ("edge",), None),
    ("cloudflared", ("edge",), "tunnel"),              # playbooks/edge.yml: a token, or a locally managed tunnel
    ("dify_knowledge", ("dify_servers",), "knowledge"),  # playbooks/ingest.yml: knowledge bases declared
    ("dify_kubernetes", ("dify_kubernetes",), None),
)


def _get(mapping, key, default=None):
    if isinstance(mapping, Mapping) or hasattr(mapping, "get"):
        try:
            value = mapping.get(key, default)
        except Exception:  # a HostVars entry whose template fails to render is treated as absent
            return default
        return default if value is None else value
    return default


def _hostvars_of(hostvars, host):
    try:
        return hostvars[host]
    except (KeyError, TypeError):
        return {}


def _int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# ------------------------------------------------------------------------------------------- contracts
def _sources(hv, role):
    yield "this run (%s_contract)" % role, _get(hv, role + "_contract")
    yield "local fact (ansible_local.%s)" % role, _get(_get(hv, "ansible_local", {}), role)
    yield "preflight (declared)", _get(_get(_get(hv, "__site_preflight", {}), "declared", {}), role)


def site_contract(host, hostvars, role, key=None, default=_MISSING):
    """HOST's contract of ROLE (or its KEY): the first of this run's in-memory contract, the host's local fact,
    the preflight's declared values that has it. Without it: DEFAULT, else an error naming what was looked at."""
    hv = _hostvars_of(hostvars, host) if host else {}
    for _host, contract in _sources(hv, role):
        if not isinstance(contract, Mapping):
            continue
        if key is None:
            return dict(contract)
        if key in contract:
            return contract[key]
    if default is not _MISSING:
        return default
    raise AnsibleFilterError(
        "no contract of the %s role%s on host %r: %s ran neither in this run nor before (no "
        "/etc/ansible/facts.d/%s.fact), and the preflight declared none for it (is the host outside --limit, "
        "or not in the group that runs %s?). Run site.yml, or the playbook of %s, first."
        % (role, " with key %r" % key if key else "", host or "", role, role, role, role))


def site_contracts(hosts, hostvars, role):
    """The contracts of ROLE of those HOSTS that have one, in host order."""
    out = []
    for host in hosts or []:
        contract = site_contract(host, hostvars, role, default=None)
        if contract:
            out.append(contract)
    return out


def site_edge_dify_host(host, groups):
    """The Dify host an edge host fronts: itself when it is one of dify_servers, else the first of them."""
    dify = list(_get(groups, "dify_servers", []) or [])
    if host in dify:
        return host
    return dify[0] if dify else ""


def site_host_roles(group_names, settings=None):
    """The roles site.yml's playbooks run on a host of GROUP_NAMES, in order. SETTINGS: tunnel (bool: the
    edge play runs cloudflared), knowledge (bool: dify_knowledge_bases is not empty)."""
    settings = settings or {}
    groups = set(group_names or [])
    return [role for role, in_groups, condition in HOST_ROLES
            if groups.intersection(in_groups) and (condition is None or bool(settings.get(condition)))]


def _strip_defaults(options):
    out = {}
    for name, spec in (options or {}).items():
        spec = dict(spec or {})
        spec.pop("default", None)
        spec.pop("description", None)
        if isinstance(spec.get("options"), Mapping):
            spec["options"] = _strip_defaults(spec["options"])
        out[name] = spec
    return out


def site_argument_spec(role, roles_dir=None):
    """The options of roles/ROLE/meta/argument_specs.yml (entry point main), without defaults (the role's
    defaults/main.yml are in scope where the preflight validates, so a spec default is never the value) and
    descriptions (not needed to validate)."""
    path = os.path.join(roles_dir or os.path.join(ROOT, "roles"), role, "meta", "argument_specs.yml")
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except OSError as err:
        raise AnsibleFilterError("site_argument_spec: cannot read %s: %s" % (path, err))
    return _strip_defaults(((data.get("argument_specs") or {}).get("main") or {}).get("options") or {})


def site_endpoint_summary(endpoints):
    """What the rules and the report need of model endpoints: name, model_type, model, provider (and the URL
    Dify uses), never the credentials' secrets."""
    out = []
    for ep in endpoints or []:
        if not isinstance(ep, Mapping):
            continue
        creds = ep.get("credentials") if isinstance(ep.get("credentials"), Mapping) else {}
        out.append({"name": ep.get("name") or "", "model_type": ep.get("model_type") or "",
                    "model": ep.get("model") or "", "provider": ep.get("provider") or "",
                    "url": creds.get("endpoint_url") or creds.get("server_url") or ""})
    return out


# -------------------------------------------------------------------------------------- preflight rules
def _url(value):
    try:
        parts = urlsplit(str(value or ""))
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return {"scheme": parts.scheme, "host": parts.hostname.lower(),
            "port": port or (443 if parts.scheme == "https" else 80), "explicit_port": port is not None}


def _record(hostvars, host):
    return _get(_hostvars_of(hostvars, host), "__site_preflight", {}) or {}


def _section(record, name):
    return _get(record, "settings", {}).get(name) or {}


def _declared(record, role):
    return _get(record, "declared", {}).get(role) or {}


def _endpoint_rules(host, record, has_model_hosts):
    """Knowledge bases and apps need endpoints of the right types (dify_bootstrap on a Dify host)."""
    boot = _section(record, "dify_bootstrap")
    if not boot:
        return []
    endpoints = boot.get("model_endpoints") or []
    if not has_model_hosts and not boot.get("model_endpoints_set"):
        return []   # no model source in this inventory: nothing cross-host to check (the role checks itself)
    by_type = {}
    for ep in endpoints:
        by_type.setdefault(ep.get("model_type"), []).append(ep.get("model"))
    known = "; ".join("%s: %s" % (t, ", ".join(m)) for t, m in sorted(by_type.items())) or "none"
    source = ("dify_bootstrap_model_endpoints" if boot.get("model_endpoints_set")
              else "the endpoints of gpu_model_servers (model_servers_dify_endpoints)")
    defaults = boot.get("default_models") or {}
    problems = []

    def need(var, model_type, named, what, optional=False):
        models = by_type.get(model_type, [])
        if named:
            if named not in models:
                problems.append("%s: %s '%s' is not a %s model among %s on %s (%s)."
                                % (var, what, named, model_type, source, host, known))
        elif not models and not optional:
            problems.append("%s needs a %s model, and %s on %s have none (%s): declare one (model_servers_preset / "
                            "model_servers_servers on gpu_model_servers, or dify_bootstrap_model_endpoints)."
                            % (var, model_type, source, host, known))

    for model_type, model in sorted(defaults.items()):
        need("dify_bootstrap_default_models[%s]" % model_type, model_type, model, "the default")
    names = []
    for i, ds in enumerate(boot.get("datasets") or []):
        if not isinstance(ds, Mapping):
            continue
        label = "dify_bootstrap_datasets[%d] ('%s')" % (i, ds.get("name", ""))
        names.append(ds.get("name"))
        need(label + ".embedding_model", "text-embedding",
             ds.get("embedding_model") or defaults.get("text-embedding"), "embedding model")
        rerank = ds.get("reranking_model") if "reranking_model" in ds else defaults.get("rerank")
        need(label + ".reranking_model", "rerank", rerank, "reranking model", optional=True)
    for i, app in enumerate(boot.get("apps") or []):
        if not isinstance(app, Mapping):
            continue
        label = "dify_bootstrap_apps[%d] ('%s')" % (i, app.get("name", ""))
        need(label + ".model", "llm", app.get("model") or defaults.get("llm"), "model")
        rerank = app.get("reranking_model") if "reranking_model" in app else defaults.get("rerank")
        need(label + ".reranking_model", "rerank", rerank, "reranking model", optional=True)
        unknown = [d for d in (app.get("datasets") or []) if d not in names]
        if unknown:
            problems.append("%s.datasets names knowledge bases dify_bootstrap_datasets does not declare on %s: %s."
                            % (label, host, ", ".join(map(str, unknown))))
    return problems


def _knowledge_rules(host, record, upload_mb):
    kn = _section(record, "dify_knowledge")
    if not kn or upload_mb is None:
        return []
    problems = []
    limit_kb = upload_mb * 1024
    checks = [("dify_knowledge_max_request_kb", kn.get("max_request_kb"))]
    checks += [("dify_knowledge_bases[%d].max_request_kb" % i, v) for i, v in enumerate(kn.get("base_max_request_kb") or [])]
    for var, value in checks:
        value = _int(value)
        if value is not None and value > limit_kb:
            problems.append("%s=%d on %s is larger than dify_upload_file_size_limit_mb=%d (%d KB) on %s: Dify's nginx "
                            "(and every proxy sized from it) refuses such requests with 413. Lower %s, or leave it to "
                            "its default (at most the upload limit)." % (var, value, host, upload_mb, limit_kb, host, var))
    return problems


def _edge_rules(edge, record, dify_host, dify_record):
    nginx = _section(record, "nginx")
    tunnel = _section(record, "cloudflared")
    dify = _declared(dify_record, "dify")
    if not dify_host:
        return ["%s is in the edge group, but dify_servers is empty: the edge has no Dify to front. Add the Dify host "
                "to dify_servers." % edge]
    problems = []
    upload = _int(dify.get("upload_file_size_limit_mb"))
    port = _int(dify.get("expose_http_port"))
    where = "dify_upload_file_size_limit_mb=%s on %s" % (upload, dify_host)

    # body limits of every proxy in front of Dify (Dify's own nginx takes the same variable by construction)
    body = _int(nginx.get("client_max_body_size_mb"))
    if nginx and body is not None and upload is not None and body < upload:
        problems.append("nginx_client_max_body_size_mb=%d on %s is smaller than %s: the host nginx would refuse (413) "
                        "uploads Dify accepts. Remove nginx_client_max_body_size_mb (it follows "
                        "dify_upload_file_size_limit_mb) or lower dify_upload_file_size_limit_mb." % (body, edge, where))
    plan = _int(tunnel.get("plan_body_limit_mb"))
    if tunnel.get("enabled") and plan is not None and upload is not None and upload > plan:
        problems.append("%s is larger than cloudflared_plan_body_limit_mb=%d on %s: Cloudflare refuses request bodies "
                        "above the plan's limit (100 MB on the Free plan), so such uploads would fail through the tunnel. "
                        "Lower dify_upload_file_size_limit_mb, or raise cloudflared_plan_body_limit_mb if your Cloudflare "
                        "plan allows larger bodies." % (where, plan, edge))

    # the path from the edge to Dify's port
    up_port = _int(nginx.get("upstream_port"))
    up_host = str(nginx.get("upstream_host") or "127.0.0.1")
    if nginx and up_port is not None and port is not None and up_port != port and up_host in LOOPBACK:
        problems.append("nginx_upstream_port=%d on %s differs from dify_expose_http_port=%d on %s: the host nginx would "
                        "proxy to a port Dify does not listen on. Remove nginx_upstream_port (it follows "
                        "dify_expose_http_port)." % (up_port, edge, port, dify_host))
    if edge != dify_host:
        if nginx and up_host in LOOPBACK:
            problems.append("nginx_upstream_host=%s on %s, but Dify runs on %s: set nginx_upstream_host to an address of "
                            "%s that %s reaches." % (up_host, edge, dify_host, dify_host, edge))
        if str(dify.get("expose_http_address") or "") in LOOPBACK:
            problems.append("dify_expose_http_address=%s on %s: the edge host %s cannot reach Dify there. Set it to an "
                            "address %s reaches (or put the edge on the Dify host)."
                            % (dify.get("expose_http_address"), dify_host, edge, edge))
    elif nginx and port is not None:
        for var in ("http_port", "https_port"):
            if _int(nginx.get(var)) == port:
                problems.append("nginx_%s=%d on %s is dify_expose_http_port, where Dify's own nginx listens: choose "
                                "another port for one of them." % (var, port, edge))

    # the public URL: one edge of this host must serve it as it is written
    url_text = dify.get("public_url")
    url = _url(url_text)
    if url is None:
        problems.append("dify_public_url=%r on %s is not an http(s) URL with a host name." % (url_text, dify_host))
        return problems
    served, offers = False, []
    if nginx:
        names = [str(n).lower() for n in (nginx.get("server_names") or [url["host"]])]
        https_port = _int(nginx.get("https_port"), 443)
        if url["host"] in names or nginx.get("default_server"):
            if url["scheme"] == "https" and url["port"] == https_port:
                served = True
            else:
                offers.append("the host nginx serves https on port %d (nginx_https_port), so dify_public_url should be "
                              "https://%s%s" % (https_port, url["host"], "" if https_port == 443 else ":%d" % https_port))
        else:
            offers.append("the host nginx answers for %s only (nginx_server_names, nginx_default_server false)"
                          % ", ".join(names))
    if tunnel.get("enabled"):
        hostnames = [str(h).lower() for h in (tunnel.get("hostnames") or [])]  # the ingress rules' host names
        mode = tunnel.get("mode") or "token"
        if mode == "local" and url["host"] not in hostnames:
            offers.append("the tunnel's ingress serves %s (cloudflared_hostname / cloudflared_ingress)"
                          % (", ".join(hostnames) or "no host name"))
        elif url["scheme"] == "https" and url["port"] == 443:
            served = True
        else:
            offers.append("Cloudflare serves the tunnel's host names on https port 443, so dify_public_url should be "
                          "https://%s" % url["host"])
    if not served and (nginx or tunnel.get("enabled")):
        problems.append("dify_public_url=%s on %s is not what the edge on %s serves: %s. Users would open a URL Dify's "
                        "settings (CORS, cookies, web app links) do not match."
                        % (url_text, dify_host, edge, "; ".join(offers)))
    # the edge's own inputs, checked here before any host changes (the roles check them again)
    if nginx:
        mode = nginx.get("tls_mode")
        if mode == "provided" and not (nginx.get("tls_cert_src") and nginx.get("tls_key_src")):
            problems.append("nginx_tls_mode=provided on %s needs nginx_tls_cert_src and nginx_tls_key_src." % edge)
        if mode == "acme" and not nginx.get("acme_email"):
            problems.append("nginx_tls_mode=acme on %s needs nginx_acme_email." % edge)
    if tunnel.get("enabled") and tunnel.get("mode") == "local" and tunnel.get("missing_credentials"):
        problems.append("cloudflared_mode=local on %s needs cloudflared_tunnel_credentials with %s (the JSON of "
                        "`cloudflared tunnel create`)." % (edge, ", ".join(tunnel["missing_credentials"])))
    return problems


def site_preflight_problems(hostvars, groups):
    """Every cross-host rule over the preflight's records (__site_preflight of each host). Returns the problems,
    each naming the variables to change and the hosts they are on; empty when the site is consistent."""
    problems = []
    has_model_hosts = bool(list(_get(groups, "gpu_model_servers", []) or []))
    for host in _get(groups, "dify_servers", []) or []:
        record = _record(hostvars, host)
        if not record:
            continue
        upload = _int(_declared(record, "dify").get("upload_file_size_limit_mb"))
        problems += _endpoint_rules(host, record, has_model_hosts)
        problems += _knowledge_rules(host, record, upload)
    edges = list(_get(groups, "edge", []) or [])
    for edge in edges:
        record = _record(hostvars, edge)
        if not record:
            continue
        dify_host = site_edge_dify_host(edge, groups)
        problems += _edge_rules(edge, record, dify_host, _record(hostvars, dify_host) if dify_host else {})
    return problems


# ------------------------------------------------------------------------------------------- the report
def _health_line(check):
    status = check.get("status")
    if status == 200:
        return "healthy"
    if check.get("check_mode") and not status:
        return "not checked (check mode)"
    return "NOT healthy (%s)" % (("HTTP %s" % status) if status else (check.get("msg") or "no answer"))


def _inventory_argument(sources):
    """The -i argument(s) to repeat in the next commands: the inventory sources, relative to the project."""
    if isinstance(sources, str):
        sources = [sources]
    out = []
    for src in sources or []:
        src = str(src)
        rel = os.path.relpath(src, ROOT) if os.path.isabs(src) else src
        out.append(rel if not rel.startswith("..") else src)
    return " -i ".join(out) or "inventories/local/hosts.yml"


def _health_of(hv):
    """The report play's health probes of a host (its registered uri loop, __site_report_probe)."""
    out = []
    for res in (_get(_get(hv, "__site_report_probe", {}), "results", []) or []):
        if not isinstance(res, Mapping):
            continue
        item = res.get("item") if isinstance(res.get("item"), Mapping) else {}
        status = _int(res.get("status"))
        out.append({"name": item.get("name") or "?", "url": item.get("health") or res.get("url") or "?",
                    "status": status if status and status > 0 else None, "msg": res.get("msg") or ""})
    return out


def site_report(hostvars, groups, context=None):
    """The end-of-run report (site.yml's last play), as lines: where to open Dify, the chatbots' shareable URLs,
    where each secret lives (host: path), the model endpoints and their health, the knowledge bases with their
    document counts, the next commands. Only paths, URLs, names and counts are read: no secret's value can
    reach it. CONTEXT: inventory (ansible_inventory_sources), check_mode. The health answers are the report
    play's uri probes (__site_report_probe of each GPU host)."""
    context = context or {}
    check = bool(context.get("check_mode"))
    inv = _inventory_argument(context.get("inventory"))
    lines = ["Dify site report%s" % (" (check mode: what a real run would give)" if check else "")]
    dify_hosts = list(_get(groups, "dify_servers", []) or [])
    edges = list(_get(groups, "edge", []) or [])
    gpus = list(_get(groups, "gpu_model_servers", []) or [])
    secrets = []

    for host in dify_hosts:
        dify = site_contract(host, hostvars, "dify", default={}) or {}
        boot = site_contract(host, hostvars, "dify_bootstrap", default={}) or {}
        hv = _hostvars_of(hostvars, host)
        lines.append("")
        lines.append("Open Dify: %s  (Dify host %s; the admin account: %s)"
                     % (dify.get("public_url", "?"), host, boot.get("admin_email") or "see dify_bootstrap_admin_email"))
        app_urls = _get(hv, "dify_bootstrap_app_urls") or boot.get("app_urls") or {}
        if app_urls:
            for name, url in sorted(app_urls.items()):
                lines.append("  Chatbot '%s' (shareable): %s" % (name, url or "(no web app URL)"))
        else:
            lines.append("  Chatbots: %s" % ("created by the bootstrap on a real run" if check
                                             else "none published (dify_bootstrap_apps)"))
        for path, what in ((dify.get("secrets_file"), "the stack's generated secrets (0600)"),
                           (dify.get("env_file"), "the stack's .env with those secrets (0600)"),
                           (boot.get("credentials_file"), "the admin password and the API keys (0600)")):
            if path:
                secrets.append("  %s: %s  - %s" % (host, path, what))
        results = _get(hv, "dify_knowledge_results") or {}
        if results:
            lines.append("  Knowledge bases:")
            for name, counts in sorted(results.items()):
                counts = counts if isinstance(counts, Mapping) else {}
                docs = sum(_int(counts.get(k), 0) for k in ("added", "updated", "unchanged"))
                lines.append("    %s: %d documents (%d added, %d updated, %d removed, %d failed, %d files skipped)"
                             % (name, docs, _int(counts.get("added"), 0), _int(counts.get("updated"), 0),
                                _int(counts.get("removed"), 0), _int(counts.get("failed"), 0),
                                _int(counts.get("skipped"), 0)))
        else:
            declared = [kb.get("dataset") for kb in (_section(_record(hostvars, host), "dify_knowledge").get("bases") or [])
                        if isinstance(kb, Mapping)]
            datasets = list(_get(hv, "dify_bootstrap_dataset_ids") or {}) or declared
            if datasets:
                lines.append("  Knowledge bases: %s (document counts: %s)"
                             % (", ".join(map(str, datasets)),
                                "after a real run of playbooks/ingest.yml" if check or not declared
                                else "not synced in this run; playbooks/ingest.yml syncs them"))

    for host in gpus:
        ms = site_contract(host, hostvars, "model_servers", default={}) or {}
        lines.append("")
        lines.append("Model endpoints on %s (as Dify reaches them):" % host)
        for ep in site_endpoint_summary(ms.get("dify_endpoints")):
            lines.append("  %s %s (%s): %s" % (ep["model_type"], ep["model"], ep["provider"], ep["url"]))
        if not ms.get("dify_endpoints"):
            lines.append("  none")
        probes = _health_of(_hostvars_of(hostvars, host))
        if not probes:   # not probed (check mode): the URLs the contract names
            probes = [{"name": h.get("name") or "?", "url": h.get("health") or "?", "status": None, "msg": ""}
                      for h in ms.get("health") or [] if isinstance(h, Mapping)]
        for chk in probes:
            lines.append("  health %s %s: %s" % (chk["name"], chk["url"], _health_line(dict(chk, check_mode=check))))
        for path in ms.get("secret_files") or []:
            secrets.append("  %s: %s  - the model servers' API key / Hugging Face token (0600)" % (host, path))

    for host in edges:
        record = _record(hostvars, host)
        nginx = _section(record, "nginx")
        tunnel = _section(record, "cloudflared")
        if nginx.get("tls_key_path"):
            secrets.append("  %s: %s  - the host nginx's TLS private key (0600)" % (host, nginx["tls_key_path"]))
        if tunnel.get("enabled") and tunnel.get("secret_path"):
            secrets.append("  %s: %s  - the Cloudflare tunnel's %s (0600)"
                           % (host, tunnel["secret_path"], "token" if tunnel.get("mode") != "local" else "credentials"))

    lines.append("")
    lines.append("Secrets and credentials (paths only; keep them in backups, never in git):")
    lines.extend(secrets or ["  none recorded"])
    lines.append("")
    lines.append("Next:")
    lines.append("  back up:        ansible-playbook -i %s playbooks/backup.yml" % inv)
    lines.append("  upgrade Dify:   set dify_version in the inventory, then ansible-playbook -i %s playbooks/upgrade.yml"
                 % inv)
    lines.append("  sync knowledge: ansible-playbook -i %s playbooks/ingest.yml" % inv)
    lines.append("  repair drift:   ansible-playbook -i %s site.yml  (changed=0 on a converged site)" % inv)
    if check:
        lines.append("  apply:          ansible-playbook -i %s site.yml  (this was --check)" % inv)
    return lines


class FilterModule(object):
    def filters(self):
        return {
            "site_contract": site_contract,
            "site_contracts": site_contracts,
            "site_edge_dify_host": site_edge_dify_host,
            "site_host_roles": site_host_roles,
            "site_argument_spec": site_argument_spec,
            "site_endpoint_summary": site_endpoint_summary,
            "site_preflight_problems": site_preflight_problems,
            "site_report": site_report,
        }
