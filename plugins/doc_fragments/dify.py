# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options every dify_* module shares: how to reach and authenticate to Dify (DOCUMENTATION, kept in
step with dify_argument_spec() in plugins/module_utils/dify_client.py), and the attributes of the
modules built on the shared resource pattern (ATTRIBUTES, plugins/module_utils/dify_resource.py).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of Dify (its nginx, e.g. V(http://127.0.0.1:8080)); C(/console/api) and C(/v1) are appended.
    type: str
    required: true
    aliases: [dify_url]
  admin_email:
    description: Email of the admin account used to log in to the console API.
    type: str
  admin_password:
    description:
      - Password of that account. Sent base64-encoded (Dify >= 1.11.2).
    type: str
  admin_api_key:
    description:
      - Admin API key (C(ADMIN_API_KEY_ENABLE=true) + C(ADMIN_API_KEY) on the api); replaces the login.
      - Needs O(workspace_id).
    type: str
  workspace_id:
    description: Workspace (tenant) id sent as C(X-WORKSPACE-ID) in admin API key mode.
    type: str
  timeout:
    description: Timeout of every HTTP request, in seconds.
    type: int
    default: 30
  retries:
    description:
      - How often a failed request is repeated, with exponential backoff.
      - Only requests that cannot create anything twice are repeated after a connection error or an HTTP 5xx
        (and on HTTP 429) -- C(GET), C(PUT), C(DELETE), and C(POST)s that create nothing, such as the login.
      - A C(POST) that creates something is never repeated blindly, only when it cannot have reached Dify
        (HTTP 429, a refused connection) or when a lookup of what it would have created finds nothing.
    type: int
    default: 3
  retry_delay:
    description: First backoff delay in seconds; doubles on every retry.
    type: float
    default: 1.0
  validate_certs:
    description: Verify TLS certificates.
    type: bool
    default: true
  dify_version:
    description:
      - The Dify version, when C(GET /health) does not reach the api through O(url).
      - Versions other than 1.x >= 1.9.2 are refused.
    type: str
"""

    # The modules on the shared resource pattern (plugins/module_utils/dify_resource.py); each module
    # states its support under attributes.
    ATTRIBUTES = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and then reads from Dify only, predicting C(changed) without any write.
  diff_mode:
    description:
      - Returns C(diff) (C(before) and C(after) of what changes, or would change in check mode) when run with
        C(--diff).
"""
