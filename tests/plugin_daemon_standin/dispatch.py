"""``POST /plugin/{tenant}/dispatch/...``: a request relayed to the plugin's process, its answers streamed back.

The daemon binds the body ``{"user_id", "conversation_id", "message_id", "app_id", "endpoint_id",
"context", "data": {...}}`` into Go request types and hands the plugin
``{"user_id", "type", "action"} + <the data as that Go type encodes it>``: fields the type lacks are
dropped, and absent fields get Go's zero value -- e.g. a rerank's ``top_n: null`` reaches the plugin
as ``0`` and ``score_threshold: null`` as ``0``. ``ROUTES`` holds those types (daemon 0.6.3,
pkg/entities/requests/model.go) for the model routes; the other plugin kinds (tool, agent strategy,
datasource, trigger, oauth, dynamic select) are relayed with their data as sent.

Answers are ``text/event-stream`` lines ``data: {"code": 0, "message": "success", "data": <chunk>}``
written as the plugin's chunks arrive; a plugin error ends the stream with
``{"code": -500, "message": "{\\"message\\": <plugin error JSON>, \\"error_type\\": \\"PluginInvokeError\\", ...}"}``.
"""

import queue
import time

from . import errors

STR, BOOL, FLOAT, INT, ANY = "str", "bool", "float", "int", "any"
_ZERO = {STR: "", BOOL: False, FLOAT: 0, INT: 0, ANY: None}

_CREDS = (("provider", STR), ("model", STR), ("credentials", ANY), ("credential_type", STR + "?"))
_REQUIRED = ("provider", "model", "model_type")

# route -> (access type, action, fields (name, kind; "?" = omitempty), required fields, model_type it must be)
ROUTES = {
    "llm/invoke": ("model", "invoke_llm", _CREDS + (
        ("model_parameters", ANY), ("prompt_messages", ANY), ("tools", ANY), ("stop", ANY), ("json_schema", ANY),
        ("stream", BOOL), ("model_type", STR)), _REQUIRED, "llm"),
    "llm/num_tokens": ("model", "get_llm_num_tokens", _CREDS + (
        ("model_type", STR), ("prompt_messages", ANY), ("tools", ANY)), _REQUIRED, "llm"),
    "text_embedding/invoke": ("model", "invoke_text_embedding", _CREDS + (
        ("texts", ANY), ("input_type", STR), ("model_type", STR)), _REQUIRED + ("texts", "input_type"),
        "text-embedding"),
    "multimodal_embedding/invoke": ("model", "invoke_multimodal_embedding", _CREDS + (
        ("documents", ANY), ("input_type", STR), ("model_type", STR)), _REQUIRED + ("documents", "input_type"), None),
    "text_embedding/num_tokens": ("model", "get_text_embedding_num_tokens", _CREDS + (
        ("model_type", STR), ("texts", ANY)), _REQUIRED + ("texts",), "text-embedding"),
    "rerank/invoke": ("model", "invoke_rerank", _CREDS + (
        ("query", STR), ("docs", ANY), ("score_threshold", FLOAT), ("top_n", INT), ("model_type", STR)),
        _REQUIRED + ("query", "docs"), "rerank"),
    "multimodal_rerank/invoke": ("model", "invoke_multimodal_rerank", _CREDS + (
        ("query", ANY), ("docs", ANY), ("score_threshold", FLOAT), ("top_n", INT), ("model_type", STR)),
        _REQUIRED + ("query", "docs"), None),
    "tts/invoke": ("model", "invoke_tts", _CREDS + (
        ("content_text", STR), ("voice", STR), ("tenant_id", STR), ("model_type", STR)),
        _REQUIRED + ("content_text", "voice", "tenant_id"), "tts"),
    "tts/model/voices": ("model", "get_tts_model_voices", _CREDS + (
        ("model_type", STR), ("language", STR)), _REQUIRED, "tts"),
    "speech2text/invoke": ("model", "invoke_speech2text", _CREDS + (
        ("file", STR), ("model_type", STR)), _REQUIRED + ("file",), "speech2text"),
    "moderation/invoke": ("model", "invoke_moderation", _CREDS + (
        ("text", STR), ("model_type", STR)), _REQUIRED + ("text",), "moderation"),
    "model/validate_provider_credentials": ("model", "validate_provider_credentials", (
        ("credentials", ANY), ("credential_type", STR + "?"), ("provider", STR)), ("provider",), None),
    "model/validate_model_credentials": ("model", "validate_model_credentials", _CREDS + (
        ("model_type", STR),), _REQUIRED, None),
    "model/schema": ("model", "get_ai_model_schemas", _CREDS + (("model_type", STR),), _REQUIRED, None),
    # relayed as sent (no model types in the stand-in's scope)
    "tool/invoke": ("tool", "invoke_tool", None, (), None),
    "tool/validate_credentials": ("tool", "validate_tool_credentials", None, (), None),
    "tool/get_runtime_parameters": ("tool", "get_tool_runtime_parameters", None, (), None),
    "agent_strategy/invoke": ("agent_strategy", "invoke_agent_strategy", None, (), None),
    "oauth/get_authorization_url": ("oauth", "get_authorization_url", None, (), None),
    "oauth/get_credentials": ("oauth", "get_credentials", None, (), None),
    "oauth/refresh_credentials": ("oauth", "refresh_credentials", None, (), None),
    "dynamic_select/fetch_parameter_options": ("dynamic_parameter", "fetch_parameter_options", None, (), None),
    "datasource/validate_credentials": ("datasource", "validate_datasource_credentials", None, (), None),
    "datasource/get_website_crawl": ("datasource", "invoke_website_datasource_get_crawl", None, (), None),
    "datasource/get_online_document_pages": (
        "datasource", "invoke_online_document_datasource_get_pages", None, (), None),
    "datasource/get_online_document_page_content": (
        "datasource", "invoke_online_document_datasource_get_page_content", None, (), None),
    "datasource/online_drive_browse_files": ("datasource", "invoke_online_drive_browse_files", None, (), None),
    "datasource/online_drive_download_file": ("datasource", "invoke_online_drive_download_file", None, (), None),
    "trigger/invoke_event": ("trigger", "invoke_trigger_event", None, (), None),
    "trigger/validate_credentials": ("trigger", "validate_trigger_credentials", None, (), None),
    "trigger/dispatch_event": ("trigger", "dispatch_trigger_event", None, (), None),
    "trigger/subscribe": ("trigger", "subscribe_trigger", None, (), None),
    "trigger/unsubscribe": ("trigger", "unsubscribe_trigger", None, (), None),
    "trigger/refresh": ("trigger", "refresh_trigger", None, (), None),
}
MODEL_TYPES = ("llm", "text-embedding", "rerank", "speech2text", "moderation", "tts")


def _coerce(value, kind):
    if value is None:
        return _ZERO[kind]
    if kind == STR:
        if not isinstance(value, str):
            raise TypeError("json: cannot unmarshal %s into Go value of type string" % type(value).__name__)
    elif kind == BOOL:
        if not isinstance(value, bool):
            raise TypeError("json: cannot unmarshal %s into Go value of type bool" % type(value).__name__)
    elif kind in (FLOAT, INT):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("json: cannot unmarshal %s into Go value of type %s" % (
                type(value).__name__, "float64" if kind == FLOAT else "int"))
        if kind == INT and isinstance(value, float):
            if value != int(value):
                raise TypeError("json: cannot unmarshal number %s into Go value of type int" % value)
            value = int(value)
    return value


def shape_request(route, body):
    """The map the plugin receives for ``route``; errors.DaemonError (HTTP 400) when the body does not bind."""
    access_type, action, fields, required, model_type = ROUTES[route]
    if not isinstance(body, dict):
        raise errors.bad_request("invalid request body", http_status=400)
    data = body.get("data")
    if not isinstance(data, dict):
        raise errors.bad_request("Key: 'Data' Error:Field validation for 'Data' failed on the 'required' tag",
                                 http_status=400)
    user_id = body.get("user_id")
    out = {"user_id": user_id if isinstance(user_id, str) else "", "type": access_type, "action": action}
    if fields is None:
        out.update(data)
        return out
    shaped = {}
    try:
        for name, kind in fields:
            omitempty = kind.endswith("?")
            kind = kind.rstrip("?")
            value = _coerce(data.get(name), kind)
            if omitempty and value in ("", None, False, 0):
                continue
            shaped[name] = value
    except TypeError as exc:
        raise errors.bad_request(str(exc), http_status=400)
    for name in required:
        if shaped.get(name) in ("", None):
            raise errors.bad_request("Key: 'Data.%s' Error:Field validation for '%s' failed on the 'required' tag"
                                     % (name, name), http_status=400)
    if "model_type" in shaped and shaped["model_type"] not in MODEL_TYPES:
        raise errors.bad_request("Key: 'Data.model_type' Error:Field validation for 'model_type' failed on the "
                                 "'model_type' tag", http_status=400)
    if model_type and shaped.get("model_type") != model_type:
        raise errors.bad_request("Key: 'Data.model_type' Error:Field validation for 'model_type' failed on the "
                                 "'eq' tag", http_status=400)
    out.update(shaped)
    return out


def relay(runtime, route, plugin_request, body, emit, disconnected, timeout):
    """Send one request to ``runtime`` and ``emit(dict)`` each answer line until the session ends.

    Returns "success", "error", "timeout" or "client_disconnect".
    """
    session = runtime.open_session()
    try:
        runtime.write_request(session, plugin_request, conversation_id=body.get("conversation_id"),
                              message_id=body.get("message_id"), app_id=body.get("app_id"),
                              endpoint_id=body.get("endpoint_id"), context=body.get("context"))
        deadline = time.time() + timeout
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                emit(errors.internal("killed by timeout").response())
                return "timeout"
            try:
                kind, data = session.get(min(1.0, remaining))
            except queue.Empty:
                if disconnected():
                    return "client_disconnect"
                continue
            if kind == "stream":
                if route == "llm/invoke" and isinstance(data, dict):
                    data = dict(data, prompt_messages=[])  # the daemon's LLMResultChunk always carries it
                if not emit(errors.success(data)):
                    return "client_disconnect"
            elif kind == "end":
                return "success"
            elif kind == "error":
                emit(errors.invoke_error(errors.plugin_error_text(data)).response())
                return "error"
            elif kind == "invoke":
                emit(errors.invoke_error(errors.plugin_error_text({
                    "error_type": "invoke_dify_error",
                    "message": "invoke dify failed: backwards invocation (a plugin calling Dify) is not played by "
                               "the plugin daemon stand-in"})).response())
                return "error"
            elif kind == "dead":
                emit(errors.internal(data).response())
                return "error"
            else:
                emit(errors.invoke_error(errors.plugin_error_text({
                    "error_type": "unknown_stream_message_type",
                    "message": "unknown stream message type: %s" % kind})).response())
                return "error"
    finally:
        session.close()
