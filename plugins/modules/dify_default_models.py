#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: dify_default_models
short_description: Set the workspace's default models in Dify
description:
  - Reads C(GET /console/api/workspaces/current/default-model?model_type=...) for every listed type and sets
    the ones that differ with C(POST /console/api/workspaces/current/default-model).
extends_documentation_fragment: [dify_gpu.dify.dify, dify_gpu.dify.dify.attributes]
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  models:
    description: Default model per model type.
    type: list
    elements: dict
    required: true
    suboptions:
      model_type:
        description: Model type.
        type: str
        required: true
        choices: [llm, text-embedding, rerank, speech2text, tts, moderation]
      provider:
        description: Full provider id.
        type: str
        required: true
      model:
        description: Model name as registered in Dify.
        type: str
        required: true
author: dify-gpu-ansible contributors (@dify-gpu-ansible)
"""

EXAMPLES = r"""
- name: Default models
  dify_default_models:
    url: http://127.0.0.1:8080
    admin_email: admin@example.com
    admin_password: "{{ dify_admin_password }}"
    models:
      - {model_type: llm, provider: langgenius/openai_api_compatible/openai_api_compatible, model: qwen2.5-7b}
      - {model_type: text-embedding, provider: langgenius/openai_api_compatible/openai_api_compatible, model: bge-m3}
"""

RETURN = r"""
defaults:
  description: model_type -> C(provider/model) after the run.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_client import CONSOLE, MODEL_TYPES, dify_argument_spec, dify_module_kwargs
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_resource import DifyResource, run_resource

PATH = CONSOLE + "/workspaces/current/default-model"


class DefaultModels(DifyResource):
    """A workspace setting, always there: find reads the default of every listed type
    (model_type -> "provider/model", None when unset); update sets the ones that differ in one POST.
    Nothing is created or deleted."""

    def find(self):
        current = {}
        for item in self.params["models"]:
            data = self.client.request("GET", PATH, query={"model_type": item["model_type"]}).get("data") or {}
            provider = data.get("provider")
            if isinstance(provider, dict):
                provider = provider.get("provider")
            current[item["model_type"]] = "%s/%s" % (provider, data.get("model")) if data else None
        return current

    def wanted(self):
        return dict((m["model_type"], "%s/%s" % (m["provider"], m["model"])) for m in self.params["models"])

    def update(self, found, want, changes):
        current = found
        todo = [{"model_type": m["model_type"], "provider": m["provider"], "model": m["model"]}
                for m in self.params["models"] if m["model_type"] in changes]
        # setting defaults is idempotent: safe to repeat
        self.client.request("POST", PATH, body={"model_settings": todo}, safe=True)
        return want

    def returns(self, resource):
        defaults = resource
        return {"defaults": defaults}


def main():
    spec = dify_argument_spec()
    spec.update(models=dict(type="list", elements="dict", required=True, options=dict(
        model_type=dict(type="str", required=True, choices=MODEL_TYPES),
        provider=dict(type="str", required=True),
        model=dict(type="str", required=True),
    )))
    module = AnsibleModule(argument_spec=spec, **dify_module_kwargs())
    types = [m["model_type"] for m in module.params["models"]]
    if len(types) != len(set(types)):
        module.fail_json(msg="models: each model_type may appear once, got %s" % ", ".join(types))
    run_resource(module, DefaultModels)


if __name__ == "__main__":
    main()
