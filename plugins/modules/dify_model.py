#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: dify_model
short_description: Register a model (llm, text-embedding, rerank, ...) with a Dify model provider
description:
  - Reads the model's credentials (C(GET /console/api/workspaces/current/model-providers/{provider}/models/credentials)),
    creates them (C(POST), Dify validates them by calling the model server), updates them when they differ (C(PUT)),
    or removes the model (C(DELETE .../models)).
  - Secret fields come back obfuscated from Dify; they are compared through the same obfuscation. Fields the
    provider's schema declares as C(secret-input) are treated as secrets even when passed in O(credentials).
  - Before any write the credentials are checked against the provider's schema for the model type
    (C(GET /console/api/workspaces/current/model-providers)); Dify silently drops fields its schema lacks and
    refuses to save without its required fields (even those with a default), so both fail here, naming them.
extends_documentation_fragment: [dify_gpu.dify.dify, dify_gpu.dify.dify.attributes]
attributes:
  check_mode:
    support: full
    details:
      - When the provider's plugin is not installed yet (an earlier task of the same run installs it), check mode
        reports C(changed) without a diff.
  diff_mode:
    support: full
options:
  provider:
    description: Full provider id, e.g. V(langgenius/openai_api_compatible/openai_api_compatible).
    type: str
    required: true
  model:
    description: Model name as registered in Dify.
    type: str
    required: true
  model_type:
    description: Model type.
    type: str
    required: true
    choices: [llm, text-embedding, rerank, speech2text, tts, moderation]
  credentials:
    description:
      - Non-secret credential fields, e.g. C(endpoint_url), C(endpoint_model_name), C(context_size), C(mode), C(max_chunks).
      - Values are sent as strings (Dify's credential forms hold strings) and compared as strings; fields Dify fills in with schema defaults are not compared.
    type: dict
    default: {}
  secret_credentials:
    description: Secret credential fields (e.g. C(api_key)), merged into O(credentials); never logged.
    type: dict
    default: {}
  credential_name:
    description: Name of the credential in Dify (at most 30 characters).
    type: str
  state:
    description: Whether the model should be registered.
    type: str
    choices: [present, absent]
    default: present
notes:
  - The plugin of the provider must be installed (M(dify_gpu.dify.dify_plugin)).
author: dify-gpu-ansible contributors (@dify-gpu-ansible)
"""

EXAMPLES = r"""
- name: Register the local LLM
  dify_model:
    url: http://127.0.0.1:8080
    admin_email: admin@example.com
    admin_password: "{{ dify_admin_password }}"
    provider: langgenius/openai_api_compatible/openai_api_compatible
    model: qwen2.5-7b
    model_type: llm
    credentials:
      endpoint_url: http://host.docker.internal:17200/v1
      endpoint_model_name: qwen2.5-7b
      mode: chat
      context_size: "8192"
"""

RETURN = r"""
credential_id:
  description: Id of the model's current credential (empty when absent).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_client import (
    CONSOLE, MODEL_TYPES, DifyError, dify_argument_spec, dify_module_kwargs, provider_path, secret_matches,
)
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_resource import DifyResource, run_resource


def masked(creds, secret_keys):
    return dict((k, "********" if k in secret_keys else v) for k, v in creds.items())


def differs(current, desired, secret_keys):
    changed = []
    for key, value in desired.items():
        have = current.get(key)
        if key in secret_keys:
            if not secret_matches(have, value):
                changed.append(key)
        elif have is None or str(have) != str(value):
            changed.append(key)
    # Fields Dify holds but we do not set (schema defaults it fills in) are left alone.
    return sorted(set(changed))


def as_form_value(value):
    """Dify's credential forms hold strings: 4096 -> "4096", True -> "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


def credential_schema(client, provider, model_type):
    """The provider's model credential fields for this model type, as Dify declares them
    (``GET .../model-providers``: ``model_credential_schema.credential_form_schemas``, filtered by
    ``show_on: __model_type``); None when the provider is not installed."""
    data = client.request("GET", CONSOLE + "/workspaces/current/model-providers", query={"model_type": model_type})
    for entry in data.get("data") or []:
        if entry.get("provider") != provider:
            continue
        forms = ((entry.get("model_credential_schema") or {}).get("credential_form_schemas")) or []
        return [f for f in forms if applies(f, model_type)]
    return None


def applies(form, model_type):
    for cond in form.get("show_on") or []:
        if cond.get("variable") == "__model_type" and cond.get("value") != model_type:
            return False
    return True


def check_against_schema(p, fields, desired):
    """Dify keeps only the fields its schema declares and refuses to save without the required ones:
    say so before any write instead of a change that never converges or a late 400."""
    known = set(f["variable"] for f in fields)
    unknown = sorted(set(desired) - known)
    missing = sorted(f["variable"] for f in fields if f.get("required") and f["variable"] not in desired)
    problems = []
    if unknown:
        problems.append("%s not in the schema (Dify would drop them)" % ", ".join(unknown))
    if missing:
        problems.append("%s required" % ", ".join(missing))
    if problems:
        raise DifyError("credentials for %s model %s of %s: %s; the schema has %s" % (
            p["model_type"], p["model"], p["provider"], " and ".join(problems), ", ".join(sorted(known))))


class Model(DifyResource):
    """The model's credential. find: (state=present) the provider's credential schema, checked against
    the options, then the current credential (GET .../models/credentials); compare: field by field,
    secrets through Dify's obfuscation; create: POST; update: PUT; delete: DELETE .../models."""

    def find(self):
        p = self.params
        p["credentials"] = dict((k, as_form_value(v)) for k, v in p["credentials"].items() if v is not None)
        p["secret_credentials"] = dict((k, as_form_value(v)) for k, v in p["secret_credentials"].items()
                                       if v is not None)
        self.path = CONSOLE + "/workspaces/current/model-providers/%s/models" % provider_path(p["provider"])
        self.ident = {"model": p["model"], "model_type": p["model_type"]}
        self.secret_keys = set(p["secret_credentials"])
        if p["state"] == "present":
            fields = credential_schema(self.client, p["provider"], p["model_type"])
            if fields is None:
                if self.check_mode:  # its plugin would be installed by an earlier task of the same run
                    self.done(changed=True, credential_id="", msg="provider %s is not installed yet" % p["provider"])
                raise DifyError("provider %s is not installed in this workspace (install its plugin with "
                                "dify_plugin first)" % p["provider"])
            check_against_schema(p, fields, dict(p["credentials"], **p["secret_credentials"]))
            self.secret_keys |= set(f["variable"] for f in fields if f.get("type") == "secret-input")
        current = self.client.request("GET", self.path + "/credentials", query=self.ident)
        self.result["credential_id"] = current.get("current_credential_id") or ""
        return current if current.get("current_credential_id") else None

    def wanted(self):
        return dict(self.params["credentials"], **self.params["secret_credentials"])

    def view(self, found):
        current = found
        return current.get("credentials") or {}

    def compare(self, have, want):
        changes = differs(have, want, self.secret_keys)
        name = self.params["credential_name"]
        if name and self.found.get("current_credential_name") != name:
            changes.append("credential_name")
        if changes:
            self.result["changed_fields"] = changes
        return changes

    def diff_create(self, want):
        return (dict(self.ident, registered=False),
                dict(self.ident, registered=True, credentials=masked(want, self.secret_keys)))

    def diff_update(self, have, want, changes):
        return (dict(self.ident, credentials=masked(have, self.secret_keys)),
                dict(self.ident, credentials=masked(want, self.secret_keys)))

    def diff_delete(self, found):
        current = found
        return dict(self.ident, registered=True), dict(self.ident, registered=False)

    def body(self, want):
        body = dict(self.ident, credentials=want)
        if self.params["credential_name"]:
            body["name"] = self.params["credential_name"]
        return body

    def create(self, want):
        client, path, ident = self.client, self.path, self.ident
        client.request("POST", path + "/credentials", body=self.body(want), landed=lambda: (
            client.request("GET", path + "/credentials", query=ident) or {}).get("current_credential_id"))
        return client.request("GET", path + "/credentials", query=ident)

    def update(self, found, want, changes):
        current = found
        body = self.body(want)
        body["credential_id"] = current["current_credential_id"]
        self.client.request("PUT", self.path + "/credentials", body=body)
        return None

    def delete(self, found):
        current = found
        self.client.request("DELETE", self.path, body=self.ident)

    def returns(self, resource):
        current = resource
        return {"credential_id": (current or {}).get("current_credential_id") or ""}


def main():
    spec = dify_argument_spec()
    spec.update(
        provider=dict(type="str", required=True),
        model=dict(type="str", required=True),
        model_type=dict(type="str", required=True, choices=MODEL_TYPES),
        credentials=dict(type="dict", default={}),
        secret_credentials=dict(type="dict", default={}, no_log=True),
        credential_name=dict(type="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    )
    module = AnsibleModule(argument_spec=spec, **dify_module_kwargs())
    p = module.params
    if p["provider"].count("/") != 2:
        module.fail_json(msg="provider: expected author/plugin/provider, e.g. "
                             "langgenius/openai_api_compatible/openai_api_compatible, got %r" % p["provider"])
    if p["state"] == "present" and not (p["credentials"] or p["secret_credentials"]):
        module.fail_json(msg="credentials: required with state=present")
    if p["credential_name"] and len(p["credential_name"]) > 30:
        module.fail_json(msg="credential_name: at most 30 characters")
    overlap = set(p["credentials"]) & set(p["secret_credentials"])
    if overlap:
        module.fail_json(msg="credentials and secret_credentials both set %s" % ", ".join(sorted(overlap)))
    run_resource(module, Model)


if __name__ == "__main__":
    main()
