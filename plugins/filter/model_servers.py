"""Filters of the model_servers role: the server plan and every document rendered from it.

Pure functions (no I/O); the role's tasks call them and its templates only print their output.
Unit tests: tests/unit/test_model_servers_plan.py, tests/unit/test_model_servers_render.py.

- model_servers_bind_default(bind_address, docker0) -> the address servers bind when none is set
- model_servers_plan(inputs) -> {"servers": [...], "problems": [...], "warnings": [...], ...}:
  presets + model_servers_servers + extra servers + server/source overrides + defaults + runtime +
  bind address, validated (messages name the variable and the server), with the context arithmetic
  done ONCE per server (llama.cpp n_ctx = per-slot context x slots, ubatch, batch) and the
  TEI-compatible front of every llama.cpp / Infinity embedding or rerank server
- model_servers_llamacpp_config(server, settings) -> the xllamacpp launcher's JSON
- model_servers_front_config(server, settings) -> tei_front.py's JSON
- model_servers_units(servers, settings) -> systemd units (backends and fronts) as sections of lines
- model_servers_compose(servers, settings) -> the compose document
- model_servers_tei_arch(servers, setting, nvidia_smi_lines, arch_by_cc, known) -> {"arch": {...}, "problems": [...]}
- model_servers_endpoints(servers, settings) -> model_servers_dify_endpoints
- model_servers_checks(servers) -> what check_servers.py waits for
- model_servers_restarts(units, changes) -> the unit ids that must restart
- model_servers_knowledge_chunks(hostvars, hosts) -> the chunk sizes the knowledge bases declare
- model_servers_chunk_check(servers, chunk_chars, declared) -> {"problems": [...], "warnings": [...]}

Context rule (docs/model-servers.md, "Contexts that fit the chunks"): Dify 1.15.0 measures a custom
chunk's max_tokens in characters (api/core/rag/splitter/fixed_text_splitter.py, _character_encoder),
and a character is at most one token of a BERT / XLM-R tokenizer, so a chunk of N characters needs
N + SINGLE_OVERHEAD tokens (plus the document prefix) to be embedded whole, and a rerank pair
N + query + PAIR_OVERHEAD. Embedding and rerank contexts default to that, capped at the model's
trained maximum (model_max_tokens, recorded in every preset entry).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import posixpath
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - the unit tests always have ansible
    AnsibleFilterError = ValueError

DOCUMENTATION = """
name: model_servers
short_description: the model_servers role's server plan, configurations, compose document and Dify endpoints
description:
  - See the module docstring of plugins/filter/model_servers.py; docs/model-servers.md explains the rules.
"""

KINDS = ("llm", "embedding", "rerank")
MODEL_TYPES = {"llm": "llm", "embedding": "text-embedding", "rerank": "rerank"}
# Backend -> kinds it serves, whether the role runs it natively, its port inside its container,
# its health path (at the server root), the base path of its OpenAI-compatible API.
BACKENDS = {
    "vllm": {"kinds": ("llm",), "native": False, "container_port": 8000, "health": "/health", "api": "/v1"},
    "llamacpp": {"kinds": KINDS, "native": True, "container_port": 8080, "health": "/health", "api": "/v1"},
    "ollama": {"kinds": ("llm",), "native": False, "container_port": 11434, "health": "/api/version", "api": "/v1"},
    "tei": {"kinds": ("embedding", "rerank"), "native": False, "container_port": 80, "health": "/health", "api": ""},
    "infinity": {"kinds": ("embedding", "rerank"), "native": True, "container_port": 7997, "health": "/health",
                 "api": "/v1"},  # started with --url-prefix /v1; /health stays at the root
}
# Backends that get a TEI-compatible front (roles/model_servers/files/tei_front.py) for embedding / rerank.
FRONT_BACKENDS = ("llamacpp", "infinity")
FRONT_KEY_ENV = {"llamacpp": "LLAMA_API_KEY", "infinity": "INFINITY_API_KEY"}
OAC_PLUGIN = "langgenius/openai_api_compatible"
OAC_PROVIDER = "langgenius/openai_api_compatible/openai_api_compatible"
TEI_PLUGIN = "langgenius/huggingface_tei"
TEI_PROVIDER = "langgenius/huggingface_tei/huggingface_tei"

LLM_CONTEXT_DEFAULT = 4096       # tokens per sequence when an LLM sets no context_size
LLAMACPP_BATCH_DEFAULT = 2048    # llama.cpp's n_batch; the smallest n_ubatch of an embedding / rerank server
LLAMACPP_UBATCH_LLM = 512        # llama.cpp's n_ubatch (LLMs: a prompt goes through in micro-batches)
TEI_MIN_BATCH_TOKENS = 16384     # TEI's own --max-batch-tokens default
SINGLE_OVERHEAD = 3              # [CLS] + [SEP] (or <s> + </s>) + a SentencePiece dummy prefix
PAIR_OVERHEAD = 6                # <s> q </s></s> d </s> + a dummy prefix per segment (BERT: 3)
UTF8_MAX_BYTES = 4               # GPT-2 (byte-level BPE) tokens per character, at most
DIFY_AUTOMATIC_CHUNK = 500       # Dify's automatic process rule: 500 (characters in 1.15.0)
DIFY_SUBCHUNK_DEFAULT = 256      # dify_documents' default subchunk_max_tokens (hierarchical mode)
INVOKE_TIMEOUT = {"cpu": 300, "gpu": 120}   # seconds huggingface_tei waits for one call
MAX_RETRIES = {"cpu": 1, "gpu": 3}

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
CHECKSUM_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
SOURCES = ("hf", "url", "src", "ollama")
SERVER_KEYS = frozenset((
    "name", "kind", "backend", "runtime", "model", "served_name", "port", "gpus", "context_size", "parallel",
    "batch_size", "max_tokens", "extra_args", "env", "params", "pip_packages", "bind_address", "query_prefix",
    "document_prefix", "gpu_memory_utilization", "tei_arch", "pooling", "ubatch_size", "ctx_total", "batch_tokens",
    "model_max_tokens", "front", "backend_port", "invoke_timeout", "max_retries"))
POOLINGS = ("mean", "cls", "last", "none", "rank")
LOOPBACK = "127.0.0.1"


def _err(message):
    raise AnsibleFilterError(message)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value):
    """int of an int or a digit string (inventory values may arrive as strings); None otherwise."""
    if _is_int(value):
        return value
    if isinstance(value, str) and re.match(r"^-?[0-9]+$", value.strip()):
        return int(value.strip())
    return None


def _plain(value):
    """VALUE as plain dicts and lists. Ansible hands filters lazy containers whose templates render when read;
    reading them item by item renders them in the play's context (a deep copy would copy the templating
    machinery itself, and a filter used inside a nested template then fails to load)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _merge(base, over):
    """Recursive dict merge (combine(recursive=true)): dicts merge, everything else replaces."""
    out = dict(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = _plain(value)
    return out


def url_host(address):
    return "[%s]" % address if ":" in address else address


# ------------------------------------------------------------------------------------- bind address
_DOCKER0_RE = re.compile(r"\binet ([0-9]{1,3}(?:\.[0-9]{1,3}){3})/")


def model_servers_bind_default(bind_address, docker0=None):
    """The bind address of servers that set none.

    model_servers_bind_address when set; else docker0's IPv4 address (the Docker host gateway that
    Dify's containers reach as host.docker.internal) read from `ip -4 -o addr show dev docker0`;
    else 127.0.0.1 -- also when docker0 does not exist (yet): before Docker is installed, or with a
    Docker daemon that runs without a bridge, the command fails and its output is empty or None.
    """
    if bind_address:
        return str(bind_address).strip()
    match = _DOCKER0_RE.search(docker0 or "") if isinstance(docker0, str) or docker0 is None else None
    return match.group(1) if match else LOOPBACK


# ------------------------------------------------------------------------------------- the plan
def _model_file(source):
    """The file llama.cpp loads: model.file, else filename, else the URL's or src's basename."""
    if source.get("file"):
        return str(source["file"])
    if source.get("filename"):
        return str(source["filename"])
    if source.get("url"):
        return posixpath.basename(urlsplit(str(source["url"])).path)
    if source.get("src"):
        return posixpath.basename(str(source["src"]).rstrip("/")) if not str(source["src"]).endswith("/") else ""
    return ""


def _raw_entries(inp, problems):
    """[(label, entry)] of the servers before defaults: the explicit list or the preset, then the extras."""
    servers = inp.get("servers") or []
    extra = inp.get("extra_servers") or []
    for var, value in (("model_servers_servers", servers), ("model_servers_extra_servers", extra)):
        if not isinstance(value, list):
            problems.append("%s must be a list of server entries, got %r" % (var, value))
            return []
    out = []
    if servers:
        out += [("model_servers_servers[%d]" % i, s) for i, s in enumerate(servers)]
    else:
        preset = inp.get("preset")
        presets = inp.get("presets") or {}
        if preset not in presets:
            problems.append("model_servers_preset=%s is not a preset; choose one of %s or set model_servers_servers"
                            % (preset, ", ".join(sorted(presets))))
            return []
        out += [("model_servers_preset=%s, server %s" % (preset, (s or {}).get("name", i)), s)
                for i, s in enumerate(presets[preset])]
    out += [("model_servers_extra_servers[%d]" % i, s) for i, s in enumerate(extra)]
    return out


def _check_entry(label, entry, source, problems):
    """Problems of one merged entry (before derivation); each names LABEL and the field."""
    found = []
    unknown = sorted(set(entry) - SERVER_KEYS)
    if unknown:
        found.append("unknown key(s) %s (known: %s)" % (", ".join(unknown), ", ".join(sorted(SERVER_KEYS))))
    kind, backend = entry.get("kind"), entry.get("backend")
    if kind not in KINDS:
        found.append("kind must be one of %s, got %r" % ("|".join(KINDS), kind))
    if backend not in BACKENDS:
        found.append("backend must be one of %s, got %r" % ("|".join(sorted(BACKENDS)), backend))
    elif kind in KINDS and kind not in BACKENDS[backend]["kinds"]:
        found.append("backend %s does not serve %s (it serves %s)" % (backend, kind, ", ".join(BACKENDS[backend]["kinds"])))
    port = _as_int(entry.get("port"))
    if port is None or not 0 < port < 65536:
        found.append("port must be 1-65535, got %r" % (entry.get("port"),))
    if not isinstance(source, dict):
        found.append("model must be a mapping with exactly one of %s, got %r" % (", ".join(SOURCES), source))
    else:
        given = [k for k in SOURCES if k in source]
        if len(given) != 1:
            found.append("the model source needs exactly one of %s, got %s" % (", ".join(SOURCES), given or "none"))
        if "url" in source and not CHECKSUM_RE.match(str(source.get("checksum", ""))):
            found.append("a url model source needs checksum 'sha256:<64 hex digits>'")
        if "ollama" in source and backend != "ollama":
            found.append("an ollama model source needs backend ollama")
        if backend == "ollama" and "ollama" not in source:
            found.append("backend ollama needs an ollama model source (model: {ollama: NAME})")
        if backend == "llamacpp" and not _model_file(source):
            found.append("llama.cpp needs model.file (the GGUF to load)")
    for key in ("gpus", "extra_args", "pip_packages"):
        if not isinstance(entry.get(key, []), list):
            found.append("%s must be a list, got %r" % (key, entry.get(key)))
    for key in ("env", "params"):
        if not isinstance(entry.get(key, {}), dict):
            found.append("%s must be a mapping, got %r" % (key, entry.get(key)))
    for key in ("context_size", "parallel", "batch_size", "max_tokens", "ubatch_size", "ctx_total", "batch_tokens",
                "model_max_tokens", "backend_port", "invoke_timeout"):
        if key in entry and entry[key] is not None:
            value = _as_int(entry[key])
            if value is None or value < 1 or (key == "backend_port" and value > 65535):
                found.append("%s must be a positive integer%s, got %r"
                             % (key, " up to 65535" if key == "backend_port" else "", entry[key]))
    if "max_retries" in entry and (_as_int(entry["max_retries"]) is None or _as_int(entry["max_retries"]) < 0):
        found.append("max_retries must be 0 or more, got %r" % (entry["max_retries"],))
    if "pooling" in entry and entry["pooling"] not in POOLINGS:
        found.append("pooling must be one of %s, got %r" % ("|".join(POOLINGS), entry["pooling"]))
    if "front" in entry and not isinstance(entry["front"], bool):
        found.append("front must be true or false, got %r" % (entry["front"],))
    for key in ("query_prefix", "document_prefix", "bind_address", "served_name"):
        if key in entry and not isinstance(entry[key], str):
            found.append("%s must be a string, got %r" % (key, entry[key]))
    for problem in found:
        problems.append("%s: %s" % (label, problem))
    return not found


def _contexts(s, chunk_chars, query_chars, label, problems, warnings):
    """The context arithmetic, once: per-slot context, slots, n_ctx, ubatch, batch (llama.cpp), and what
    each embedding / rerank server's context needs for the chunks."""
    kind, backend = s["kind"], s["backend"]
    model_max = _as_int(s.get("model_max_tokens"))
    explicit = _as_int(s.get("context_size"))
    prefix = len(s.get("document_prefix") or "") if kind == "embedding" else 0
    need = None
    if kind == "embedding":
        need = chunk_chars + prefix + SINGLE_OVERHEAD
    elif kind == "rerank":
        need = chunk_chars + query_chars + PAIR_OVERHEAD
    if kind == "llm":
        ctx = explicit or LLM_CONTEXT_DEFAULT
    elif backend in ("tei", "infinity"):
        # they truncate every input at the model's own maximum: that IS their context
        ctx = model_max or explicit or 512
        if explicit and model_max and explicit != model_max:
            warnings.append("%s: context_size %d is ignored: %s always uses the model's maximum (%d tokens)"
                            % (label, explicit, backend, model_max))
    else:
        ctx = explicit or (min(need, model_max) if model_max else need)
    if model_max and ctx > model_max:
        problems.append("%s: context_size %d is larger than the model's trained maximum model_max_tokens=%d"
                        % (label, ctx, model_max))
    if kind == "rerank" and ctx < need:
        warnings.append(
            "%s: a query of up to %d characters (model_servers_rerank_query_chars) plus a chunk of %d "
            "(model_servers_chunk_chars) needs %d tokens, the rerank context is %d%s: the longer of the two is "
            "truncated (auto_truncate)" % (label, query_chars, chunk_chars, need, ctx,
                                           " (the model's maximum)" if model_max and ctx == model_max else ""))
    slots = _as_int(s.get("parallel" if kind == "llm" else "batch_size")) or 1
    n_ctx = _as_int(s.get("ctx_total")) or ctx * slots
    if kind == "llm":
        # causal: a prompt is processed in micro-batches; llama.cpp's own defaults (n_ubatch 512, n_batch 2048)
        ubatch = _as_int(s.get("ubatch_size")) or min(LLAMACPP_UBATCH_LLM, n_ctx)
        batch = max(ubatch, min(_as_int(s.get("batch_tokens")) or LLAMACPP_BATCH_DEFAULT, n_ctx))
    else:
        ubatch = _as_int(s.get("ubatch_size")) or min(max(ctx, LLAMACPP_BATCH_DEFAULT), n_ctx)
        batch = ubatch   # non-causal models need a whole input in one micro-batch
        if backend == "llamacpp" and ubatch < ctx:
            problems.append("%s: ubatch_size %d is smaller than the context %d: llama.cpp embeds an input in one "
                            "micro-batch" % (label, ubatch, ctx))
    return {"context_size": ctx, "model_max_tokens": model_max, "chunk_need": need, "slots": slots,
            "n_ctx": n_ctx, "ubatch": ubatch, "batch": batch}


PLAN_INPUTS = ("servers", "preset", "presets", "extra_servers", "server_overrides", "source_overrides",
               "server_defaults", "runtime", "nvidia_device", "bind_address", "docker0", "allow_public_bind",
               "unit_prefix", "models_dir", "config_dir", "chunk_chars", "rerank_query_chars", "rerank_max_documents",
               "fronts", "front_port_offset")


def model_servers_plan(inputs):
    """Resolve and validate the server list. INPUTS (built by tasks/normalize.yml):

    servers, preset, presets, extra_servers, server_overrides, source_overrides, server_defaults, runtime
    (auto|native|container), nvidia_device (bool), bind_address, docker0 (ip's output or None),
    allow_public_bind, unit_prefix, models_dir, config_dir, chunk_chars, rerank_query_chars,
    rerank_max_documents, front_port_offset, fronts (bool).

    Returns {"servers": [resolved server], "problems": [messages], "warnings": [messages],
    "bind_address": default bind, "runtime": default runtime, "chunk_chars": int}. Every problem
    names the variable and the server; the role fails on any before it changes anything.
    """
    inp = _plain(inputs or {})
    problems, warnings = [], []
    unknown = sorted(set(inp) - set(PLAN_INPUTS))
    if unknown:
        _err("model_servers_plan: unknown input(s) %s" % ", ".join(unknown))
    for key in ("chunk_chars", "rerank_query_chars", "rerank_max_documents", "front_port_offset"):
        value = _as_int(inp.get(key))
        if value is None or value < (0 if key == "rerank_query_chars" else 1):
            problems.append("model_servers_%s must be a positive integer, got %r" % (key, inp.get(key)))
            inp[key] = {"chunk_chars": 500, "rerank_query_chars": 250, "rerank_max_documents": 64,
                        "front_port_offset": 1000}[key]
        else:
            inp[key] = value
    if not 50 <= inp["chunk_chars"] <= 4000:
        problems.append("model_servers_chunk_chars must be 50 to 4000 (the chunk sizes Dify accepts, up to "
                        "INDEXING_MAX_SEGMENTATION_TOKENS_LENGTH), got %d" % inp["chunk_chars"])
    runtime = inp.get("runtime") or "auto"
    if runtime not in ("auto", "native", "container"):
        problems.append("model_servers_runtime must be auto, native or container, got %r" % (runtime,))
        runtime = "auto"
    default_runtime = runtime if runtime != "auto" else ("container" if inp.get("nvidia_device") else "native")
    bind = model_servers_bind_default(inp.get("bind_address"), inp.get("docker0"))
    overrides = inp.get("server_overrides") or {}
    sources = inp.get("source_overrides") or {}
    for var, value in (("model_servers_server_overrides", overrides), ("model_servers_source_overrides", sources)):
        if not isinstance(value, dict):
            problems.append("%s must map server names to mappings, got %r" % (var, value))
    if not isinstance(overrides, dict):
        overrides = {}
    if not isinstance(sources, dict):
        sources = {}
    defaults = inp.get("server_defaults") or {}
    chunk_chars, query_chars = inp["chunk_chars"], inp["rerank_query_chars"]
    servers = []
    raw = _raw_entries(inp, problems)
    names = []
    for label, entry in raw:
        if not isinstance(entry, dict):
            problems.append("%s: a server entry must be a mapping, got %r" % (label, entry))
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            problems.append("%s: name must be lowercase letters, digits and '-' (1-41 characters, not starting "
                            "with '-'), got %r" % (label, name))
            continue
        names.append(name)
        label = "%s (server %s)" % (label, name) if "server %s" % name not in label else label
        over = overrides.get(name) or {}
        if not isinstance(over, dict):
            problems.append("model_servers_server_overrides.%s must be a mapping, got %r" % (name, over))
            over = {}
        base = _merge(_merge(defaults, entry), over)
        source = sources[name] if name in sources else base.get("model")
        if not _check_entry(label, base, source, problems):
            continue
        s = dict(base)
        s["model"] = source
        s["port"] = _as_int(s["port"])
        s["runtime"] = s.get("runtime") or default_runtime
        if s["runtime"] not in ("native", "container"):
            problems.append("%s: runtime must be native or container, got %r" % (label, s["runtime"]))
            continue
        if s["runtime"] == "native" and not BACKENDS[s["backend"]]["native"]:
            problems.append("%s: the native runtime serves only %s; %s needs runtime: container"
                            % (label, ", ".join(b for b in sorted(BACKENDS) if BACKENDS[b]["native"]), s["backend"]))
            continue
        s["file"] = _model_file(source)
        s["served_name"] = s.get("served_name") or source.get("ollama") or name
        s["bind_address"] = s.get("bind_address") or bind
        if s["bind_address"] in ("0.0.0.0", "::") and not inp.get("allow_public_bind"):
            problems.append("%s: binding to %s (every interface) needs model_servers_allow_public_bind: true"
                            % (label, s["bind_address"]))
        s["url_host"] = url_host(s["bind_address"])
        s["unit"] = "%s%s" % (inp.get("unit_prefix", "model-server-"), name)
        s["model_dir"] = "%s/%s" % (str(inp.get("models_dir", "/var/lib/model-servers/models")).rstrip("/"), name)
        s["gpus"] = [str(g) for g in s.get("gpus") or []]
        s["label"] = label
        s.update(_contexts(s, chunk_chars, query_chars, label, problems, warnings))
        batch_size = _as_int(s.get("batch_size")) or 1
        # client batch: texts per request Dify may send (embedding: its max_chunks; rerank: every candidate)
        s["client_batch"] = (max(inp["rerank_max_documents"], batch_size) if s["kind"] == "rerank"
                             else batch_size if s["kind"] == "embedding" else s["slots"])
        wants_front = s.get("front", inp.get("fronts", True))
        s["front"] = None
        s["backend_host"], s["backend_port"] = s["bind_address"], s["port"]
        if s["kind"] in ("embedding", "rerank") and s["backend"] in FRONT_BACKENDS and wants_front:
            s["backend_host"] = LOOPBACK
            s["backend_port"] = _as_int(base.get("backend_port")) or s["port"] + inp["front_port_offset"]
            if s["backend_port"] > 65535:
                problems.append("%s: the backend port %d (port + model_servers_front_port_offset) is above 65535; set "
                                "backend_port or a smaller offset" % (label, s["backend_port"]))
            s["front"] = {"unit": s["unit"] + "-tei", "config": "%s/%s-tei.json" % (
                str(inp.get("config_dir", "/etc/model-servers")).rstrip("/"), name)}
        elif base.get("backend_port") is not None:
            warnings.append("%s: backend_port is only used by servers with a TEI-compatible front" % label)
        s["backend_url_host"] = url_host(s["backend_host"])
        gpu = "gpu" if s["gpus"] else "cpu"
        s["invoke_timeout"] = _as_int(s.get("invoke_timeout")) or INVOKE_TIMEOUT[gpu]
        s["max_retries"] = _as_int(s.get("max_retries")) if s.get("max_retries") is not None else MAX_RETRIES[gpu]
        servers.append(s)
    for var, value in (("model_servers_server_overrides", overrides), ("model_servers_source_overrides", sources)):
        for name in sorted(set(value) - set(names)):
            problems.append("%s.%s: there is no server named %s (servers: %s)"
                            % (var, name, name, ", ".join(names) or "none"))
    _unique(servers, names, problems)
    return {"servers": servers, "problems": problems, "warnings": warnings, "bind_address": bind,
            "runtime": default_runtime, "chunk_chars": chunk_chars}


def _unique(servers, names, problems):
    dupes = sorted(n for n in set(names) if names.count(n) > 1)
    if dupes:
        problems.append("model_servers: two servers are named %s; names must be unique" % ", ".join(dupes))
    seen = {}
    for s in servers:
        ports = [("port", s["port"])] + ([("backend port", s["backend_port"])] if s["front"] else [])
        for what, port in ports:
            if port in seen:
                problems.append("model_servers: %s (%s %d) and %s use the same port; every server's port and every "
                                "front's backend port (port + model_servers_front_port_offset) must differ"
                                % (s["label"], what, port, seen[port]))
            else:
                seen[port] = "%s (%s %d)" % (s["label"], what, port)
    units = {}
    for s in servers:
        for unit in [s["unit"]] + ([s["front"]["unit"]] if s["front"] else []):
            if unit in units:
                problems.append("model_servers: %s and %s would both run the systemd unit %s; rename one server"
                                % (units[unit], s["label"], unit))
            units[unit] = s["label"]


# ------------------------------------------------------------------------------------- llama.cpp
def _gpu_layers(s):
    return 999 if s["gpus"] else 0


def model_servers_llamacpp_config(s, settings=None):
    """The xllamacpp launcher's JSON (roles/model_servers/files/llamacpp_server.py) of one llama.cpp server."""
    settings = settings or {}
    cfg = {
        "model": "%s/%s" % (s["model_dir"], s["file"]),
        "host": s["backend_host"],
        "port": s["backend_port"],
        "alias": s["served_name"],
        "mode": s["kind"],
        "ctx_size": s["n_ctx"],
        "batch_size": s["batch"],
        "ubatch_size": s["ubatch"],
        "parallel": s["slots"],
        "threads": _as_int(settings.get("threads")) or 0,
        "n_gpu_layers": _gpu_layers(s),
        "extra": s.get("params") or {},
    }
    if s.get("pooling"):
        cfg["pooling"] = s["pooling"]
    return cfg


def _llamacpp_args(s, host, port, model_path, threads=0):
    args = ["--model", model_path, "--host", host, "--port", str(port), "--alias", s["served_name"],
            "--ctx-size", str(s["n_ctx"]), "--parallel", str(s["slots"]), "--ubatch-size", str(s["ubatch"]),
            "--batch-size", str(s["batch"]), "--n-gpu-layers", str(_gpu_layers(s))]
    if threads:
        args += ["--threads", str(threads)]
    if s["kind"] == "embedding":
        args += ["--embeddings", "--pooling", s.get("pooling") or "mean"]
    elif s["kind"] == "rerank":
        args += ["--reranking"]
    return args + [str(a) for a in s.get("extra_args") or []]


def _infinity_args(s, host, port, model_dir):
    return ["v2", "--model-id", model_dir, "--served-model-name", s["served_name"], "--host", host,
            "--port", str(port), "--batch-size", str(_as_int(s.get("batch_size")) or 1), "--url-prefix", "/v1",
            "--device", "cuda" if s["gpus"] else "cpu"]


# ------------------------------------------------------------------------------------- TEI front
def model_servers_front_config(s, settings=None):
    """tei_front.py's JSON for the front of server S (it listens where Dify connects, the backend on loopback).

    settings: chunk_chars (so that /info's max_input_length never makes huggingface_tei cut a chunk).
    """
    settings = settings or {}
    chunk_chars = _as_int(settings.get("chunk_chars")) or 0
    cfg = {
        "host": s["bind_address"],
        "port": s["port"],
        "backend": s["backend"],
        "backend_url": "http://%s:%d%s" % (s["backend_url_host"], s["backend_port"],
                                           "/v1" if s["backend"] == "infinity" else ""),
        "backend_model": s["served_name"],
        "kind": s["kind"],
        "model_id": s["served_name"],
        "max_input_length": s["context_size"],
        "max_client_batch_size": s["client_batch"],
        "auto_truncate": True,
        "api_key_env": FRONT_KEY_ENV[s["backend"]],
        "backend_timeout": s["invoke_timeout"],
        "max_batch_tokens": s["context_size"] * s["client_batch"],
    }
    if s["kind"] == "embedding":
        cfg["pooling"] = s.get("pooling") or "mean"
        # huggingface_tei cuts every text whose GPT-2 token count reaches /info's max_input_length (by a
        # character ratio) before sending it; GPT-2 counts up to one token per UTF-8 byte. Reporting at least
        # 4 tokens per chunk character keeps chunks whole: the front then truncates by the model's own tokens.
        cfg["info_max_input_length"] = max(s["context_size"], UTF8_MAX_BYTES * chunk_chars)
        if s.get("document_prefix"):
            cfg["default_prompt"] = s["document_prefix"]
    return cfg


# ------------------------------------------------------------------------------------- systemd units
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_./:=,+@-]+$")


def systemd_quote(arg, exec_line=True):
    """One argument for an ExecStart= line (or, exec_line=False, an Environment= assignment)."""
    text = str(arg)
    if exec_line and _SAFE_ARG.match(text):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if exec_line:
        text = text.replace("$", "$$")
    return '"%s"' % text


def _service_common(settings, extra_env_file):
    lines = []
    if extra_env_file:
        lines.append(("EnvironmentFile", extra_env_file))
    return lines


def _tail(settings):
    lines = [("Restart", "always"), ("RestartSec", "5"), ("TimeoutStartSec", "600"), ("TimeoutStopSec", "30"),
             ("LimitNOFILE", "65536")]
    if settings.get("hardening", True):
        lines += [("NoNewPrivileges", "true"), ("PrivateTmp", "true"), ("ProtectSystem", "full"),
                  ("ProtectHome", "true"), ("ReadWritePaths", settings["home"])]
    return lines


def model_servers_units(servers, settings):
    """The systemd units of the native servers and of every front (fronts run on the host in both runtimes).

    settings: user, group, home, install_dir, config_dir, python, api_key (bool: a key is set), hardening,
    threads, llama_bin ("" = the xllamacpp launcher).
    Returns [{"id", "server", "role" (backend|front), "unit", "sections": [[section, [[key, value]]]]}].
    """
    out = []
    key_file = "%s/api-key.env" % settings["config_dir"] if settings.get("api_key") else None
    for s in servers:
        if s["runtime"] == "native":
            out.append(_backend_unit(s, settings, key_file))
        if s["front"]:
            out.append(_front_unit(s, settings, key_file))
    return out


def _backend_unit(s, settings, key_file):
    install = settings["install_dir"]
    threads = _as_int(settings.get("threads")) or 0
    if s["backend"] == "llamacpp" and settings.get("llama_bin"):
        argv = [settings["llama_bin"]] + _llamacpp_args(
            s, s["backend_host"], s["backend_port"], "%s/%s" % (s["model_dir"], s["file"]), threads)
    elif s["backend"] == "llamacpp":
        argv = ["%s/venvs/llamacpp/bin/python" % install, "%s/bin/llamacpp_server.py" % install,
                "%s/%s.json" % (settings["config_dir"], s["name"])]
    else:
        argv = (["%s/venvs/infinity/bin/infinity_emb" % install]
                + _infinity_args(s, s["backend_host"], s["backend_port"], s["model_dir"])
                + ["--engine", "torch"] + [str(a) for a in s.get("extra_args") or []])
    service = [("Type", "simple"), ("User", settings["user"]), ("Group", settings["group"]),
               ("WorkingDirectory", settings["home"]), ("Environment", "HOME=%s" % settings["home"]),
               ("Environment", "HF_HUB_OFFLINE=1"), ("Environment", "HF_HUB_DISABLE_TELEMETRY=1"),
               ("Environment", "CUDA_VISIBLE_DEVICES=%s" % ",".join(s["gpus"]))]
    service += _service_common(settings, key_file)
    service += [("Environment", systemd_quote("%s=%s" % (k, v), exec_line=False))
                for k, v in sorted((s.get("env") or {}).items())]
    service.append(("ExecStart", " ".join(systemd_quote(a) for a in argv)))
    service += _tail(settings)
    unit = [("Description", "Model server %s (%s %s: %s)" % (s["name"], s["backend"], s["kind"], s["served_name"])),
            ("After", "network-online.target"), ("Wants", "network-online.target")]
    return {"id": s["name"], "server": s["name"], "role": "backend", "backend": s["backend"], "unit": s["unit"],
            "sections": [["Unit", unit], ["Service", service], ["Install", [("WantedBy", "multi-user.target")]]]}


def _front_unit(s, settings, key_file):
    after = "network-online.target %s" % ("%s.service" % s["unit"] if s["runtime"] == "native" else "docker.service")
    argv = [settings["python"], "%s/bin/tei_front.py" % settings["install_dir"], s["front"]["config"]]
    service = [("Type", "simple"), ("User", settings["user"]), ("Group", settings["group"]),
               ("WorkingDirectory", settings["home"])]
    service += _service_common(settings, key_file)
    service.append(("ExecStart", " ".join(systemd_quote(a) for a in argv)))
    service += _tail(settings)
    unit = [("Description", "TEI-compatible front of model server %s (%s %s: %s)"
             % (s["name"], s["backend"], s["kind"], s["served_name"])),
            ("After", after), ("Wants", "network-online.target")]
    return {"id": s["name"] + "-tei", "server": s["name"], "role": "front", "backend": s["backend"],
            "unit": s["front"]["unit"],
            "sections": [["Unit", unit], ["Service", service], ["Install", [("WantedBy", "multi-user.target")]]]}


def model_servers_restarts(units, changes):
    """Ids of the units to restart. CHANGES: units (ids whose unit file changed), configs (ids whose config
    changed: a server name for its llama.cpp config, <name>-tei for a front's), models (server names whose model
    changed), llamacpp (bool: xllamacpp or its launcher changed), infinity (bool: the Infinity venv changed),
    front (bool: tei_front.py changed), api_key (bool: the key file changed or went away).

    A backend restarts for its own unit, config, model or software; a front only for its own unit or config,
    tei_front.py, or the key -- a changed front configuration restarts only that front.
    """
    changes = changes or {}
    ids = set(changes.get("units") or []) | set(changes.get("configs") or [])
    models = set(changes.get("models") or [])
    out = []
    for u in units or []:
        backend_of = u.get("backend")
        if u["id"] in ids or changes.get("api_key"):
            out.append(u["id"])
        elif u["role"] == "backend" and (u["server"] in models or (changes.get("llamacpp") and backend_of == "llamacpp")
                                         or (changes.get("infinity") and backend_of == "infinity")):
            out.append(u["id"])
        elif u["role"] == "front" and changes.get("front"):
            out.append(u["id"])
    return out


# ------------------------------------------------------------------------------------- containers
def model_servers_tei_arch(servers, setting="auto", nvidia_smi_lines=None, arch_by_cc=None, known=None):
    """TEI image flavour of each container TEI server: its tei_arch, cpu without GPUs, model_servers_tei_arch
    when not auto, else from nvidia-smi's compute capability of its first GPU ("0, 8.9" lines)."""
    caps = {}
    for line in nvidia_smi_lines or []:
        parts = [p.strip() for p in str(line).split(",")]
        if len(parts) == 2:
            caps[parts[0]] = parts[1]
    arch_of, problems = {}, []
    for s in servers or []:
        if s.get("backend") != "tei" or s.get("runtime") != "container":
            continue
        if s.get("tei_arch"):
            arch = s["tei_arch"]
        elif not s.get("gpus"):
            arch = "cpu"
        elif setting and setting != "auto":
            arch = setting
        else:
            arch = (arch_by_cc or {}).get(caps.get(str(s["gpus"][0]), ""), "unknown")
        arch_of[s["name"]] = arch
        if known is not None and arch not in known:
            problems.append(
                "model_servers: cannot tell which text-embeddings-inference image server %s needs (GPU %s: %s). Set "
                "model_servers_tei_arch (or tei_arch on the server) to one of %s."
                % (s["name"], (s.get("gpus") or ["-"])[0], arch, ", ".join(sorted(known))))
    return {"arch": arch_of, "problems": problems}


def _healthcheck(s):
    port = BACKENDS[s["backend"]]["container_port"]
    if s["backend"] == "llamacpp":
        test = ["CMD", "curl", "-fsS", "http://127.0.0.1:%d/health" % port]
    elif s["backend"] == "ollama":
        test = ["CMD", "ollama", "list"]
    elif s["backend"] == "tei":
        test = ["CMD", "bash", "-c",
                "exec 3<>/dev/tcp/127.0.0.1/%d && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"
                % port]
    else:
        test = ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:%d/health')"
                % port]
    return {"test": test, "interval": "30s", "timeout": "10s", "retries": 5, "start_period": "600s"}


def model_servers_compose(servers, settings):
    """The compose document of the container servers. settings: project, compose_dir, restart, image_refs
    (model_servers_image_refs' result), tei_arch ({name: arch}). Secrets only by env_file reference."""
    refs = settings.get("image_refs") or {}
    services = {}
    containers = [s for s in servers or [] if s.get("runtime") == "container"]
    for s in containers:
        backend, cport = s["backend"], BACKENDS[s["backend"]]["container_port"]
        mount = "/models/" + s["name"]
        env = {"HF_HUB_DISABLE_TELEMETRY": "1"}
        volumes = [] if "ollama" in s["model"] else ["%s:%s:ro" % (s["model_dir"], mount)]
        command = None
        if backend == "vllm":
            image = refs.get("vllm")
            command = ["--model", mount, "--served-model-name", s["served_name"], "--host", "0.0.0.0", "--port",
                       str(cport), "--max-model-len", str(s["context_size"]), "--max-num-seqs", str(s["slots"]),
                       "--gpu-memory-utilization", str(s.get("gpu_memory_utilization", 0.9))]
            volumes.append("hf-cache:/root/.cache/huggingface")
        elif backend == "llamacpp":
            image = refs.get("llamacpp_cuda" if s["gpus"] else "llamacpp_cpu")
            command = _llamacpp_args(s, "0.0.0.0", cport, "%s/%s" % (mount, s["file"]))
        elif backend == "ollama":
            image = refs.get("ollama")
            env.update({"OLLAMA_HOST": "0.0.0.0:%d" % cport, "OLLAMA_CONTEXT_LENGTH": str(s["context_size"]),
                        "OLLAMA_NUM_PARALLEL": str(s["slots"]), "OLLAMA_KEEP_ALIVE": "-1"})
            volumes.append("ollama:/root/.ollama")
        elif backend == "tei":
            image = (refs.get("tei") or {}).get((settings.get("tei_arch") or {}).get(s["name"]))
            command = ["--model-id", mount, "--served-model-name", s["served_name"], "--port", str(cport),
                       "--max-client-batch-size", str(s["client_batch"]),
                       "--max-batch-tokens", str(max(s["context_size"] * (_as_int(s.get("batch_size")) or 1),
                                                     TEI_MIN_BATCH_TOKENS)),
                       "--auto-truncate"]
            if s["kind"] == "embedding" and s.get("document_prefix"):
                command += ["--default-prompt", s["document_prefix"]]
        else:  # infinity
            image = ("model-servers/%s:local" % s["name"]) if s.get("pip_packages") else refs.get("infinity")
            command = _infinity_args(s, "0.0.0.0", cport, mount)
            env["HF_HUB_OFFLINE"] = "1"
        if backend not in ("llamacpp",) and command is not None:
            command = command + [str(a) for a in s.get("extra_args") or []]
        env.update({str(k): str(v) for k, v in (s.get("env") or {}).items()})
        svc = {
            "image": image,
            "restart": settings.get("restart", "unless-stopped"),
            "env_file": ["%s/secrets.env" % settings["compose_dir"]],
            "environment": env,
            "ports": ["%s:%d:%d" % (s["backend_url_host"], s["backend_port"], cport)],
            "volumes": volumes,
            "healthcheck": _healthcheck(s),
            "labels": {"io.model-servers.name": s["name"], "io.model-servers.kind": s["kind"],
                       "io.model-servers.backend": backend},
        }
        if command is not None:
            svc["command"] = command
        if backend == "infinity" and s.get("pip_packages"):
            svc["build"] = {"context": "%s/build/%s" % (settings["compose_dir"], s["name"])}
        if backend == "vllm":
            svc["ipc"] = "host"
        if s["gpus"]:
            svc["deploy"] = {"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "device_ids": list(s["gpus"]), "capabilities": ["gpu"]}]}}}
        services[s["name"]] = svc
    doc = {"name": settings.get("project", "model-servers"), "services": services}
    volumes_top = {}
    if any(s["backend"] == "vllm" for s in containers):
        volumes_top["hf-cache"] = {}
    if any(s["backend"] == "ollama" for s in containers):
        volumes_top["ollama"] = {}
    if volumes_top:
        doc["volumes"] = volumes_top
    return doc


# ------------------------------------------------------------------------------------- Dify endpoints
def model_servers_endpoints(servers, settings):
    """model_servers_dify_endpoints (contract with dify_bootstrap). settings: dify_host, scheme, api_key.

    Servers with a TEI-compatible front and TEI servers go through langgenius/huggingface_tei (credentials
    server_url without a trailing slash or /v1, invoke_timeout, max_retries); the rest through
    langgenius/openai_api_compatible (with context_size, as its schema requires). Form values are strings.
    """
    scheme = settings.get("scheme") or "http"
    host = settings.get("dify_host") or "host.docker.internal"
    key = settings.get("api_key") or ""
    out = []
    for s in servers or []:
        base = "%s://%s:%d" % (scheme, url_host(host), s["port"])
        tei = s["front"] is not None or s["backend"] == "tei"
        if tei:
            creds = {"server_url": base, "invoke_timeout": str(s["invoke_timeout"]),
                     "max_retries": str(s["max_retries"])}
        else:
            creds = {"endpoint_url": base + BACKENDS[s["backend"]]["api"], "endpoint_model_name": s["served_name"],
                     "context_size": str(s["context_size"])}
            if s["kind"] == "llm":
                creds.update({"mode": "chat", "max_tokens_to_sample": str(_as_int(s.get("max_tokens")) or 1024)})
            elif s["kind"] == "embedding":
                creds["max_chunks"] = str(s["client_batch"])
                for field in ("query_prefix", "document_prefix"):
                    if s.get(field):
                        creds[field] = s[field]
        if key:
            creds["api_key"] = key
        out.append({
            "name": s["name"],
            "kind": s["kind"],
            "model_type": MODEL_TYPES[s["kind"]],
            "plugin_id": TEI_PLUGIN if tei else OAC_PLUGIN,
            "provider": TEI_PROVIDER if tei else OAC_PROVIDER,
            "model": s["served_name"],
            "credentials": creds,
            "max_batch": s["client_batch"],
        })
    return out


# ------------------------------------------------------------------------------------- health checks
def model_servers_checks(servers):
    """What check_servers.py waits for: every backend (health, and the served name in /v1/models) and every
    front (health through to its backend, and /info with the model id and type huggingface_tei reads)."""
    out = []
    for s in servers or []:
        base = "http://%s:%d" % (s["backend_url_host"] if s["front"] else s["url_host"], s["backend_port"])
        api = BACKENDS[s["backend"]]["api"]
        out.append({"name": s["name"], "served_name": s["served_name"],
                    "health": base + BACKENDS[s["backend"]]["health"],
                    "models": None if s["backend"] == "tei" else base + api + "/models"})
        if s["front"]:
            front = "http://%s:%d" % (s["url_host"], s["port"])
            out.append({"name": s["name"] + "-tei", "served_name": s["served_name"], "health": front + "/health",
                        "models": None, "info": front + "/info",
                        "model_type": "embedding" if s["kind"] == "embedding" else "reranker",
                        "max_client_batch_size": s["client_batch"]})
    return out


# ------------------------------------------------------------------------------------- chunks
def _chunk_of(chunking):
    """(characters of the chunks Dify embeds, the key that sets it) for a process rule, or (None, None)."""
    if not isinstance(chunking, dict):
        return None, None
    mode = chunking.get("mode", "custom")
    if mode == "automatic":
        return DIFY_AUTOMATIC_CHUNK, "mode"
    if mode == "hierarchical":
        # the child chunks are what Dify embeds
        return _as_int(chunking.get("subchunk_max_tokens")) or DIFY_SUBCHUNK_DEFAULT, "subchunk_max_tokens"
    if "max_tokens" in chunking and chunking["max_tokens"] is not None:
        return _as_int(chunking["max_tokens"]), "max_tokens"
    return None, None


def model_servers_knowledge_chunks(hostvars, hosts):
    """The chunk sizes the inventory declares for Dify's knowledge bases, on HOSTS (the dify_servers group):
    dify_knowledge_chunking and every dify_knowledge_bases[i].chunking that sets a size (a size left to the
    dify_knowledge role's default is derived from this role's model_servers_knowledge_chunk_chars and fits
    by construction). Each: {host, var, chars, embedding_model (name or None = the workspace default)}."""
    out = []
    for host in hosts or []:
        try:
            hv = hostvars[host]
        except KeyError:
            continue
        glob = hv.get("dify_knowledge_chunking") if hasattr(hv, "get") else None
        datasets = {d.get("name"): d for d in (hv.get("dify_bootstrap_datasets") or []) if isinstance(d, dict)}
        default_emb = (hv.get("dify_bootstrap_default_models") or {}).get("text-embedding")
        chars, key = _chunk_of(glob)
        if chars is not None:
            out.append({"host": host, "var": "dify_knowledge_chunking.%s" % key, "chars": chars,
                        "embedding_model": default_emb})
        for i, kb in enumerate(hv.get("dify_knowledge_bases") or []):
            if not isinstance(kb, dict):
                continue
            merged = dict(glob) if isinstance(glob, dict) else {}
            own = kb.get("chunking") if isinstance(kb.get("chunking"), dict) else {}
            merged.update(own)
            chars, key = _chunk_of(merged)
            if chars is None or not own or (key not in own and "mode" not in own):
                continue   # nothing declared here beyond dify_knowledge_chunking (already listed)
            emb = (datasets.get(kb.get("dataset")) or {}).get("embedding_model") or default_emb
            out.append({"host": host, "var": "dify_knowledge_bases[%d].chunking.%s" % (i, key), "chars": chars,
                        "embedding_model": emb})
    return out


def model_servers_chunk_check(servers, chunk_chars, declared=None):
    """Problems (fail before any change) when a chunk cannot be embedded whole -- as if truncation were off:
    model_servers_chunk_chars against every embedding server's context and model maximum, and every declared
    knowledge-base chunk size against the servers sized by model_servers_chunk_chars."""
    problems, warnings = [], []
    chunk = _as_int(chunk_chars) or 0
    embedders = [s for s in servers or [] if s["kind"] == "embedding"]
    for s in embedders:
        prefix = len(s.get("document_prefix") or "")
        fits = s["context_size"] - prefix - SINGLE_OVERHEAD
        if chunk > fits:
            why = ("the model's trained maximum (model_max_tokens=%d)" % s["model_max_tokens"]
                   if s["model_max_tokens"] and s["context_size"] >= s["model_max_tokens"]
                   else "its context_size (%d)" % s["context_size"])
            problems.append(
                "model_servers_chunk_chars=%d: %s takes chunks of at most %d characters whole -- %s minus %d for the "
                "special tokens%s. Lower model_servers_chunk_chars to %d (the knowledge bases' default chunk size "
                "follows it)%s." % (chunk, s["label"], fits, why, SINGLE_OVERHEAD,
                                    " and %d for document_prefix" % prefix if prefix else "", fits,
                                    "" if why.startswith("the model") else ", or raise its context_size"))
    for d in declared or []:
        if d.get("chars") is None:
            problems.append("%s on %s: not an integer" % (d["var"], d["host"]))
            continue
        targets = [s for s in embedders if d.get("embedding_model") in (None, s["served_name"])]
        for s in targets:
            prefix = len(s.get("document_prefix") or "")
            fits = s["context_size"] - prefix - SINGLE_OVERHEAD
            if d["chars"] > fits:
                problems.append(
                    "%s=%d (host %s) is larger than the %d characters %s takes whole (context %d tokens, sized for "
                    "model_servers_chunk_chars=%d). Lower %s, or raise model_servers_chunk_chars to %d%s."
                    % (d["var"], d["chars"], d["host"], fits, s["label"], s["context_size"], chunk, d["var"],
                       d["chars"], " (the model's trained maximum, model_max_tokens=%d, allows %d)"
                       % (s["model_max_tokens"], s["model_max_tokens"] - prefix - SINGLE_OVERHEAD)
                       if s["model_max_tokens"] else ""))
    return {"problems": problems, "warnings": warnings}


class FilterModule(object):
    def filters(self):
        return {
            "model_servers_bind_default": model_servers_bind_default,
            "model_servers_plan": model_servers_plan,
            "model_servers_llamacpp_config": model_servers_llamacpp_config,
            "model_servers_front_config": model_servers_front_config,
            "model_servers_units": model_servers_units,
            "model_servers_restarts": model_servers_restarts,
            "model_servers_tei_arch": model_servers_tei_arch,
            "model_servers_compose": model_servers_compose,
            "model_servers_endpoints": model_servers_endpoints,
            "model_servers_checks": model_servers_checks,
            "model_servers_knowledge_chunks": model_servers_knowledge_chunks,
            "model_servers_chunk_check": model_servers_chunk_check,
        }
