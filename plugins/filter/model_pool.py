"""Filters of the model_pool role: one Dify model for N GPU hosts serving the same model.

Pure functions (no I/O); the role's tasks call them and its template only prints their output.
Unit tests: tests/unit/test_model_pool.py (table-driven), tests/unit/test_model_pool_render.py.

- model_pool_plan(host_endpoints, settings) -> {"endpoints": [...], "pools": [...], "problems": [...],
  "warnings": [...]}: every GPU host's model_servers_dify_endpoints grouped by (model_type, model);
  a model served by one server passes through unchanged, a model served by several becomes ONE endpoint
  whose URL is the pool's (the nginx upstream of the Dify host), after checking that every server of it
  agrees on every setting Dify stores (provider, credentials but the URL's host and port, max_batch).

The merge rules (docs/model-pool.md, "Merge rules"):
1. key = (model_type, model): the name Dify registers a model under, per type;
2. one server -> the endpoint as the host published it (same dict, same URL);
3. several servers (on several hosts, or twice on one host) -> one endpoint: the first server's dict with
   the URL field (credentials.server_url / endpoint_url) replaced by
   <scheme>://<dify_host>:<port>/<model_type>/<slug><path of the servers' URL>, and one pool (nginx
   upstream) with every server's host:port, in inventory order, duplicates once;
4. the servers of a pool must agree on every field but `name` and the URL's host and port: provider,
   plugin_id, kind, max_batch, every credential (api_key compared, never printed), the URL's scheme and
   path; otherwise a problem naming the model, the hosts and the field (the run stops before any change);
5. a pooled server's URL must be reachable from the Dify host: host.docker.internal is mapped to
   settings.local_address on the Dify host itself and refused on any other host, like loopback addresses.
The endpoints keep their first-seen order (the bootstrap's default models are the first of each type).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - the unit tests always have ansible
    AnsibleFilterError = ValueError

DOCUMENTATION = """
name: model_pool
short_description: merge the GPU hosts' model endpoints into one Dify model per model, behind nginx upstreams
description:
  - C(model_pool_plan) groups every host's model_servers_dify_endpoints by model type and name, passes a
    model with one server through unchanged, and turns a model with several servers into one endpoint on
    the pool's URL plus the nginx upstream that spreads its requests (docs/model-pool.md).
"""

URL_FIELDS = ("server_url", "endpoint_url", "base_url")
DOCKER_ALIASES = ("host.docker.internal", "gateway.docker.internal")
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
SECRET_RE = re.compile(r"(^|[._])(api_key|key|secret|password|token)$", re.I)   # a credential never printed
# what a pool's servers must agree on first: when these differ, the rest differs with them
PRIMARY_FIELDS = ("model_type", "kind", "plugin_id", "provider")
SLUG_RE = re.compile(r"[^A-Za-z0-9._-]+")
UPSTREAM_RE = re.compile(r"[^A-Za-z0-9.-]+")   # the upstream name is also the Host header: a valid host name
DEFAULT_PORTS = {"http": 80, "https": 443}


def _plain(value):
    """VALUE as plain dicts and lists, read item by item (Ansible hands filters lazy containers)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _url_host(address):
    return "[%s]" % address if ":" in address else address


def _is_loopback(hostname):
    if hostname.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _slug(model):
    slug = SLUG_RE.sub("-", str(model)).strip("-").lstrip(".")
    return slug or "model"


def _url_field(creds):
    for field in URL_FIELDS:
        if creds.get(field):
            return field
    return None


def _split(url):
    """(scheme, hostname, port, path) of URL, or None when it is not an http(s) URL with a host."""
    try:
        parts = urlsplit(str(url))
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme], parts.path.rstrip("/")


_UNSET = object()


def _show(field, value):
    """How a value appears in a problem: repr, "(unset)", or None for a secret (never printed)."""
    if SECRET_RE.search(field):
        return None
    if value is _UNSET:
        return "(unset)"
    return repr(value)


def _settings(ep, url_field, split):
    """The fields the servers of one pool must agree on: everything Dify stores but the URL's host and port."""
    out = {}
    for key, value in ep.items():
        if key not in ("name", "credentials"):
            out[key] = value
    for key, value in (ep.get("credentials") or {}).items():
        if key == url_field:
            continue
        out["credentials.%s" % key] = value
    out["credentials.%s (scheme)" % url_field] = split[0]
    out["credentials.%s (path)" % url_field] = split[3] or "/"
    return out


def _disagreements(label, members):
    """Problems for the fields the MEMBERS (dicts with who, settings) of one pool disagree on."""
    problems = []
    fields = []
    for m in members:
        for key in m["settings"]:
            if key not in fields:
                fields.append(key)
    fields.sort(key=lambda f: (PRIMARY_FIELDS.index(f) if f in PRIMARY_FIELDS else len(PRIMARY_FIELDS)))
    for field in fields:
        if problems and field not in PRIMARY_FIELDS:
            break   # another provider: its other fields differ by construction
        groups = []   # [(value, [who, ...])] in first-seen order
        for m in members:
            value = m["settings"].get(field, _UNSET)
            for known in groups:
                if known[0] is value or (known[0] is not _UNSET and value is not _UNSET and known[0] == value):
                    known[1].append(m["who"])
                    break
            else:
                groups.append((value, [m["who"]]))
        if len(groups) < 2:
            continue
        shown = [_show(field, value) for value, _who in groups]
        if any(s is None for s in shown):
            detail = "; ".join(", ".join(who) for _value, who in groups) + " (values not shown: a secret)"
        else:
            detail = "; ".join("%s: %s" % (", ".join(who), s) for (_value, who), s in zip(groups, shown))
        problems.append(
            "model_pool: %s is served by %s, which disagree on %s (%s). Dify registers ONE model for them, so "
            "every server must agree: make the hosts' model servers alike (model_servers_server_overrides or "
            "model_servers_servers on those hosts), or give one of them another served_name."
            % (label, ", ".join(m["who"] for m in members), field, detail))
    return problems


def _unique(values):
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _members_who(entries):
    """A label per entry: the host, or host (server name) where one host serves the model twice."""
    count = {}
    for e in entries:
        count[e["host"]] = count.get(e["host"], 0) + 1
    return ["%s (server %s)" % (e["host"], e["ep"].get("name", "?")) if count[e["host"]] > 1 else e["host"]
            for e in entries]


def model_pool_plan(host_endpoints, settings=None):
    """Merge HOST_ENDPOINTS ({host: [endpoint, ...]} in inventory order, each endpoint in the
    model_servers_dify_endpoints shape) into the endpoints Dify registers and the pools nginx serves.

    settings: dify_host (host in the pooled URLs, default host.docker.internal), port (the pool's port),
    local_host (the Dify host's inventory name: its own endpoints may use host.docker.internal),
    local_address (where nginx on the Dify host reaches what its containers call host.docker.internal).
    """
    settings = _plain(settings or {})
    dify_host = str(settings.get("dify_host") or "host.docker.internal")
    port = settings.get("port")
    local_host = settings.get("local_host")
    local_address = str(settings.get("local_address") or "127.0.0.1")
    problems, warnings = [], []
    try:
        port = int(port)
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        problems.append("model_pool_port must be a port number (got %r)." % (settings.get("port"),))

    if isinstance(host_endpoints, Mapping):
        items = [(h, host_endpoints[h]) for h in host_endpoints]
    elif isinstance(host_endpoints, (list, tuple)):   # [{host, endpoints}]
        items = [(i.get("host"), i.get("endpoints")) for i in host_endpoints if isinstance(i, Mapping)]
    elif host_endpoints is None:
        items = []
    else:
        raise AnsibleFilterError("model_pool_plan: host_endpoints must be a mapping host -> endpoints")

    groups = []       # [(key, [entry])] in first-seen order
    index = {}
    for host, endpoints in items:
        if endpoints is None:
            problems.append(
                "model_pool: no model_servers contract of %s in this run (no model_servers_contract, no local fact "
                "/etc/ansible/facts.d/model_servers.fact, nothing the preflight declared): is %s outside --limit? "
                "Keep the GPU hosts in the run (or run playbooks/model_servers.yml on %s first); without its endpoints "
                "the pool would drop %s's servers." % (host, host, host, host))
            continue
        endpoints = _plain(endpoints)
        if not isinstance(endpoints, list):
            problems.append("model_pool: the endpoints of %s are not a list (model_servers_dify_endpoints)." % host)
            continue
        for i, ep in enumerate(endpoints):
            where = "%s's model_servers_dify_endpoints[%d]" % (host, i)
            if not isinstance(ep, Mapping) or not ep.get("model_type") or not ep.get("model"):
                problems.append("model_pool: %s needs at least model_type, model and credentials." % where)
                continue
            creds = ep.get("credentials") if isinstance(ep.get("credentials"), Mapping) else {}
            field = _url_field(creds)
            split = _split(creds.get(field)) if field else None
            if split is None:
                problems.append("model_pool: %s (%s %s) has no http(s) URL in credentials (%s)."
                                % (where, ep["model_type"], ep["model"], " / ".join(URL_FIELDS)))
                continue
            key = (str(ep["model_type"]), str(ep["model"]))
            entry = {"host": host, "ep": ep, "field": field, "split": split}
            if key not in index:
                index[key] = len(groups)
                groups.append((key, []))
            groups[index[key]][1].append(entry)

    endpoints_out, pools = [], []
    seen_locations, seen_upstreams = {}, {}
    for (model_type, model), entries in groups:
        label = "the %s model '%s'" % (model_type, model)
        if len(entries) == 1:
            e = entries[0]
            hostname = e["split"][1]
            if e["host"] != local_host and (hostname.lower() in DOCKER_ALIASES or _is_loopback(hostname)):
                warnings.append("model_pool: %s of %s is at %s, an address only a Dify on %s itself reaches."
                                % (label, e["host"], e["ep"]["credentials"][e["field"]], e["host"]))
            endpoints_out.append(e["ep"])
            continue
        whos = _members_who(entries)
        members = [{"who": who, "settings": _settings(e["ep"], e["field"], e["split"])} for who, e in zip(whos, entries)]
        found = _disagreements(label, members)
        servers, addresses = [], []
        for who, e in zip(whos, entries):
            scheme, hostname, sport, _path = e["split"]
            if hostname.lower() in DOCKER_ALIASES or _is_loopback(hostname):
                if e["host"] != local_host:
                    found.append(
                        "model_pool: %s hands Dify %s for %s: an address of %s itself (only a Dify on %s reaches it), "
                        "so the pool on %s cannot. Set model_servers_dify_host (and model_servers_bind_address) on %s "
                        "to an address the Dify host reaches, e.g. its LAN address."
                        % (e["host"], e["ep"]["credentials"][e["field"]], label, e["host"], e["host"],
                           local_host or "the Dify host", e["host"]))
                    continue
                if hostname.lower() in DOCKER_ALIASES:
                    hostname = local_address
            address = "%s:%d" % (_url_host(hostname), sport)
            if address in addresses:
                continue
            addresses.append(address)
            servers.append({"address": address, "host": e["host"], "name": e["ep"].get("name", ""), "who": who})
        if found:
            problems.extend(found)
            continue
        first = entries[0]
        slug = _slug(model)
        location = "/%s/%s/" % (model_type, slug)
        upstream = "dify-model-pool-" + UPSTREAM_RE.sub("-", "%s-%s" % (model_type, slug)).strip("-.")
        clash = seen_locations.get(location) or seen_upstreams.get(upstream)
        if clash:
            problems.append("model_pool: %s and %s map to the same pool path %s: give one of them another served_name."
                            % (clash, label, location))
            continue
        seen_locations[location] = label
        seen_upstreams[upstream] = label
        url = "http://%s:%d%s%s" % (_url_host(dify_host), port, location.rstrip("/"), first["split"][3])
        ep = _plain(first["ep"])
        ep["credentials"][first["field"]] = url
        endpoints_out.append(ep)
        pools.append({
            "model_type": model_type,
            "model": model,
            "kind": first["ep"].get("kind") or "",
            "location": location,
            "upstream": upstream,
            "scheme": first["split"][0],
            "url": url,
            "probe": location + "health",
            "servers": servers,
            "hosts": _unique(s["host"] for s in servers),
        })
    return {"endpoints": endpoints_out, "pools": pools, "problems": problems, "warnings": warnings}


class FilterModule(object):
    def filters(self):
        return {"model_pool_plan": model_pool_plan}
