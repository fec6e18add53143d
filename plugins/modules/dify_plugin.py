#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: dify_plugin
short_description: Install or remove a Dify plugin (marketplace or offline .difypkg)
description:
  - Looks the plugin up in C(GET /console/api/workspaces/current/plugin/list).
  - Installs the marketplace's latest version (C(POST .../list/latest-versions) then C(.../install/marketplace)),
    or, with O(package_path), uploads a C(.difypkg) from the managed host (C(.../upload/pkg), C(.../install/pkg)).
  - Polls the install task (pending, running, success or failed) until it ends or O(wait_timeout) passes.
extends_documentation_fragment: [dify]
options:
  plugin_id:
    description: Plugin id, C(author/name), e.g. V(langgenius/openai_api_compatible).
    type: str
    required: true
  state:
    description: Whether the plugin should be installed.
    type: str
    choices: [present, absent]
    default: present
  version:
    description:
      - Wanted version. An installed plugin with another version is reinstalled.
      - From the marketplace only its latest version can be installed; use O(package_path) to pin.
    type: str
  package_path:
    description: Path of a C(.difypkg) on the managed host, for hosts without the marketplace.
    type: path
  wait_timeout:
    description: Seconds to wait for the install task.
    type: int
    default: 600
  poll_interval:
    description: Seconds between two polls of the install task.
    type: float
    default: 2.0
notes:
  - Check mode and diff are supported.
author: Dify deployment project
"""

EXAMPLES = r"""
- name: OpenAI-compatible provider plugin
  dify_plugin:
    url: http://127.0.0.1:8080
    admin_email: admin@example.com
    admin_password: "{{ dify_admin_password }}"
    plugin_id: langgenius/openai_api_compatible
"""

RETURN = r"""
plugin:
  description: The installed plugin as Dify lists it (empty when absent).
  returned: always
  type: dict
task_id:
  description: Id of the install task (empty when nothing was installed).
  returned: always
  type: str
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.dify_client import (
    CONSOLE, DifyError, dify_argument_spec, dify_module_kwargs, run_module,
)

PLUGIN = CONSOLE + "/workspaces/current/plugin"


def find_plugin(client, plugin_id):
    page = 1
    while True:
        data = client.request("GET", PLUGIN + "/list", query={"page": page, "page_size": 256})
        plugins = data.get("plugins") or []
        for item in plugins:
            if item.get("plugin_id") == plugin_id:
                return item
        if len(plugins) < 256 or page * 256 >= int(data.get("total") or 0):
            return None
        page += 1


def wait_task(module, client, task_id):
    deadline = time.time() + module.params["wait_timeout"]
    while True:
        task = client.request("GET", "%s/tasks/%s" % (PLUGIN, task_id)).get("task") or {}
        status = task.get("status")
        if status == "success":
            return task
        if status == "failed":
            msgs = ["%s: %s" % (p.get("plugin_unique_identifier"), p.get("message")) for p in task.get("plugins", [])]
            raise DifyError("plugin install task %s failed: %s" % (task_id, "; ".join(msgs) or "no message"))
        if time.time() >= deadline:
            raise DifyError("plugin install task %s still %s after %ss (wait_timeout)" % (
                task_id, status, module.params["wait_timeout"]))
        client.sleep(module.params["poll_interval"])


def install(module, client):
    p = module.params
    if p["package_path"]:
        with open(p["package_path"], "rb") as fh:
            content = fh.read()
        uploaded = client.upload(PLUGIN + "/upload/pkg", "pkg", os.path.basename(p["package_path"]), content)
        uid = uploaded.get("unique_identifier")
        if not uid or not uid.startswith(p["plugin_id"] + ":"):
            raise DifyError("package %s holds %s, not plugin %s" % (p["package_path"], uid, p["plugin_id"]))
        answer = client.request("POST", PLUGIN + "/install/pkg", body={"plugin_unique_identifiers": [uid]})
    else:
        latest = client.request("POST", PLUGIN + "/list/latest-versions", body={"plugin_ids": [p["plugin_id"]]})
        entry = (latest.get("versions") or {}).get(p["plugin_id"])
        if not entry or not entry.get("unique_identifier"):
            raise DifyError("the marketplace offers no plugin %s (is MARKETPLACE_ENABLED false or the host "
                            "offline? use package_path with a .difypkg)" % p["plugin_id"])
        if p["version"] and entry.get("version") != p["version"]:
            raise DifyError("the marketplace offers %s %s, not %s; use package_path to install a pinned version"
                            % (p["plugin_id"], entry.get("version"), p["version"]))
        uid = entry["unique_identifier"]
        answer = client.request("POST", PLUGIN + "/install/marketplace", body={"plugin_unique_identifiers": [uid]})
    task_id = answer.get("task_id") or ""
    if not answer.get("all_installed") and task_id:
        wait_task(module, client, task_id)
    return uid, task_id


def ensure(module, client):
    p = module.params
    found = find_plugin(client, p["plugin_id"])
    before = {"plugin_id": p["plugin_id"], "installed": bool(found), "version": (found or {}).get("version")}
    result = dict(changed=False, plugin=found or {}, task_id="")
    if p["state"] == "absent":
        if found:
            result["changed"] = True
            result["diff"] = dict(before=before, after={"plugin_id": p["plugin_id"], "installed": False})
            if not module.check_mode:
                client.request("POST", PLUGIN + "/uninstall",
                               body={"plugin_installation_id": found["installation_id"]})
                result["plugin"] = {}
        return result
    if found and (not p["version"] or found.get("version") == p["version"]):
        return result
    result["changed"] = True
    result["diff"] = dict(before=before, after={"plugin_id": p["plugin_id"], "installed": True,
                                                "version": p["version"] or "latest"})
    if module.check_mode:
        return result
    _uid, result["task_id"] = install(module, client)
    result["plugin"] = find_plugin(client, p["plugin_id"]) or {}
    if not result["plugin"]:
        raise DifyError("plugin %s was installed but does not show in the plugin list" % p["plugin_id"])
    return result


def main():
    spec = dify_argument_spec()
    spec.update(
        plugin_id=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        version=dict(type="str"),
        package_path=dict(type="path"),
        wait_timeout=dict(type="int", default=600),
        poll_interval=dict(type="float", default=2.0),
    )
    module = AnsibleModule(argument_spec=spec, **dify_module_kwargs())
    if module.params["plugin_id"].count("/") != 1:
        module.fail_json(msg="plugin_id: expected author/name, got %r" % module.params["plugin_id"])
    pkg = module.params["package_path"]
    if pkg and module.params["state"] == "present" and not os.path.isfile(pkg):
        module.fail_json(msg="package_path: %s is not a file" % pkg)
    run_module(module, lambda client: ensure(module, client))


if __name__ == "__main__":
    main()
