#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: dify_api_key
short_description: Keep one API key of a Dify app, or a workspace dataset key, without minting a new one every run
description:
  - Lists the keys (C(GET /console/api/apps/{id}/api-keys) or C(GET /console/api/datasets/api-keys)).
  - With state=present it returns, in this order, the key given as O(token) when Dify still has it, else (with
    O(reuse_existing)) the oldest existing key, else a new key (C(POST)). So repeated runs do not create keys.
  - O(rotate=true) creates a new key and deletes every other key of the resource.
  - state=absent deletes O(token), or every key of the resource when O(token) is not given.
extends_documentation_fragment: [dify_gpu.dify.dify, dify_gpu.dify.dify.attributes]
attributes:
  check_mode:
    support: full
    details:
      - For an app not created yet (an earlier task of the same run creates it), check mode reports C(changed)
        for O(state=present), without a diff.
  diff_mode:
    support: full
options:
  kind:
    description: C(app) for an app's service API key, C(dataset) for the workspace's knowledge (dataset) API key.
    type: str
    choices: [app, dataset]
    default: app
  app_id:
    description: Id of the app (kind=app); or use O(app_name).
    type: str
  app_name:
    description: Exact name of the app (kind=app).
    type: str
  token:
    description: The key the caller stored from an earlier run.
    type: str
  reuse_existing:
    description: Return an existing key instead of creating one when O(token) is not known to Dify.
    type: bool
    default: true
  rotate:
    description: Create a new key and delete all others.
    type: bool
    default: false
  state:
    description: Whether the key should exist.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Register the result in a task with C(no_log) set, it holds the key.
  - When O(token) is returned unchanged, Ansible masks it in the result (it is a no_log input); use the value you passed.
author: dify-gpu-ansible contributors (@dify-gpu-ansible)
"""

EXAMPLES = r"""
- name: API key of the Assistant app
  dify_api_key:
    url: http://127.0.0.1:8080
    admin_email: admin@example.com
    admin_password: "{{ dify_admin_password }}"
    app_name: Assistant
    token: "{{ stored_key | default(omit) }}"
  register: app_key
  no_log: true
"""

RETURN = r"""
token:
  description: The key (masked by Ansible when it equals the O(token) input).
  returned: when state=present and not in check mode before creation
  type: str
token_source:
  description: C(input) (O(token) is valid), C(existing) (another existing key), C(created), or C(none).
  returned: always
  type: str
key_id:
  description: Id of the key in Dify.
  returned: when a key is returned
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_client import CONSOLE, DifyError, dify_argument_spec, dify_module_kwargs
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_resource import DifyResource, apps_named, run_resource

LIMIT = 10  # API keys per app, and dataset keys per workspace (Dify's limit)


def resource_path(module, client):
    p = module.params
    if p["kind"] == "dataset":
        return CONSOLE + "/datasets/api-keys", "datasets"
    app_id = p["app_id"]
    if not app_id:
        matches = apps_named(client, p["app_name"])
        if len(matches) != 1:
            if not matches and module.check_mode:
                return None, "app %r (not created yet)" % p["app_name"]
            raise DifyError("app_name: %d apps are named %r" % (len(matches), p["app_name"]))
        app_id = matches[0]["id"]
    return CONSOLE + "/apps/%s/api-keys" % app_id, "app %s" % app_id


def _new_key(client, path, known):
    """The key a lost POST created, if it did (a key that was not there before)."""
    fresh = [k for k in client.request("GET", path).get("data") or [] if k.get("id") not in known]
    return fresh[0] if fresh else None


class ApiKey(DifyResource):
    """The keys of an app (or the workspace's dataset keys). find: with state=present the key to return --
    O(token) when Dify still has it, else (reuse_existing) the oldest, none with rotate; with
    state=absent the keys to delete (O(token), or all). There is nothing to update: a key either is there
    or a new one is created (rotate: and the others deleted)."""

    def find(self):
        p = self.params
        self.path, self.label = resource_path(self.module, self.client)
        self.result["token_source"] = "none"
        if self.path is None:  # check mode, app missing
            self.done(changed=p["state"] == "present")
        self.keys = self.client.request("GET", self.path).get("data") or []
        mine = [k for k in self.keys if p["token"] and k.get("token") == p["token"]]
        if p["state"] == "absent":
            return (mine if p["token"] else self.keys) or None
        if p["rotate"]:
            return None
        if mine:
            self.result["token_source"] = "input"
            return mine[0]
        if p["reuse_existing"] and self.keys:
            self.result["token_source"] = "existing"
            return sorted(self.keys, key=lambda k: k.get("created_at") or 0)[0]
        return None

    def compare(self, have, want):
        return []

    def diff_create(self, want):
        n = len(self.keys)
        self.result["token_source"] = "created"
        return {"keys": n}, {"keys": 1 if self.params["rotate"] else n + 1}

    def diff_delete(self, found):
        doomed = found
        self.result["deleted"] = len(doomed)
        return {"keys": len(self.keys)}, {"keys": len(self.keys) - len(doomed)}

    def create(self, want):
        p, client, path, keys = self.params, self.client, self.path, self.keys
        if len(keys) >= LIMIT and not p["rotate"]:
            raise DifyError("%s already has 10 API keys (Dify's limit); delete some or use rotate=true" % self.label)
        if p["rotate"] and len(keys) >= LIMIT:  # make room first
            client.request("DELETE", "%s/%s" % (path, keys[0]["id"]))
            keys = keys[1:]
        known = set(k["id"] for k in keys)
        new = client.request("POST", path, landed=lambda: _new_key(client, path, known))
        if p["rotate"]:
            for key in keys:
                client.request("DELETE", "%s/%s" % (path, key["id"]))
            self.result["deleted"] = len(keys)
        return new

    def delete(self, found):
        doomed = found
        for key in doomed:
            self.client.request("DELETE", "%s/%s" % (self.path, key["id"]))

    def returns(self, resource):
        key = resource
        if not key or self.params["state"] == "absent":
            return {}
        return {"token": key["token"], "key_id": key["id"]}


def main():
    spec = dify_argument_spec()
    spec.update(
        kind=dict(type="str", choices=["app", "dataset"], default="app"),
        app_id=dict(type="str"),
        app_name=dict(type="str"),
        token=dict(type="str", no_log=True),
        reuse_existing=dict(type="bool", default=True),
        rotate=dict(type="bool", default=False),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    )
    kwargs = dify_module_kwargs()
    kwargs["mutually_exclusive"] = [("app_id", "app_name")]
    module = AnsibleModule(argument_spec=spec, **kwargs)
    p = module.params
    if p["kind"] == "app" and not (p["app_id"] or p["app_name"]):
        module.fail_json(msg="app_id or app_name: one is required with kind=app")
    run_resource(module, ApiKey)


if __name__ == "__main__":
    main()
