# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options every dify_* module shares: how to reach and authenticate to Dify.

Kept in step with dify_argument_spec() in plugins/module_utils/dify_client.py.
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
    description: Retries on connection errors, HTTP 429 and 5xx (with exponential backoff).
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
