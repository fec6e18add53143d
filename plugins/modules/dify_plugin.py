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
  - When the answer to an install is lost (a 5xx or no answer), the module looks before it installs
    again -- in the plugin list and in the workspace's install tasks (C(GET .../plugin/tasks)), as Dify
    lists a plugin only once its install task ended; an install task of the same package that is not
    failed is waited for instead.
extends_documentation_fragment: [dify_gpu.dify.dify, dify_gpu.dify.dify.attributes]
attributes:
  check_mode:
    support: full
    details:
      - Check mode reads O(package_path) on the managed host but uploads nothing.
  diff_mode:
    support: full
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
      - Wanted version. With O(package_path) it defaults to the version in the package's C(manifest.yaml).
      - An installed plugin of another version is moved to this one. From the marketplace Dify upgrades it in
        place (C(.../upgrade/marketplace)). Dify 1.15.0 has no in-place upgrade for an uploaded package, so
        the module does what Dify's own web UI does -- uninstall, then install the new package; Dify then
        deletes the plugin's provider-level credentials (custom models keep theirs), which M(dify_gpu.dify.dify_model)
        registers again.
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
author: dify-gpu-ansible contributors (@dify-gpu-ansible)
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
method:
  description: How the plugin was put in place, C(install), C(upgrade) (in place) or C(reinstall) (uninstall + install).
  returned: when something was installed
  type: str
version_change:
  description: C(old -> new) when an installed plugin changed version.
  returned: when the version changed
  type: str
"""

import os
import re
import time
import zipfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_client import CONSOLE, DifyError, dify_argument_spec, dify_module_kwargs
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_resource import DifyResource, iter_pages, run_resource

PLUGIN = CONSOLE + "/workspaces/current/plugin"


def find_plugin(client, plugin_id):
    def fetch(page):
        data = client.request("GET", PLUGIN + "/list", query={"page": page, "page_size": 256})
        plugins = data.get("plugins") or []
        return plugins, not (len(plugins) < 256 or page * 256 >= int(data.get("total") or 0))

    return next((item for item in iter_pages(fetch) if item.get("plugin_id") == plugin_id), None)


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


def package_version(path):
    """The version in a .difypkg's manifest.yaml (top-level ``version:``), read without PyYAML."""
    with zipfile.ZipFile(path) as pkg:
        try:
            text = pkg.read("manifest.yaml").decode("utf-8")
        except KeyError:
            raise DifyError("package_path: %s has no manifest.yaml (not a .difypkg)" % path)
    match = re.search(r"^version:\s*['\"]?([^'\"\s#]+)", text, re.M)
    if not match:
        raise DifyError("package_path: the manifest.yaml of %s names no version" % path)
    return match.group(1)


def upload_package(module, client):
    p = module.params
    with open(p["package_path"], "rb") as fh:
        content = fh.read()
    uploaded = client.upload(PLUGIN + "/upload/pkg", "pkg", os.path.basename(p["package_path"]), content)
    uid = uploaded.get("unique_identifier")
    if not uid or not uid.startswith(p["plugin_id"] + ":"):
        raise DifyError("package %s holds %s, not plugin %s" % (p["package_path"], uid, p["plugin_id"]))
    return uid


def marketplace_uid(module, client):
    p = module.params
    latest = client.request("POST", PLUGIN + "/list/latest-versions", body={"plugin_ids": [p["plugin_id"]]},
                            safe=True)
    entry = (latest.get("versions") or {}).get(p["plugin_id"])
    if not entry or not entry.get("unique_identifier"):
        raise DifyError("the marketplace offers no plugin %s (is MARKETPLACE_ENABLED false or the host "
                        "offline? use package_path with a .difypkg)" % p["plugin_id"])
    if p["version"] and entry.get("version") != p["version"]:
        raise DifyError("the marketplace offers %s %s, not %s; use package_path to install a pinned version"
                        % (p["plugin_id"], entry.get("version"), p["version"]))
    return entry["unique_identifier"]


def install_tasks(client):
    """The workspace's plugin install tasks (GET .../plugin/tasks, paged; Dify gives no total)."""
    def fetch(page):
        tasks = client.request("GET", PLUGIN + "/tasks", query={"page": page, "page_size": 256}).get("tasks") or []
        return tasks, len(tasks) >= 256

    return iter_pages(fetch)


def install_landed(client, plugin_id, uid):
    """The ``landed`` check of an install POST whose answer was lost (5xx, no answer).

    Dify lists a plugin only once its install task ended, so the plugin list alone misses an install
    that landed and is still pending or running: the workspace's install tasks are read too. A task
    that is not failed and carries ``uid`` is that install -- its answer (the task id) is what the POST
    would have returned, so the task is waited for instead of posting again. A task that already
    succeeded counts only if the plugin shows in the list read after it (else it is an older install,
    since uninstalled). Nothing found: None, and the POST is sent again."""
    def landed():
        if find_plugin(client, plugin_id):
            return {}
        for task in install_tasks(client):
            if task.get("status") == "failed":
                continue
            if not any(p.get("plugin_unique_identifier") == uid for p in task.get("plugins") or []):
                continue
            if task.get("status") != "success":
                return {"all_installed": False, "task_id": task.get("id") or ""}
            if find_plugin(client, plugin_id):  # ended between the two reads
                return {}
        return None

    return landed


def run_task(module, client, path, body, landed):
    answer = client.request("POST", path, body=body, landed=landed)
    task_id = answer.get("task_id") or ""
    if not answer.get("all_installed") and task_id:
        wait_task(module, client, task_id)
    return task_id


def install(module, client):
    """A fresh install; returns the task id."""
    p = module.params
    if p["package_path"]:
        uid = upload_package(module, client)
        return run_task(module, client, PLUGIN + "/install/pkg", {"plugin_unique_identifiers": [uid]},
                        install_landed(client, p["plugin_id"], uid))
    uid = marketplace_uid(module, client)
    return run_task(module, client, PLUGIN + "/install/marketplace", {"plugin_unique_identifiers": [uid]},
                    install_landed(client, p["plugin_id"], uid))


def change_version(module, client, found):
    """Move an installed plugin to another version; returns (task id, how).

    Dify 1.15.0 upgrades in place only what came from the marketplace (or GitHub): its plugin daemon
    finds the installation to upgrade by its source, and the console API offers no upgrade for an
    uploaded package. A second install of the same plugin id is refused ("plugin already installed").
    So a package is moved the way Dify's own web UI does it: uninstall, then install the new package.
    Dify deletes the plugin's provider-level credentials on uninstall (custom models' credentials stay);
    dify_model re-registers what is declared.
    """
    p = module.params
    if found.get("source") == "marketplace" and not p["package_path"]:
        new_uid = marketplace_uid(module, client)
        body = {"original_plugin_unique_identifier": found["plugin_unique_identifier"],
                "new_plugin_unique_identifier": new_uid}
        return run_task(module, client, PLUGIN + "/upgrade/marketplace", body, None), "upgrade"
    if not p["package_path"]:
        raise DifyError("%s %s came from %s; a version change needs package_path (a .difypkg of the wanted "
                        "version)" % (p["plugin_id"], found.get("version"), found.get("source") or "a package"))
    uid = upload_package(module, client)
    client.request("POST", PLUGIN + "/uninstall", body={"plugin_installation_id": found["installation_id"]})
    task_id = run_task(module, client, PLUGIN + "/install/pkg", {"plugin_unique_identifiers": [uid]},
                       install_landed(client, p["plugin_id"], uid))
    return task_id, "reinstall"


def wanted_version(module):
    p = module.params
    if p["package_path"] and p["state"] == "present":
        have = package_version(p["package_path"])
        if p["version"] and p["version"] != have:
            raise DifyError("package_path: %s holds version %s, not version %s" % (p["package_path"], have,
                                                                                   p["version"]))
        return have
    return p["version"]


class Plugin(DifyResource):
    """find: the plugin in the workspace's plugin list; compare: its version (only when one is wanted);
    create: install (marketplace or package) and wait for the install task; update: move to the wanted
    version (change_version); delete: uninstall. After an install the plugin is listed again and must
    show the wanted version."""

    def find(self):
        self.want_version = wanted_version(self.module)  # reads the package: fails before any call
        found = find_plugin(self.client, self.params["plugin_id"])
        self.result.update(plugin=found or {}, task_id="")
        return found

    def view(self, found):
        return {"plugin_id": self.params["plugin_id"], "installed": True, "version": found.get("version")}

    def absent_view(self):
        return {"plugin_id": self.params["plugin_id"], "installed": False, "version": None}

    def wanted(self):
        return {"plugin_id": self.params["plugin_id"], "installed": True, "version": self.want_version or "latest"}

    def compare(self, have, want):
        # without a wanted version any installed version will do
        return ["version"] if self.want_version and have["version"] != self.want_version else []

    def diff_update(self, have, want, changes):
        self.result["version_change"] = "%s -> %s" % (have["version"], want["version"])
        return have, want

    def diff_delete(self, found):
        return self.view(found), {"plugin_id": self.params["plugin_id"], "installed": False}

    def create(self, want):
        self.result["task_id"], self.result["method"] = install(self.module, self.client), "install"
        return self.installed()

    def update(self, found, want, changes):
        self.result["task_id"], self.result["method"] = change_version(self.module, self.client, found)
        return self.installed()

    def installed(self):
        p = self.params
        plugin = find_plugin(self.client, p["plugin_id"])
        if not plugin:
            raise DifyError("plugin %s was installed but does not show in the plugin list" % p["plugin_id"])
        if self.want_version and plugin.get("version") != self.want_version:
            raise DifyError("plugin %s shows version %s after the install, not %s" % (
                p["plugin_id"], plugin.get("version"), self.want_version))
        return plugin

    def delete(self, found):
        self.client.request("POST", PLUGIN + "/uninstall", body={"plugin_installation_id": found["installation_id"]})

    def returns(self, resource):
        plugin = resource
        return {"plugin": plugin or {}}


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
    run_resource(module, Plugin)


if __name__ == "__main__":
    main()
