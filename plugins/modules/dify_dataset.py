#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: dify_dataset
short_description: Manage a Dify knowledge base (dataset) with its embedding model and retrieval settings
description:
  - Uses Dify's service API with a workspace dataset key (C(dataset-...)).
  - Finds the dataset by exact name (C(GET /v1/datasets?keyword=)), creates it (C(POST /v1/datasets)),
    updates embedding model, retrieval settings and description when they differ (C(PATCH /v1/datasets/{id})),
    or deletes it (C(DELETE /v1/datasets/{id})).
  - Without O(dataset_api_key) the module logs in to the console and uses the workspace's first dataset key,
    creating one when there is none.
extends_documentation_fragment: [dify_gpu.dify.dify, dify_gpu.dify.dify.attributes]
attributes:
  check_mode:
    support: full
    details:
      - Without O(dataset_api_key) and without a dataset key in the workspace, check mode mints none and
        reports the dataset as to be created.
  diff_mode:
    support: full
options:
  name:
    description: Dataset name, unique in the workspace, 1 to 40 characters.
    type: str
    required: true
  description:
    description: Description of the dataset.
    type: str
    default: ''
  dataset_api_key:
    description: A workspace dataset API key (C(dataset-...)); see M(dify_gpu.dify.dify_api_key) with O(dify_gpu.dify.dify_api_key#module:kind=dataset).
    type: str
  indexing_technique:
    description: C(high_quality) (embeddings) or C(economy) (keywords only).
    type: str
    choices: [high_quality, economy]
    default: high_quality
  embedding_model:
    description: Embedding model name (required with C(high_quality)).
    type: str
  embedding_model_provider:
    description: Full provider id of the embedding model.
    type: str
  search_method:
    description: Retrieval method.
    type: str
    choices: [hybrid_search, semantic_search, full_text_search]
    default: hybrid_search
  top_k:
    description: Chunks retrieved per query.
    type: int
    default: 5
  reranking_model:
    description: Rerank model name; enables reranking.
    type: str
  reranking_provider:
    description: Full provider id of the rerank model.
    type: str
  score_threshold:
    description: Minimum score of a retrieved chunk; unset disables the threshold.
    type: float
  state:
    description: Whether the dataset should exist.
    type: str
    choices: [present, absent]
    default: present
author: dify-gpu-ansible contributors (@dify-gpu-ansible)
"""

EXAMPLES = r"""
- name: Knowledge base with hybrid search and reranking
  dify_dataset:
    url: http://127.0.0.1:8080
    admin_email: admin@example.com
    admin_password: "{{ dify_admin_password }}"
    dataset_api_key: "{{ dataset_key }}"
    name: Handbook
    embedding_model: bge-m3
    embedding_model_provider: langgenius/openai_api_compatible/openai_api_compatible
    reranking_model: bge-reranker
    reranking_provider: langgenius/openai_api_compatible/openai_api_compatible
"""

RETURN = r"""
dataset:
  description: The dataset as Dify returns it (empty when absent or in check mode before creation).
  returned: always
  type: dict
id:
  description: Dataset id (empty when it does not exist).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_client import CONSOLE, dify_argument_spec, dify_module_kwargs
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_resource import DifyResource, iter_pages, run_resource

NAME_MAX = 40


def dataset_key(module, client):
    """The dataset key to use: given, or the workspace's first, or a new one (None in check mode)."""
    if module.params["dataset_api_key"]:
        return module.params["dataset_api_key"], False
    keys = client.request("GET", CONSOLE + "/datasets/api-keys").get("data") or []
    if keys:
        return keys[0]["token"], False
    if module.check_mode:
        return None, False
    return client.request("POST", CONSOLE + "/datasets/api-keys", landed=lambda: _first_key(client))["token"], True


def _first_key(client):
    keys = client.request("GET", CONSOLE + "/datasets/api-keys").get("data") or []
    return keys[0] if keys else None


def find(client, key, name):
    def fetch(page):
        data = client.service_request("GET", "/v1/datasets", key,
                                      query={"keyword": name, "page": page, "limit": 100})
        return data.get("data") or [], bool(data.get("has_more"))

    return next((item for item in iter_pages(fetch) if item.get("name") == name), None)


def wanted_retrieval(p):
    rerank = bool(p["reranking_model"])
    out = {
        "search_method": p["search_method"],
        "reranking_enable": rerank,
        "top_k": p["top_k"],
        "score_threshold_enabled": p["score_threshold"] is not None,
        "score_threshold": p["score_threshold"],
    }
    if rerank:
        out["reranking_mode"] = "reranking_model"
        out["reranking_model"] = {"reranking_provider_name": p["reranking_provider"],
                                  "reranking_model_name": p["reranking_model"]}
    return out


def summary(ds):
    """The managed fields of a dataset as Dify returns it."""
    rm = ds.get("retrieval_model_dict") or ds.get("retrieval_model") or {}
    rr = rm.get("reranking_model") or {}
    return {
        "name": ds.get("name"),
        "description": ds.get("description") or "",
        "indexing_technique": ds.get("indexing_technique"),
        "embedding_model": ds.get("embedding_model"),
        "embedding_model_provider": ds.get("embedding_model_provider"),
        "search_method": rm.get("search_method"),
        "top_k": rm.get("top_k"),
        "reranking_model": rr.get("reranking_model_name") if rm.get("reranking_enable") else None,
        "reranking_provider": rr.get("reranking_provider_name") if rm.get("reranking_enable") else None,
        "score_threshold": rm.get("score_threshold") if rm.get("score_threshold_enabled") else None,
    }


def wanted_summary(p):
    high = p["indexing_technique"] == "high_quality"
    return {
        "name": p["name"],
        "description": p["description"] or "",
        "indexing_technique": p["indexing_technique"],
        "embedding_model": p["embedding_model"] if high else None,
        "embedding_model_provider": p["embedding_model_provider"] if high else None,
        "search_method": p["search_method"],
        "top_k": p["top_k"],
        "reranking_model": p["reranking_model"],
        "reranking_provider": p["reranking_provider"] if p["reranking_model"] else None,
        "score_threshold": p["score_threshold"],
    }


def payload(p):
    body = {"name": p["name"], "description": p["description"] or "",
            "indexing_technique": p["indexing_technique"], "retrieval_model": wanted_retrieval(p)}
    if p["indexing_technique"] == "high_quality":
        body["embedding_model"] = p["embedding_model"]
        body["embedding_model_provider"] = p["embedding_model_provider"]
    return body


class Dataset(DifyResource):
    """Through the service API with a dataset key. find: the dataset named exactly ``name``
    (after finding or minting the key); compare: summary() against the options; create: POST;
    update: PATCH; delete: DELETE."""

    def find(self):
        p = self.params
        self.key, key_created = dataset_key(self.module, self.client)
        self.result.update(dataset={}, id="", dataset_api_key_created=key_created)
        if key_created:
            self.change()  # a key was written on the way
        return find(self.client, self.key, p["name"]) if self.key else None

    def wanted(self):
        return wanted_summary(self.params)

    def view(self, found):
        return summary(found)

    def create(self, want):
        p = self.params
        return self.client.service_request("POST", "/v1/datasets", self.key, body=payload(p),
                                           landed=lambda: find(self.client, self.key, p["name"]))

    def update(self, found, want, changes):
        return self.client.service_request("PATCH", "/v1/datasets/%s" % found["id"], self.key,
                                           body=payload(self.params))

    def delete(self, found):
        self.client.service_request("DELETE", "/v1/datasets/%s" % found["id"], self.key)

    def returns(self, resource):
        dataset = resource
        if not dataset or self.params["state"] == "absent":
            return {}
        return {"dataset": dataset, "id": (self.found or dataset).get("id", "")}


def main():
    spec = dify_argument_spec()
    spec.update(
        name=dict(type="str", required=True),
        description=dict(type="str", default=""),
        dataset_api_key=dict(type="str", no_log=True),
        indexing_technique=dict(type="str", choices=["high_quality", "economy"], default="high_quality"),
        embedding_model=dict(type="str"),
        embedding_model_provider=dict(type="str"),
        search_method=dict(type="str", choices=["hybrid_search", "semantic_search", "full_text_search"],
                           default="hybrid_search"),
        top_k=dict(type="int", default=5),
        reranking_model=dict(type="str"),
        reranking_provider=dict(type="str"),
        score_threshold=dict(type="float"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    )
    kwargs = dify_module_kwargs()
    kwargs["required_together"] = kwargs["required_together"] + [("reranking_model", "reranking_provider"),
                                                                 ("embedding_model", "embedding_model_provider")]
    module = AnsibleModule(argument_spec=spec, **kwargs)
    p = module.params
    if not 1 <= len(p["name"]) <= NAME_MAX:
        module.fail_json(msg="name: Dify dataset names are 1 to %d characters, %r has %d"
                             % (NAME_MAX, p["name"], len(p["name"])))
    if p["state"] == "present" and p["indexing_technique"] == "high_quality" and not p["embedding_model"]:
        module.fail_json(msg="embedding_model: required with indexing_technique=high_quality")
    if not 1 <= p["top_k"] <= 100:
        module.fail_json(msg="top_k: must be between 1 and 100")
    if p["score_threshold"] is not None and not 0 <= p["score_threshold"] <= 1:
        module.fail_json(msg="score_threshold: must be between 0 and 1")
    run_resource(module, Dataset)


if __name__ == "__main__":
    main()
