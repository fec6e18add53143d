#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: dify_app
short_description: Manage a Dify chat app with its model and knowledge bases
description:
  - Finds the app by exact name (C(GET /console/api/apps?name=)); Dify allows duplicate names, the module
    refuses to guess when there are several.
  - Creates it (C(POST /console/api/apps)), updates name-level fields (C(PUT /console/api/apps/{id})) and the model
    configuration -- model, prompt, opening statement, attached datasets and their retrieval settings --
    with C(POST /console/api/apps/{id}/model-config) when they differ; deletes it with state=absent.
  - Returns the web app URL (C(site.app_base_url)/chat/C(site.access_token)).
extends_documentation_fragment: [dify_gpu.dify.dify, dify_gpu.dify.dify.attributes]
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  name:
    description: App name.
    type: str
    required: true
  mode:
    description: App mode; only modes configured through model-config are managed.
    type: str
    choices: [chat, agent-chat, completion]
    default: chat
  description:
    description: App description (at most 400 characters).
    type: str
    default: ''
  icon:
    description: Emoji icon.
    type: str
    default: "\U0001F916"
  icon_background:
    description: Icon background colour.
    type: str
    default: '#FFEAD5'
  model_provider:
    description: Full provider id of the LLM.
    type: str
  model_name:
    description: LLM name as registered in Dify.
    type: str
  model_mode:
    description: LLM mode.
    type: str
    choices: [chat, completion]
    default: chat
  completion_params:
    description: Model parameters, e.g. C(temperature), C(max_tokens).
    type: dict
    default: {}
  pre_prompt:
    description: The app's instructions (system prompt).
    type: str
    default: ''
  opening_statement:
    description: First message shown to users.
    type: str
    default: ''
  dataset_ids:
    description: Ids of the knowledge bases the app retrieves from.
    type: list
    elements: str
    default: []
  top_k:
    description: Chunks retrieved across the datasets.
    type: int
    default: 4
  reranking_model:
    description: Rerank model for multi-dataset retrieval.
    type: str
  reranking_provider:
    description: Full provider id of the rerank model.
    type: str
  score_threshold:
    description: Minimum score of a retrieved chunk; unset disables the threshold.
    type: float
  web_base_url:
    description: Base of the web app URL instead of the C(app_base_url) Dify reports (its C(APP_WEB_URL)).
    type: str
  state:
    description: Whether the app should exist.
    type: str
    choices: [present, absent]
    default: present
author: dify-gpu-ansible contributors (@dify-gpu-ansible)
"""

EXAMPLES = r"""
- name: Assistant over the handbook
  dify_app:
    url: http://127.0.0.1:8080
    admin_email: admin@example.com
    admin_password: "{{ dify_admin_password }}"
    name: Assistant
    model_provider: langgenius/openai_api_compatible/openai_api_compatible
    model_name: qwen2.5-7b
    pre_prompt: Answer from the knowledge base.
    dataset_ids: ["{{ handbook.id }}"]
"""

RETURN = r"""
app_id:
  description: Id of the app (empty when absent or not yet created in check mode).
  returned: always
  type: str
web_url:
  description: URL of the app's web page.
  returned: when the app exists
  type: str
api_base_url:
  description: Base URL of the app's service API.
  returned: when the app exists
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_client import CONSOLE, DifyError, dify_argument_spec, dify_module_kwargs
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_resource import DifyResource, apps_named, changed_keys, run_resource

INFO = ("description", "icon", "icon_background")  # set with PUT /apps/{id}; the rest with model-config


def find(client, name):
    matches = apps_named(client, name)
    if len(matches) > 1:
        raise DifyError("%d apps are named %r; rename or delete the extra ones (ids: %s)" % (
            len(matches), name, ", ".join(a["id"] for a in matches)))
    return matches[0] if matches else None


def model_config(p):
    rerank = bool(p["reranking_model"])
    dataset_configs = {
        "retrieval_model": "multiple",
        "top_k": p["top_k"],
        "reranking_enable": rerank,
        "score_threshold_enabled": p["score_threshold"] is not None,
        "score_threshold": p["score_threshold"],
        "datasets": {"datasets": [{"dataset": {"enabled": True, "id": ds}} for ds in p["dataset_ids"]]},
    }
    if rerank:
        dataset_configs["reranking_mode"] = "reranking_model"
        dataset_configs["reranking_model"] = {"reranking_provider_name": p["reranking_provider"],
                                              "reranking_model_name": p["reranking_model"]}
    return {
        "pre_prompt": p["pre_prompt"],
        "prompt_type": "simple",
        "chat_prompt_config": {},
        "completion_prompt_config": {},
        "user_input_form": [],
        "dataset_query_variable": "query" if p["mode"] == "completion" else "",
        "opening_statement": p["opening_statement"],
        "suggested_questions": [],
        "suggested_questions_after_answer": {"enabled": False},
        "speech_to_text": {"enabled": False},
        "text_to_speech": {"enabled": False},
        "retriever_resource": {"enabled": True},
        "sensitive_word_avoidance": {"enabled": False},
        "more_like_this": {"enabled": False},
        "agent_mode": {"enabled": p["mode"] == "agent-chat", "tools": [], "strategy": "function_call"},
        "model": {"provider": p["model_provider"], "name": p["model_name"], "mode": p["model_mode"],
                  "completion_params": p["completion_params"]},
        "dataset_configs": dataset_configs,
        "file_upload": {"image": {"enabled": False, "number_limits": 3, "detail": "high",
                                  "transfer_methods": ["remote_url", "local_file"]}},
    }


def completion_params(params):
    """Dify adds "stop": [] to every model's completion_params; an empty stop list is no difference."""
    params = dict(params or {})
    if params.get("stop") in ([], None):
        params.pop("stop", None)
    return params


def config_summary(cfg):
    cfg = cfg or {}
    model = cfg.get("model") or {}
    dsc = cfg.get("dataset_configs") or {}
    rr = dsc.get("reranking_model") or {}
    ids = [(i.get("dataset") or {}).get("id") for i in (dsc.get("datasets") or {}).get("datasets") or []]
    return {
        "model_provider": model.get("provider"),
        "model_name": model.get("name"),
        "model_mode": model.get("mode"),
        "completion_params": completion_params(model.get("completion_params")),
        "pre_prompt": cfg.get("pre_prompt") or "",
        "opening_statement": cfg.get("opening_statement") or "",
        "dataset_ids": sorted(i for i in ids if i),
        "top_k": dsc.get("top_k"),
        "reranking_model": rr.get("reranking_model_name") if dsc.get("reranking_enable") else None,
        "reranking_provider": rr.get("reranking_provider_name") if dsc.get("reranking_enable") else None,
        "score_threshold": dsc.get("score_threshold") if dsc.get("score_threshold_enabled") else None,
    }


def wanted_summary(p):
    return config_summary(model_config(p))


def info_summary(app):
    return dict((k, app.get(k)) for k in INFO)


def urls(p, app):
    site = app.get("site") or {}
    base = (p["web_base_url"] or site.get("app_base_url") or p["url"]).rstrip("/")
    kind = "completion" if p["mode"] == "completion" else "chat"
    code = site.get("access_token") or site.get("code")
    return {"web_url": "%s/%s/%s" % (base, kind, code) if code else "",
            "api_base_url": app.get("api_base_url") or p["url"].rstrip("/") + "/v1"}


class App(DifyResource):
    """find: the app named exactly ``name``; details: GET /apps/{id}; compare: name-level fields
    (PUT /apps/{id}) and the model configuration (POST /apps/{id}/model-config), each sent only when
    one of its fields differs."""

    def find(self):
        return find(self.client, self.params["name"])

    def details(self, found):
        app = self.client.request("GET", CONSOLE + "/apps/%s" % found["id"])
        if app.get("mode") != self.params["mode"]:
            raise DifyError("app %r is a %s app, not %s; Dify cannot change an app's mode (delete it first)" % (
                self.params["name"], app.get("mode"), self.params["mode"]))
        return app

    def info(self):
        p = self.params
        return {"description": p["description"], "icon": p["icon"], "icon_background": p["icon_background"]}

    def wanted(self):
        return dict(self.info(), name=self.params["name"], **wanted_summary(self.params))

    def view(self, found):
        app = found
        return dict(info_summary(app), name=app.get("name"), **config_summary(app.get("model_config")))

    def compare(self, have, want):
        return [k for k in changed_keys(have, want) if k != "name"]  # the name is how it was found

    def diff_update(self, have, want, changes):
        keys = []  # the whole part (name-level fields, model configuration) that differs
        if any(k in INFO for k in changes):
            keys += INFO
        if any(k not in INFO for k in changes):
            keys += [k for k in want if k not in INFO and k != "name"]
        return dict((k, have.get(k)) for k in keys), dict((k, want[k]) for k in keys)

    def diff_delete(self, found):
        return {"name": self.params["name"]}, {}

    def create(self, want):
        p, client = self.params, self.client
        app = client.request("POST", CONSOLE + "/apps", body=dict(
            self.info(), name=p["name"], mode=p["mode"], icon_type="emoji"),
            landed=lambda: find(client, p["name"]))
        # setting the whole model config twice gives the same config: safe to repeat
        client.request("POST", CONSOLE + "/apps/%s/model-config" % app["id"], body=model_config(p), safe=True)
        return client.request("GET", CONSOLE + "/apps/%s" % app["id"])

    def update(self, found, want, changes):
        app = found
        p, client = self.params, self.client
        if any(k in INFO for k in changes):
            client.request("PUT", CONSOLE + "/apps/%s" % app["id"], body=dict(
                self.info(), name=p["name"], icon_type="emoji"))
        if any(k not in INFO for k in changes):
            client.request("POST", CONSOLE + "/apps/%s/model-config" % app["id"], body=model_config(p), safe=True)
        return None

    def delete(self, found):
        self.client.request("DELETE", CONSOLE + "/apps/%s" % found["id"])

    def returns(self, resource):
        app = resource
        if not app:
            return {"app_id": ""}
        if self.params["state"] == "absent":  # check mode: the app still exists
            return {"app_id": app["id"]}
        return dict(urls(self.params, app), app_id=app["id"])


def main():
    spec = dify_argument_spec()
    spec.update(
        name=dict(type="str", required=True),
        mode=dict(type="str", choices=["chat", "agent-chat", "completion"], default="chat"),
        description=dict(type="str", default=""),
        icon=dict(type="str", default="\U0001F916"),
        icon_background=dict(type="str", default="#FFEAD5"),
        model_provider=dict(type="str"),
        model_name=dict(type="str"),
        model_mode=dict(type="str", choices=["chat", "completion"], default="chat"),
        completion_params=dict(type="dict", default={}),
        pre_prompt=dict(type="str", default=""),
        opening_statement=dict(type="str", default=""),
        dataset_ids=dict(type="list", elements="str", default=[]),
        top_k=dict(type="int", default=4),
        reranking_model=dict(type="str"),
        reranking_provider=dict(type="str"),
        score_threshold=dict(type="float"),
        web_base_url=dict(type="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    )
    kwargs = dify_module_kwargs()
    kwargs["required_together"] = kwargs["required_together"] + [("reranking_model", "reranking_provider")]
    kwargs["required_if"] = [("state", "present", ("model_provider", "model_name"))]
    module = AnsibleModule(argument_spec=spec, **kwargs)
    p = module.params
    if not p["name"].strip():
        module.fail_json(msg="name: must not be empty")
    if len(p["description"] or "") > 400:
        module.fail_json(msg="description: at most 400 characters")
    if not 1 <= p["top_k"] <= 100:
        module.fail_json(msg="top_k: must be between 1 and 100")
    p["dataset_ids"] = sorted(set(p["dataset_ids"]))
    run_resource(module, App)


if __name__ == "__main__":
    main()
