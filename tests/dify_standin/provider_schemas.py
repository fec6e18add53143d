"""Model credential schemas of the provider plugins the stand-in plays (facts, not plugin code).

Read from each plugin's ``provider/<name>.yaml`` (``model_credential_schema.credential_form_schemas``)
in langgenius/dify-official-plugins at 7af22831 (openai_api_compatible 0.0.63, huggingface_tei
0.1.10, ollama). Each field: (variable, form type, required, model types it shows for; empty = all).
tests/unit/test_dify_standin.py checks this table against the plugin YAML when the upstream
archive is present, so it cannot drift from the real schemas.
"""

OPENAI_API_COMPATIBLE = [
    ("display_name", "text-input", False, ()),
    ("api_key", "secret-input", False, ()),
    ("language", "select", False, ("speech2text",)),
    ("initial_prompt", "text-input", False, ("speech2text",)),
    ("endpoint_url", "text-input", True, ()),
    ("endpoint_model_name", "text-input", False, ()),
    ("mode", "select", False, ("llm",)),
    ("context_size", "text-input", True, ("llm",)),
    ("max_chunks", "text-input", True, ("text-embedding",)),
    ("context_size", "text-input", True, ("text-embedding",)),
    ("encoding_format", "select", False, ("text-embedding",)),
    ("vision_support", "select", False, ("text-embedding",)),
    ("context_size", "text-input", True, ("rerank",)),
    ("vision_support", "select", False, ("rerank",)),
    ("max_tokens_to_sample", "text-input", False, ("llm",)),
    ("agent_thought_support", "select", False, ("llm",)),
    ("web_search_support", "select", False, ("llm",)),
    ("compatibility_mode", "select", False, ("llm",)),
    ("token_param_name", "select", False, ("llm",)),
    ("user_identity_support", "select", False, ("llm",)),
    ("stream_include_usage", "select", False, ("llm",)),
    ("function_calling_type", "select", False, ("llm",)),
    ("stream_function_calling", "select", False, ("llm",)),
    ("vision_support", "select", False, ("llm",)),
    ("video_support", "select", False, ("llm",)),
    ("audio_support", "select", False, ("llm",)),
    ("document_support", "select", False, ("llm",)),
    ("structured_output_support", "select", False, ("llm",)),
    ("stream_mode_auth", "select", False, ("llm",)),
    ("stream_mode_delimiter", "text-input", False, ("llm",)),
    ("voices", "text-input", False, ("tts",)),
    ("tts_api_format", "select", False, ("tts",)),
    ("tts_resource_id", "text-input", False, ("tts",)),
    ("tts_sample_rate", "select", False, ("tts",)),
    ("document_prefix", "text-input", False, ("text-embedding",)),
    ("query_prefix", "text-input", False, ("text-embedding",)),
]

HUGGINGFACE_TEI = [
    ("server_url", "text-input", True, ()),
    ("api_key", "secret-input", False, ()),
    ("invoke_timeout", "text-input", True, ()),
    ("max_retries", "text-input", True, ()),
]

# provider id -> (supported model types, fields)
SCHEMAS = {
    "langgenius/openai_api_compatible/openai_api_compatible": (
        ("llm", "rerank", "text-embedding", "speech2text", "tts"), OPENAI_API_COMPATIBLE),
    "langgenius/huggingface_tei/huggingface_tei": (("text-embedding", "rerank"), HUGGINGFACE_TEI),
}


def form_schemas(provider):
    """The fields as Dify's provider list returns them (credential_form_schemas)."""
    return [{"variable": v, "type": t, "required": r,
             "show_on": [{"variable": "__model_type", "value": m} for m in types]}
            for v, t, r, types in SCHEMAS[provider][1]]


def fields_for(provider, model_type):
    """(variable, type, required) of the fields that apply to one model type."""
    return [(v, t, r) for v, t, r, types in SCHEMAS.get(provider, ((), []))[1] if not types or model_type in types]
