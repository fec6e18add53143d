"""Test-only callback (molecule/default, molecule/site-check): records, per ansible-playbook run of the
scenario's converge playbook, whether it ran in check mode, every task that reported a change, and the
end-of-run report's lines, as one JSON line in $SITE_CHANGES_LOG. The scenarios' verify steps compare the
check run of a fresh host with the real run that follows it (the same tasks must change) and look for
secrets in the report.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible import context
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: site_changes
type: aggregate
short_description: record the changed tasks and the report of each converge run (tests only)
description: Appends one JSON line per run of a playbook named converge.yml to the file in SITE_CHANGES_LOG.
requirements: [SITE_CHANGES_LOG in the environment]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "site_changes"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._path = os.environ.get("SITE_CHANGES_LOG", "")
        self._run = None

    def v2_playbook_on_start(self, playbook):
        name = os.path.basename(getattr(playbook, "_file_name", "") or "")
        if not self._path or name != os.environ.get("SITE_CHANGES_PLAYBOOK", "converge.yml"):
            self._run = None
            return
        args = context.CLIARGS
        self._run = {"playbook": name, "check": bool(args.get("check")), "diff": bool(args.get("diff")),
                     "changed": [], "report": [], "failed": []}

    def _task(self, result):
        return result._task.get_name().strip()

    def v2_runner_on_ok(self, result):
        if self._run is None:
            return
        res = result._result
        if res.get("changed"):
            self._run["changed"].append([result._host.get_name(), self._task(result)])
        if self._task(result) == "Report" and isinstance(res.get("msg"), list):
            self._run["report"] = res["msg"]

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if self._run is not None and not ignore_errors:
            self._run["failed"].append([result._host.get_name(), self._task(result)])

    def v2_playbook_on_stats(self, stats):
        if self._run is None:
            return
        with open(self._path, "a") as handle:
            handle.write(json.dumps(self._run) + "\n")
        self._run = None
