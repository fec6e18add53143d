#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: dify_setup
short_description: Create the first admin account of a Dify instance
description:
  - Runs Dify's one-time setup (C(POST /console/api/setup)) when C(GET /console/api/setup) says C(not_started).
  - When Dify runs with C(INIT_PASSWORD) (C(GET /console/api/init) answers C(not_started)) it first validates
    O(init_password) with C(POST /console/api/init), and fails before any write, saying so, when O(init_password)
    is not given.
  - Reports C(changed=false) when Dify is already set up, and then (by default) proves the credentials by logging in.
  - Inputs are validated before any HTTP call.
extends_documentation_fragment: [dify_gpu.dify.dify, dify_gpu.dify.dify.attributes]
attributes:
  check_mode:
    support: full
    details:
      - O(verify_login) is skipped in check mode.
  diff_mode:
    support: full
options:
  admin_email:
    description: Email of the admin account to create, and to log in with.
    type: str
    required: true
  admin_password:
    description:
      - Password of that account (8 or more characters with a letter and a digit). Sent base64-encoded (Dify >= 1.11.2).
    type: str
    required: true
  admin_name:
    description: Display name of the admin (1 to 30 characters).
    type: str
    default: Admin
  init_password:
    description: Dify's C(INIT_PASSWORD), when the instance was started with one.
    type: str
  language:
    description: Interface language of the admin.
    type: str
    default: en-US
  verify_login:
    description: Log in after (or instead of) the setup to prove O(admin_email)/O(admin_password) work.
    type: bool
    default: true
notes:
  - O(admin_email) and O(admin_password) are required; the password needs 8 or more characters with a letter and a digit.
author: dify-gpu-ansible contributors (@dify-gpu-ansible)
"""

EXAMPLES = r"""
- name: Create Dify's admin
  dify_setup:
    url: http://127.0.0.1:8080
    admin_email: admin@example.com
    admin_name: Admin
    admin_password: "{{ vault_dify_admin_password }}"
  no_log: true
"""

RETURN = r"""
setup_step:
  description: The setup step Dify reported before the module ran.
  returned: always
  type: str
  sample: finished
version:
  description: Dify version read from C(/health) (empty when unknown).
  returned: always
  type: str
workspace_id:
  description: Id of the admin's workspace (the tenant id the admin API key mode sends as C(X-WORKSPACE-ID)).
  returned: after a login (O(verify_login), not in check mode)
  type: str
workspace_name:
  description: Name of that workspace.
  returned: after a login (O(verify_login), not in check mode)
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_client import (
    CONSOLE, EMAIL_RE, PASSWORD_RE, DifyClient, DifyError, dify_argument_spec, version_str,
)
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_resource import DifyResource


INIT_PASSWORD_MISSING = ("this Dify was started with INIT_PASSWORD and has no admin yet: pass that password "
                         "as init_password (role variable dify_bootstrap_init_password)")


def workspace(client):
    """The admin's current workspace (Dify 1.15.0 answers it to POST only; GET is 405)."""
    info = client.request("POST", CONSOLE + "/workspaces/current", safe=True)
    return {"workspace_id": info.get("id") or "", "workspace_name": info.get("name") or ""}


class Setup(DifyResource):
    """Dify's one-time setup as a resource that can only be created: find reads the setup step (and, when
    not finished, whether INIT_PASSWORD must be validated first); create runs the setup. There is nothing
    to compare, update or delete. returns proves the credentials by logging in (verify_login)."""

    def find(self):
        p = self.params
        version = self.client.detect_version()
        self.step = self.client.setup_status()
        self.result.update(setup_step=self.step, version=version_str(version) if version else "")
        if self.step == "finished":
            self.result["msg"] = "Dify is already set up"
            return {"setup": self.step}
        # GET /init answers not_started when Dify runs with INIT_PASSWORD and this session has not
        # validated it yet; then POST /setup would answer a bare 401 "Unauthorized".
        self.init_needed = self.client.request("GET", CONSOLE + "/init", auth=False).get("status") == "not_started"
        if self.init_needed and not p["init_password"]:
            self.module.fail_json(msg=INIT_PASSWORD_MISSING, setup_step=self.step)
        return None

    def wanted(self):
        return {"setup": "finished", "admin_email": self.params["admin_email"], "admin_name": self.params["admin_name"]}

    def absent_view(self):
        return {"setup": self.step}

    def compare(self, have, want):
        return []  # set up is set up: the admin's name and email are not managed afterwards

    def create(self, want):
        p, client = self.params, self.client
        if self.init_needed:
            # keeps the session cookie that marks the init password as validated for /setup
            client.request("POST", CONSOLE + "/init", body={"password": p["init_password"]}, auth=False)
        client.request("POST", CONSOLE + "/setup", auth=False, body={
            "email": p["admin_email"], "name": p["admin_name"], "password": p["admin_password"],
            "language": p["language"]}, landed=lambda: {} if client.setup_status() == "finished" else None)
        self.result["msg"] = "Dify admin account created"
        return {"setup": "finished"}

    def returns(self, resource):
        done = resource
        if done is None or not self.params["verify_login"] or self.check_mode:
            return {}
        self.client.login()
        return workspace(self.client)


def validate(module):
    p = module.params
    if not p["admin_email"] or not EMAIL_RE.match(p["admin_email"]):
        module.fail_json(msg="admin_email: %r is not a valid email address" % p["admin_email"])
    if not p["admin_password"] or not PASSWORD_RE.match(p["admin_password"]):
        module.fail_json(msg="admin_password: Dify needs at least 8 characters with at least one letter and "
                             "one digit")
    if not 1 <= len(p["admin_name"] or "") <= 30:
        module.fail_json(msg="admin_name: must be 1 to 30 characters, got %d" % len(p["admin_name"] or ""))
    if p["init_password"] is not None and len(p["init_password"]) > 30:
        module.fail_json(msg="init_password: Dify accepts at most 30 characters")


def main():
    spec = dify_argument_spec()
    spec["admin_email"]["required"] = True
    spec["admin_password"]["required"] = True
    spec.update(
        admin_name=dict(type="str", default="Admin"),
        init_password=dict(type="str", no_log=True),
        language=dict(type="str", default="en-US"),
        verify_login=dict(type="bool", default=True),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    validate(module)
    try:
        result = Setup(module, DifyClient.from_module(module)).run()
    except DifyError as err:
        path = err.path or ""
        if path.endswith("/init") and err.status == 401:
            # Dify 1.15.0 answers a wrong init password with a bare fastopenapi 401 "Unauthorized"
            err.msg += " -- init_password does not match the INIT_PASSWORD Dify was started with"
        elif err.code in ("not_init_validated", "authentication_error") and path.endswith("/setup"):
            err.msg += " -- " + INIT_PASSWORD_MISSING
        module.fail_json(msg=err.msg, status=err.status, code=err.code)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
