"""Error answers shaped as the plugin daemon shapes them (internal/types/exception of daemon 0.6.3).

An error is ``{"code": <negative>, "message": <JSON string>, "data": null}`` where the message is
``{"message": ..., "error_type": ..., "args": null}``. dify-api reads ``error_type`` (see
api/core/plugin/impl/base.py ``_handle_plugin_daemon_error``): PluginInvokeError carries the
plugin's own error (``{"args", "error_type", "message"}``, e.g. CredentialsValidateFailedError) as
its message, so that one is nested twice.
"""

import json


def _dumps(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class DaemonError(Exception):
    def __init__(self, message, error_type, code, http_status=200):
        Exception.__init__(self, message)
        self.message = message
        self.error_type = error_type
        self.code = code
        self.http_status = http_status

    def response(self):
        return {"code": self.code,
                "message": _dumps({"message": self.message, "error_type": self.error_type, "args": None}),
                "data": None}


def success(data):
    return {"code": 0, "message": "success", "data": data}


def internal(message, http_status=200):
    return DaemonError(message, "PluginDaemonInternalServerError", -500, http_status)


def bad_request(message, http_status=200):
    return DaemonError(message, "PluginDaemonBadRequestError", -400, http_status)


def not_found(message, http_status=200):
    return DaemonError(message, "PluginDaemonNotFoundError", -404, http_status)


def unique_identifier(message, http_status=200):
    return DaemonError(message, "PluginUniqueIdentifierError", -400, http_status)


def plugin_not_found(http_status=200):
    return DaemonError("plugin not found", "PluginNotFoundError", -404, http_status)


def unauthorized():
    return DaemonError("unauthorized", "PluginDaemonUnauthorizedError", -401, 401)


def invoke_error(plugin_error):
    """PluginInvokeError wrapping the plugin's error (a JSON string with args, error_type, message)."""
    return DaemonError(plugin_error, "PluginInvokeError", -500)


def plugin_error_text(data):
    """The daemon's ErrorResponse.Error() of a plugin's session error: JSON, keys sorted as Go sorts a map."""
    data = data if isinstance(data, dict) else {"message": str(data), "error_type": "unknown"}
    return _dumps({"args": data.get("args"), "error_type": data.get("error_type", ""),
                   "message": data.get("message", "")})
