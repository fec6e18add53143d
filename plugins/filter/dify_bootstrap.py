"""Filters of the dify_bootstrap role: checks of the model endpoints before any HTTP call.

Pure functions (no I/O); unit tests: tests/unit/test_dify_bootstrap_filters.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = """
name: dify_bootstrap
short_description: checks of dify_bootstrap_model_endpoints against the provider plugins' schemas
description:
  - C(dify_endpoint_problems) lists, for each endpoint, the credential fields its provider's schema requires
    but the endpoint lacks, and the fields the schema does not know (Dify would silently drop them).
  - C(dify_bootstrap_legacy_credentials) turns the files an earlier version kept on the controller
    (admin_password, dataset_api_key) into the credentials file's mapping, to import them once.
  - C(dify_bootstrap_plan) resolves the plugins to install, the workspace default models and each
    knowledge base's and app's models and providers from the endpoints (no HTTP, no I/O).
"""

MODEL_TYPES = ("llm", "text-embedding", "rerank", "speech2text", "tts", "moderation")

# Credential fields of the provider plugins the project registers, per model type: (required, optional).
# From each plugin's provider/<name>.yaml (model_credential_schema) in langgenius/dify-official-plugins
# at 7af22831 (openai_api_compatible 0.0.63, huggingface_tei 0.1.10, ollama 0.1.x);
# tests/unit/test_dify_bootstrap_filters.py compares this table with those YAML files.
_OAC_LLM_OPTIONAL = (
    "display_name", "api_key", "endpoint_model_name", "mode", "max_tokens_to_sample", "agent_thought_support",
    "web_search_support", "compatibility_mode", "token_param_name", "user_identity_support",
    "stream_include_usage", "function_calling_type", "stream_function_calling", "vision_support",
    "video_support", "audio_support", "document_support", "structured_output_support", "stream_mode_auth",
    "stream_mode_delimiter")
PROVIDER_FIELDS = {
    "langgenius/openai_api_compatible/openai_api_compatible": {
        "llm": (("endpoint_url", "context_size"), _OAC_LLM_OPTIONAL),
        "text-embedding": (("endpoint_url", "context_size", "max_chunks"),
                           ("display_name", "api_key", "endpoint_model_name", "encoding_format", "vision_support",
                            "document_prefix", "query_prefix")),
        "rerank": (("endpoint_url", "context_size"),
                   ("display_name", "api_key", "endpoint_model_name", "vision_support")),
    },
    "langgenius/huggingface_tei/huggingface_tei": {
        "text-embedding": (("server_url", "invoke_timeout", "max_retries"), ("api_key",)),
        "rerank": (("server_url", "invoke_timeout", "max_retries"), ("api_key",)),
    },
}


def dify_endpoint_problems(endpoints):
    """['<model_type> <model> (<provider>): context_size required; foo unknown', ...] -- empty when all is well.

    Providers the table does not know are left to dify_model, which checks against the live schema.
    """
    problems = []
    for ep in endpoints or []:
        if not isinstance(ep, dict):
            problems.append("%r is not a mapping" % (ep,))
            continue
        label = "%s %s (%s)" % (ep.get("model_type"), ep.get("model"), ep.get("provider"))
        if ep.get("model_type") not in MODEL_TYPES:
            problems.append("%s: model_type must be one of %s" % (label, ", ".join(MODEL_TYPES)))
            continue
        fields = PROVIDER_FIELDS.get(ep.get("provider"))
        creds = ep.get("credentials") or {}
        if fields is None:
            continue
        if ep["model_type"] not in fields:
            problems.append("%s: the provider serves %s, not %s" % (label, ", ".join(sorted(fields)),
                                                                    ep["model_type"]))
            continue
        required, optional = fields[ep["model_type"]]
        missing = [f for f in required if creds.get(f) in (None, "")]
        unknown = sorted(set(creds) - set(required) - set(optional))
        found = []
        if missing:
            found.append("%s required" % ", ".join(missing))
        if unknown:
            found.append("%s not in the provider's schema (Dify would drop them)" % ", ".join(unknown))
        if found:
            problems.append("%s: %s" % (label, "; ".join(found)))
    return problems


DEFAULT_TYPES = ("llm", "text-embedding", "rerank")


def _provider_of(endpoints, model_type, model):
    for ep in endpoints:
        if ep.get("model_type") == model_type and ep.get("model") == model:
            return ep.get("provider") or ""
    return ""


def dify_bootstrap_plan(endpoints, plugins=None, default_models=None, datasets=None, apps=None):
    """What the bootstrap will configure, resolved from its inputs.

    - ``plugins``: the given plugin ids plus every endpoint's ``plugin_id``, each once, in order;
    - ``default_models``: per type (llm, text-embedding, rerank) the endpoint named in
      ``default_models`` (model_type -> model), else the first endpoint of that type;
    - ``datasets`` / ``apps``: each entry with its models filled in from the defaults (an empty
      ``reranking_model`` turns reranking off; an absent one takes the default) and the providers of
      those models looked up among the endpoints (empty when no endpoint serves that model).
    """
    endpoints = [e for e in endpoints or [] if isinstance(e, dict)]
    default_models = default_models or {}
    plugin_ids = []
    for pid in list(plugins or []) + [e.get("plugin_id") for e in endpoints]:
        if pid and pid not in plugin_ids:
            plugin_ids.append(pid)
    defaults = []
    for mtype in DEFAULT_TYPES:
        eps = [e for e in endpoints if e.get("model_type") == mtype]
        wanted = default_models.get(mtype)
        pick = [e for e in eps if e.get("model") == wanted] if wanted else eps
        if pick:
            defaults.append({"model_type": mtype, "provider": pick[0].get("provider"), "model": pick[0].get("model")})
    by_type = dict((d["model_type"], d["model"]) for d in defaults)

    def reranker(entry):
        return entry["reranking_model"] if "reranking_model" in entry else by_type.get("rerank", "")

    out_ds = []
    for ds in datasets or []:
        emb = ds.get("embedding_model") or by_type.get("text-embedding", "")
        rr = reranker(ds) or ""
        out_ds.append(dict(ds, embedding_model=emb, embedding_provider=_provider_of(endpoints, "text-embedding", emb),
                           reranking_model=rr, reranking_provider=_provider_of(endpoints, "rerank", rr)))
    out_apps = []
    for app in apps or []:
        llm = app.get("model") or by_type.get("llm", "")
        rr = reranker(app) or ""
        out_apps.append(dict(app, model=llm, provider=_provider_of(endpoints, "llm", llm), reranking_model=rr,
                             reranking_provider=_provider_of(endpoints, "rerank", rr),
                             datasets=app.get("datasets") or [], api_key=app.get("api_key", True)))
    return {"plugins": plugin_ids, "default_models": defaults, "datasets": out_ds, "apps": out_apps}


LEGACY_FILES = ("admin_password", "dataset_api_key")


def dify_bootstrap_legacy_credentials(names, contents):
    """{file name: content} of the old controller directory -> the credentials mapping (app keys are not
    imported: their file names lost the app names; the bootstrap re-reads the apps' existing keys)."""
    out = {}
    for name, content in zip(names or [], contents or []):
        if name in LEGACY_FILES and content and content.strip():
            out[name] = content.strip()
    return out


class FilterModule(object):
    def filters(self):
        return {"dify_endpoint_problems": dify_endpoint_problems,
                "dify_bootstrap_plan": dify_bootstrap_plan,
                "dify_bootstrap_legacy_credentials": dify_bootstrap_legacy_credentials}
